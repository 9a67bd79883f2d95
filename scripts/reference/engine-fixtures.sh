#!/usr/bin/env bash
# Regenerates the engine's reference fixtures (tests/fixtures/engine/) from llama.cpp, through
# llama-cpp-python 0.3.36: the real gemma model, and a synthetic model of every architecture the
# engine runs in every block format it computes with, written by `modelhost synth` with fixed
# seeds (CI writes the same files again and compares the engine with these fixtures).
#
#   LLAMA_PYTHON=/path/to/venv/bin/python scripts/reference/engine-fixtures.sh
#
# The venv needs llama-cpp-python==0.3.36 (built from PyPI: CMAKE_ARGS="-DLLAMA_CURL=OFF",
# about 5 minutes on 2 cores) and numpy. CI never runs this. On a CPU with AMX, that native
# build crashed in ggml's AMX matrix product (2026-12-06); build it without AMX there, as
# docs/benchmarks.md ("Rerun after decode streaming") gives the flags.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
python=${LLAMA_PYTHON:?set LLAMA_PYTHON to a python with llama-cpp-python 0.3.36}
out=tests/fixtures/engine
mkdir -p "$out"
cargo build --release -p modelhost-host --bin modelhost
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

"$python" scripts/reference/engine_reference.py models/gemma-3-270m-q4_k_m.gguf "$out/gemma.ref"
for arch in gemma3 llama qwen2 qwen3; do
    for type in f32 f16 bf16 q4_0 q4_1 q5_0 q5_1 q8_0 q2_K q3_K q4_K q5_K q6_K; do
        model="$scratch/$arch-$type.gguf"
        # Keep these arguments in step with tests/src/reference.rs (synthetic_model).
        target/release/modelhost synth --arch "$arch" --types "$type" --vocab 1024 --blocks 6 \
            --size 1MiB --seed 1 -o "$model" >/dev/null
        "$python" scripts/reference/engine_reference.py "$model" "$out/$arch-$type.ref" \
            --prompts synthetic 2>/dev/null
        echo "$arch $type"
    done
done
