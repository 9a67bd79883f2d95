#!/usr/bin/env bash
# The main job, end to end on this machine: fetch the reference model, start a host on a private
# socket (and the generation API on a loopback port), bring up four CPU workers that share the
# host's pages of the model, show the processes and their memory, answer a prompt, send
# concurrent chat requests and show which worker served each, kill a worker in the middle of
# streams to show the others finish and the worker come back, and stop everything.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/fetch-models.sh
cargo build --release --quiet --workspace --bins
bin=$root/target/release/modelhost
model=$root/models/gemma-3-270m-q4_k_m.gguf

run=$(mktemp -d)
export MODELHOST_SOCKET=$run/control.sock
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
api=127.0.0.1:$port
"$bin" serve --http-listen "$api" 2> "$run/host.log" &
host=$!
trap 'kill "$host" 2>/dev/null || true; wait "$host" 2>/dev/null || true; rm -rf "$run"' EXIT
for _ in $(seq 200); do
    [ -S "$MODELHOST_SOCKET" ] && break
    sleep 0.05
done

echo "== host pid $host on $MODELHOST_SOCKET (generation API on http://$api/v1); four CPU workers"
"$bin" up "$model" --workers 4 --name gemma --ctx 1024
echo
"$bin" ps
echo
echo "== modelhost run gemma \"The capital of France is\" --raw --temperature 0 --max-tokens 16"
"$bin" run gemma "The capital of France is" --raw --temperature 0 --max-tokens 16
echo
echo "== 8 chat requests at once through the OpenAI API; which worker served each"
python3 scripts/demo_requests.py concurrent "$api" 8
echo
echo "== 8 streams at once, and a worker killed in the middle of them"
python3 scripts/demo_requests.py kill-during "$api" 8 "$bin"
sleep 1
echo
echo "== the host restarted the worker from the pages in memory"
"$bin" ps
echo
echo "== each worker computes from those shared pages; the engine alone on the same file:"
"$root/target/release/modelhost-worker" --bench "$model" --prompt 32 --decode 16 --sequences 4 --threads "$(nproc)"
echo
kill -TERM "$host"
wait "$host" && echo "== host stopped cleanly (exit 0) and took its workers with it"
