#!/usr/bin/env bash
# The main job, end to end on this machine: fetch the reference model, start a host on a private
# socket, load the model twice under two names (the second shares the first one's pages), show
# what the host holds, and stop it with SIGTERM.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/fetch-models.sh
cargo build --release --quiet -p modelhost-host
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

echo "== host pid $host on $MODELHOST_SOCKET"
"$bin" load "$model" --name gemma
"$bin" load "$model" --name gemma-replica
echo
"$bin" ls
echo
"$bin" status
echo
"$bin" ps
echo
kill -TERM "$host"
wait "$host" && echo "== host stopped cleanly (exit 0); its log:" && sed 's/^/   /' "$run/host.log"
