#!/usr/bin/env bash
# Cross-checks `modelhost inspect` against gguf-py's GGUFReader on the real model and on
# synthetic files covering every tensor type and every metadata value type.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py=$(scripts/pyenv.sh)
scripts/fetch-models.sh >/dev/null
cargo build --quiet --release -p modelhost-host
bin=target/release/modelhost
work=target/crosscheck
rm -rf "$work" && mkdir -p "$work"

# gguf-py 0.19.0 predates type 42 (q2_0), so the fixture it reads holds every other type.
# Our own round-trip and literal-byte tests cover q2_0.
types=$("$py" -c 'from gguf import GGMLQuantizationType as T; print(",".join(t.name.lower() for t in T))')
"$bin" synth --out "$work/every-type.gguf" --size 48MiB --types "$types" --every-value-type >/dev/null
"$bin" synth --out "$work/v-mix.gguf" --size 4MiB --vocab 1000 --types q4_k,bf16,iq4_xs >/dev/null

"$py" scripts/crosscheck.py "$bin" models/gemma-3-270m-q4_k_m.gguf "$work/every-type.gguf" "$work/v-mix.gguf"
