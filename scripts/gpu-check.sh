#!/usr/bin/env bash
# The GPU checks, for a machine with an NVIDIA GPU and driver:
# - the CUDA backend (worker/tests/gpu.rs): uploads intact on both paths (copied back and
#   compared), KV and scratch in device memory, a full device named as out of memory, and the
#   upload bandwidth of both paths against a pinned host-to-device copy in the same run;
# - end to end (tests/tests/gpu.rs): a host spawning CUDA workers on a synthetic 2 GiB model,
#   a restart after kill -9, and a device too small for its plan.
# It runs the executables in gpu-bundle/ when that exists (see scripts/gpu-bundle.sh: for a GPU
# machine without cargo), else builds with cargo. The log goes to $OUT/gpu-check.log when $OUT
# is set, else target/gpu-check.log, and the figures as a page for docs/gpu.md beside it (gpu.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
log=${OUT:-target}/gpu-check.log
mkdir -p "$(dirname "$log")"
exec > >(tee "$log") 2>&1
commit=$(cat gpu-bundle/COMMIT 2>/dev/null || git rev-parse HEAD 2>/dev/null || echo unknown)
device=$(nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current \
    --format=csv,noheader 2>/dev/null || echo "unknown (nvidia-smi failed)")
echo "# scripts/gpu-check.sh, $(date -u +%Y-%m-%dT%H:%MZ), commit $commit"
echo "device: $device"
args=(--ignored --nocapture --test-threads 1)
# Both suites run even when the first fails: each says something the other does not.
failed=0
if [[ -d gpu-bundle/release/deps ]]; then
    gpu-bundle/release/deps/worker-gpu "${args[@]}" || failed=1
    gpu-bundle/release/deps/host-gpu "${args[@]}" || failed=1
else
    cargo build --release --workspace --bins
    cargo test --release -p modelhost-worker --test gpu -- "${args[@]}" || failed=1
    cargo test --release -p modelhost-tests --test gpu -- "${args[@]}" || failed=1
fi
# The figures as a page for docs/gpu.md: the machine, the bandwidth table, the end-to-end lines.
page=$(dirname "$log")/gpu.md
{
    echo "# GPU checks"
    echo
    echo "Produced by \`scripts/gpu-check.sh\` at $(date -u +%Y-%m-%dT%H:%MZ), commit $commit."
    echo "Device (name, memory, driver, PCIe generation and width): $device."
    echo "Result: $([[ $failed == 0 ]] && echo 'every check passed' || echo 'FAILED, see the log')."
    echo
    echo "## Upload bandwidth"
    echo
    grep -E '^1 GiB from a file mapping' "$log" || true
    echo
    grep -E '^\|' "$log" || echo "(no table: the bandwidth test did not finish)"
    echo
    echo "## End to end"
    echo
    grep -oE '(staged|registered): [0-9]+ blocks.*|restart: Ready.*|full device: .*|upload \((pinned staging|registered mapping)\): .*' "$log" |
        sed 's/^/- /' || true
} > "$page"
echo "gpu-check: $([[ $failed == 0 ]] && echo passed || echo FAILED); log in $log, page in $page"
exit $failed
