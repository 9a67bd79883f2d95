#!/usr/bin/env bash
# The GPU checks, for a machine with an NVIDIA GPU and driver: upload correctness on both paths
# (copy back and compare checksums), the KV allocation in device memory, and the upload
# bandwidth against a plain pinned host-to-device copy in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
cargo test --release -p modelhost-worker --test gpu -- --ignored --nocapture --test-threads 1
