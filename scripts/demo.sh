#!/usr/bin/env bash
# The main job, end to end on this machine: fetch the reference model, start a host on a private
# socket, bring up four CPU workers that share the host's pages of the model, show the processes
# and their memory, kill one worker to watch it come back, and stop everything.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/fetch-models.sh
cargo build --release --quiet --workspace --bins
bin=$root/target/release/modelhost
model=$root/models/gemma-3-270m-q4_k_m.gguf

run=$(mktemp -d)
export MODELHOST_SOCKET=$run/control.sock
"$bin" serve 2> "$run/host.log" &
host=$!
trap 'kill "$host" 2>/dev/null || true; wait "$host" 2>/dev/null || true; rm -rf "$run"' EXIT
for _ in $(seq 200); do
    [ -S "$MODELHOST_SOCKET" ] && break
    sleep 0.05
done

echo "== host pid $host on $MODELHOST_SOCKET; four CPU workers for the model"
"$bin" up "$model" --workers 4 --name gemma
echo
"$bin" ps
victim=$("$bin" ps --json | python3 -c 'import json,sys; print([r["pid"] for r in json.load(sys.stdin) if r["role"] == "gemma-1"][0])')
echo
echo "== kill -9 worker gemma-1 (pid $victim); the host restarts it from the pages in memory"
kill -9 "$victim"
sleep 1
"$bin" ps
echo
echo "== each worker computes from those shared pages; the engine alone on the same file:"
"$root/target/release/modelhost-worker" --bench "$model" --prompt 32 --decode 16 --sequences 4 --threads "$(nproc)"
echo
kill -TERM "$host"
wait "$host" && echo "== host stopped cleanly (exit 0) and took its workers with it"
