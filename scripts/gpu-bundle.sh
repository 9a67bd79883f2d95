#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh needs into gpu-bundle/, for a GPU machine that has no Rust
# toolchain and no network (such as the device machines lent to this project's sessions): the
# two binaries and the two GPU test executables, stripped, about 20 MB. Build it where cargo
# works, carry the folder across (it is git-ignored), and run scripts/gpu-check.sh there.
# The binaries need a glibc at least as new as this machine's (`ldd --version`).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --workspace --bins
# The test executables, by package and test target, from cargo's own report of what it built.
executable() {
    cargo test --release -p "$1" --test "$2" --no-run --message-format=json 2>/dev/null |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])'
}
worker_gpu=$(executable modelhost-worker gpu)
host_gpu=$(executable modelhost-tests gpu)
[[ -x $worker_gpu && -x $host_gpu ]] || { echo "gpu-bundle: test executables not found" >&2; exit 1; }
rm -rf gpu-bundle
# The layout of target/<profile>: the tests find the binaries one folder above their own.
mkdir -p gpu-bundle/release/deps
cp target/release/modelhost target/release/modelhost-worker gpu-bundle/release/
cp "$worker_gpu" gpu-bundle/release/deps/worker-gpu
cp "$host_gpu" gpu-bundle/release/deps/host-gpu
strip gpu-bundle/release/modelhost gpu-bundle/release/modelhost-worker gpu-bundle/release/deps/*
git rev-parse HEAD > gpu-bundle/COMMIT
du -sh gpu-bundle >&2
echo "gpu-bundle: ready; on the GPU machine run scripts/gpu-check.sh (it uses gpu-bundle/ when present)" >&2
