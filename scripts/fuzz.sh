#!/usr/bin/env bash
# Runs one cargo-fuzz target for a while, seeded with real and synthetic files.
#
#   scripts/fuzz.sh gguf_parse 600      # ten minutes
#   (targets: gguf_parse, wire_decode, control_body, tokenize, chat_template, openai_request)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). The toolchain here is stable; cargo-fuzz's
# sanitizer flags are nightly-only, so RUSTC_BOOTSTRAP=1 unlocks them on stable rustc.
set -euo pipefail
target=${1:?usage: scripts/fuzz.sh TARGET SECONDS}
seconds=${2:?usage: scripts/fuzz.sh TARGET SECONDS}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export RUSTC_BOOTSTRAP=1

corpus=fuzz/corpus/$target
mkdir -p "$corpus"
if [ -z "$(ls -A "$corpus")" ]; then
    case $target in
    gguf_parse)
        # Seeds: small, complete synthetic models (a vocabulary of 64 keeps them under 1 MiB)
        # covering every tensor type and value type, split shards, and the real model's header
        # (its first 1 MiB: metadata and tensor descriptors, cut off inside the data).
        cargo build --release --quiet -p modelhost-host
        bin=target/release/modelhost
        seeds=$(mktemp -d)
        synth() { "$bin" synth --vocab 64 --size 1KiB "$@" >/dev/null; }
        synth --out "$seeds/tiny.gguf" --types q4_0
        synth --out "$seeds/values.gguf" --types iq1_s --every-value-type
        synth --out "$seeds/split.gguf" --split 3 --types q2_K
        for group in f32,f16,q4_0,q4_1,q5_0,q5_1,q8_0 q8_1,q2_K,q3_K,q4_K,q5_K,q6_K,q8_K \
            iq2_xxs,iq2_xs,iq3_xxs,iq1_s,iq4_nl,iq3_s,iq2_s iq4_xs,i8,i16,i32,i64,f64,iq1_m \
            bf16,tq1_0,tq2_0,mxfp4,nvfp4,q1_0,q2_0; do
            synth --out "$seeds/types-${group%%,*}.gguf" --types "$group"
        done
        find "$seeds" -name '*.gguf' -size -1024k -exec cp {} "$corpus/" \;
        if [ -f models/gemma-3-270m-q4_k_m.gguf ]; then
            head -c 1048576 models/gemma-3-270m-q4_k_m.gguf > "$corpus/gemma-header.gguf"
        fi
        rm -rf "$seeds"
        ;;
    openai_request)
        # Seeds: a prompt-length byte, then request bodies with every field the API reads.
        printf '\x05%s' '{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_tokens": 16, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1, "presence_penalty": 0.5, "frequency_penalty": -0.5, "logit_bias": {"5": -100, "7": 3.5}, "seed": -3, "stop": ["\n", "User:"], "stop_token_ids": [9], "ignore_eos": true, "min_tokens": 2, "n": 1, "stream": true, "stream_options": {"include_usage": true}, "logprobs": true, "top_logprobs": 3, "response_format": {"type": "text"}}' > "$corpus/chat.json"
        printf '\x40%s' '{"model": "m", "prompt": [1, 2, 3], "max_completion_tokens": 1, "logprobs": 5, "echo": false, "best_of": 1}' > "$corpus/completion.json"
        printf '\x00%s' '{"model": "m", "messages": []}' > "$corpus/empty.json"
        ;;
    control_body)
        printf '%s' '{"path": "/srv/models/m.gguf", "name": "m", "prefault": true, "mlock": "try", "copy": false, "devices": ["cuda:0=24GiB", "cpu"], "placement": {"ctx": 8192, "parallel": 2, "kv_type": "q8_0", "gpu_layers": 10, "tensor_split": [3, 1], "mode": "split", "swa_full": true}, "spawn_workers": true, "worker_options": {"mlock": true, "verify": false, "registered_upload": true}}' > "$corpus/full.json"
        printf '%s' '{"path": "/m.gguf"}' > "$corpus/minimal.json"
        ;;
    wire_decode)
        # Seeds: a preamble followed by real frames of each message kind.
        python3 - "$corpus" <<'PY'
import struct, sys
pre = b"MHWK\x01\x00\x00\x00"
frames = {
    "heartbeat": b"\x06\x2a",
    "layer-ready": b"\x03\x11",
    "failed": b"\x05\x05oops!",
    "shutdown": b"\x07",
    "detach": b"\x08",
}
for name, payload in frames.items():
    with open(f"{sys.argv[1]}/{name}", "wb") as f:
        f.write(pre + struct.pack("<I", len(payload)) + payload)
PY
        ;;
    tokenize)
        # Seeds: one text per vocabulary (the first byte picks it), from llama.cpp's test inputs.
        scripts/fetch-llama-vendor.sh
        i=0
        for inp in target/llama-vendor/models/ggml-vocab-{llama-spm,gpt-2,llama-bpe,qwen2,deepseek-llm,gemma-4}.gguf.inp; do
            { printf "\\x$(printf %02x $i)"; head -c 4096 "$inp"; } > "$corpus/vocab-$i"
            i=$((i + 1))
        done
        ;;
    chat_template)
        # Seeds: the real templates llama.cpp keeps.
        scripts/fetch-llama-vendor.sh
        cp target/llama-vendor/templates/*.jinja "$corpus/"
        ;;
    esac
fi

cargo fuzz run "$target" "$corpus" -- -max_total_time="$seconds" -max_len=1048576 -print_final_stats=1
