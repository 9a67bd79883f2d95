"""Random blocks of every block format the engine computes with, dequantized by gguf-py's
`gguf.quants.dequantize` (the reference reader, 0.19.0), for worker/engine/tests/kernels.rs.

    python dequant_fixture.py OUT.bin

The blocks are random bytes whose f16 scale fields hold finite values of either sign. Format:
b"MHDQ" | u32 types | per type: u32 ggml type id, u32 n_bytes, bytes, u32 n_values, f32 values.
"""
import struct
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

# ggml type, block bytes, offsets of its f16 fields
FORMATS = [
    (T.F32, 4, []), (T.F16, 2, []), (T.BF16, 2, []),
    (T.Q4_0, 18, [0]), (T.Q4_1, 20, [0, 2]), (T.Q5_0, 22, [0]), (T.Q5_1, 24, [0, 2]),
    (T.Q8_0, 34, [0]), (T.Q2_K, 84, [80, 82]), (T.Q3_K, 110, [108]), (T.Q4_K, 144, [0, 2]),
    (T.Q5_K, 176, [0, 2]), (T.Q6_K, 210, [208]),
]
rng = np.random.default_rng(20261130)
out = bytearray(b"MHDQ" + struct.pack("<I", len(FORMATS)))
for ty, size, halves in FORMATS:
    n_values = 2048
    if ty == T.F32:
        raw = rng.normal(0, 1, n_values).astype("<f4").tobytes()
    elif ty == T.F16:
        raw = rng.normal(0, 1, n_values).astype("<f2").tobytes()
    elif ty == T.BF16:
        raw = (rng.normal(0, 1, n_values).astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
    else:
        block_values = 32 if size in (18, 20, 22, 24, 34) else 256
        blocks = n_values // block_values
        data = bytearray(rng.integers(0, 256, blocks * size, dtype=np.uint8).tobytes())
        for b in range(blocks):
            for at in halves:
                value = np.float16(rng.uniform(-0.05, 0.05))
                data[b * size + at:b * size + at + 2] = value.tobytes()
        raw = bytes(data)
    values = dequantize(np.frombuffer(raw, dtype=np.uint8), ty).astype("<f4").reshape(-1)
    out += struct.pack("<II", int(ty), len(raw)) + raw
    out += struct.pack("<I", len(values)) + values.tobytes()
with open(sys.argv[1], "wb") as f:
    f.write(out)
print(f"wrote {sys.argv[1]}: {len(out)} bytes", file=sys.stderr)
