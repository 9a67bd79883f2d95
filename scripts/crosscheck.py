#!/usr/bin/env python3
"""Cross-check `modelhost inspect` against the reference reader, gguf-py's GGUFReader.

    python scripts/crosscheck.py target/release/modelhost FILE.gguf [FILE.gguf ...]

For every file, every metadata key (in order), its value type and value, and every tensor's name,
type, shape, absolute data offset and byte size must be identical, as must the alignment and the
start of the data section. Exits 1 on any difference.

Known difference, checked rather than ignored: gguf-py 0.19.0's type table gives Q8_1 a 40-byte
block where ggml's block_q8_1 is 36 bytes, so for Q8_1 tensors the byte size must equal
n_elements / 32 * 36 on our side and n_elements / 32 * 40 on gguf-py's. gguf-py 0.19.0 does not
know type 42 (Q2_0) at all; files holding it cannot be read by it and are refused here.
"""

import json
import math
import subprocess
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType

Q8_1 = 9


def ours(binary, path):
    out = subprocess.run(
        [binary, "inspect", path, "--json", "--tensors", "--metadata"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def flatten(value, type_name):
    """Our JSON value -> (type chain, flat list of leaves), matching gguf-py's flattening."""
    if type_name != "array":
        return [type_name], [value]
    elem_type, items = value["elem_type"], value["items"]
    chain, leaves = ["array", elem_type], []
    for item in items:
        sub_chain, sub_leaves = flatten(item, elem_type)
        chain = ["array"] + sub_chain if elem_type == "array" else chain
        leaves.extend(sub_leaves)
    return chain, leaves


GGUF_TYPE_NAMES = {
    GGUFValueType.UINT8: "uint8", GGUFValueType.INT8: "int8", GGUFValueType.UINT16: "uint16",
    GGUFValueType.INT16: "int16", GGUFValueType.UINT32: "uint32", GGUFValueType.INT32: "int32",
    GGUFValueType.FLOAT32: "float32", GGUFValueType.BOOL: "bool", GGUFValueType.STRING: "string",
    GGUFValueType.ARRAY: "array", GGUFValueType.UINT64: "uint64", GGUFValueType.INT64: "int64",
    GGUFValueType.FLOAT64: "float64",
}


def same_leaf(a, b, type_name):
    if type_name in ("float32", "float64"):
        if isinstance(a, str):  # "nan", "inf", "-inf"
            a = float(a)
        if type_name == "float32":
            a, b = np.float32(a), np.float32(b)
        return (math.isnan(a) and math.isnan(b)) or a == b
    return a == b and type(a) is type(b) or (type_name == "bool" and bool(a) == bool(b))


def theirs_leaves(field):
    """gguf-py's leaves for a field; for nested arrays it flattens to the innermost values."""
    chain = [GGUF_TYPE_NAMES[t] for t in field.types]
    if chain[0] == "array" and chain[-1] == "string" and len(chain) > 2:
        # contents() cannot decode strings inside nested arrays; read the parts directly.
        leaves = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    else:
        leaves = field.contents()
        if chain[0] != "array":
            leaves = [leaves]
    return chain, leaves


def check(binary, path):
    problems = []
    mine = ours(binary, path)
    reader = GGUFReader(path)
    (f,) = mine["files"]
    if f["alignment"] != reader.alignment:
        problems.append(f"alignment {f['alignment']} != {reader.alignment}")
    if f["data_offset"] != reader.data_offset:
        problems.append(f"data offset {f['data_offset']} != {reader.data_offset}")

    their_fields = [fl for name, fl in reader.fields.items() if not name.startswith("GGUF.")]
    my_meta = mine["metadata"]
    if [m["key"] for m in my_meta] != [fl.name for fl in their_fields]:
        problems.append("metadata keys differ in name or order")
    leaves_compared = 0
    for m, fl in zip(my_meta, their_fields):
        my_chain, my_leaves = flatten(m["value"], m["type"])
        their_chain, their_leaves = theirs_leaves(fl)
        if my_chain[: len(their_chain)] != their_chain and my_chain != their_chain:
            problems.append(f"{m['key']}: type {my_chain} != {their_chain}")
            continue
        if len(my_leaves) != len(their_leaves):
            problems.append(f"{m['key']}: {len(my_leaves)} values != {len(their_leaves)}")
            continue
        leaf_type = their_chain[-1]
        for i, (a, b) in enumerate(zip(my_leaves, their_leaves)):
            if not same_leaf(a, b, leaf_type):
                problems.append(f"{m['key']}[{i}]: {a!r} != {b!r}")
                break
        leaves_compared += len(my_leaves)

    my_tensors = mine["tensors"]
    if len(my_tensors) != len(reader.tensors):
        problems.append(f"{len(my_tensors)} tensors != {len(reader.tensors)}")
    types_seen = set()
    for t, r in zip(my_tensors, reader.tensors):
        types_seen.add(t["type"])
        mismatch = []
        if t["name"] != r.name:
            mismatch.append(f"name {r.name!r}")
        if t["type_id"] != int(r.tensor_type):
            mismatch.append(f"type {int(r.tensor_type)}")
        if t["dims"] != [int(d) for d in r.shape]:
            mismatch.append(f"shape {list(r.shape)}")
        if t["file_offset"] != r.data_offset:
            mismatch.append(f"offset {r.data_offset}")
        if t["type_id"] == Q8_1:
            blocks = math.prod(t["dims"]) // 32
            if (t["bytes"], int(r.n_bytes)) != (blocks * 36, blocks * 40):
                mismatch.append(f"q8_1 sizes {t['bytes']}/{r.n_bytes}")
        elif t["bytes"] != int(r.n_bytes):
            mismatch.append(f"bytes {r.n_bytes}")
        if mismatch:
            problems.append(f"tensor {t['name']}: " + ", ".join(mismatch))
    summary = (
        f"{path}: {len(my_meta)} keys ({leaves_compared} values), {len(my_tensors)} tensors "
        f"of {len(types_seen)} types"
    )
    return summary, problems


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    binary, paths = sys.argv[1], sys.argv[2:]
    failed = False
    for path in paths:
        summary, problems = check(binary, path)
        print(("FAIL " if problems else "ok   ") + summary)
        for p in problems[:20]:
            print("     " + p)
        failed |= bool(problems)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
