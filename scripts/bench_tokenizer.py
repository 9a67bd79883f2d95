"""The tokenizer's throughput beside llama.cpp's, on the same text in one run; part of
scripts/bench.sh.

    python3 scripts/bench_tokenizer.py OUT.md WORKDIR [LLAMA_PYTHON]

The text is 1 MiB of mixed real text: llama.cpp's documentation (English prose and Markdown),
two of its C++ sources (code), and the 2,200 strings of the gemma tokenizer fixture (many
scripts, emoji, white space, numbers). Vocabularies: the reference gemma (SentencePiece, 262,144
tokens) and three of llama.cpp's test vocabularies: llama-bpe (Llama 3's hand-written
pre-tokenizer), qwen2 (Qwen's) and deepseek-llm (regular expressions). Each side tokenizes the
whole text 5 times (median), with BOS and without parsing special tokens, and both must give
the same ids.
"""
import hashlib
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENDOR = os.path.join(ROOT, "target/llama-vendor")
MODELS = [
    ("gemma (SPM)", os.path.join(ROOT, "models/gemma-3-270m-q4_k_m.gguf")),
    ("llama-bpe (BPE)", os.path.join(VENDOR, "models/ggml-vocab-llama-bpe.gguf")),
    ("qwen2 (BPE)", os.path.join(VENDOR, "models/ggml-vocab-qwen2.gguf")),
    ("deepseek-llm (BPE, regex)", os.path.join(VENDOR, "models/ggml-vocab-deepseek-llm.gguf")),
]

LLAMA = r'''
import hashlib, json, statistics, sys, time, llama_cpp
from llama_cpp import Llama
text = open(sys.argv[1], "rb").read()
for model in sys.argv[2:]:
    t = time.perf_counter()
    llm = Llama(model_path=model, vocab_only=True, verbose=False)
    load = (time.perf_counter() - t) * 1e3
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    cap = len(text) + 16
    buf = (llama_cpp.llama_token * cap)()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        n = llama_cpp.llama_tokenize(vocab, text, len(text), buf, cap, True, False)
        times.append(time.perf_counter() - t)
    ids = ",".join(map(str, buf[:n]))
    m = statistics.median(times)
    print(json.dumps({"model": model, "tokens": n, "mb_s": len(text) / m / 1e6, "load_ms": load,
                      "ids_sha256": hashlib.sha256(ids.encode()).hexdigest()}))
'''


def corpus(dest):
    parts = []
    for name in ("docs.md", "llama-vocab.cpp", "llama-model.cpp"):
        with open(os.path.join(VENDOR, "corpus", name), encoding="utf-8") as f:
            parts.append(f.read())
    with open(os.path.join(ROOT, "tests/fixtures/tokenizer/gemma.json"), encoding="utf-8") as f:
        fixture = json.load(f)
    mixed = "\n".join(c["text"] for c in fixture["cases"] if not c["add_special"])
    # Interleave the kinds in 16 KiB pieces, and repeat until 1 MiB.
    pieces = []
    for p in parts + [mixed]:
        pieces.extend(p[i:i + 16384] for i in range(0, len(p), 16384))
    ordered = [pieces[i] for i in sorted(range(len(pieces)), key=lambda i: (i * 7919) % len(pieces))]
    text = ""
    while len(text.encode()) < 1 << 20:
        text += "".join(ordered)
    text = text.encode()[:1 << 20].decode("utf-8", errors="ignore")
    with open(dest, "w", encoding="utf-8") as f:
        f.write(text)
    return len(text.encode())


def main():
    out, work = sys.argv[1], sys.argv[2]
    llama_python = sys.argv[3] if len(sys.argv) > 3 else ""
    subprocess.run([os.path.join(ROOT, "scripts/fetch-llama-vendor.sh")], check=True)
    text = os.path.join(work, "mixed.txt")
    size = corpus(text)
    paths = [p for _, p in MODELS]
    ids_dir = os.path.join(work, "ids")
    os.makedirs(ids_dir, exist_ok=True)
    ours = subprocess.run(
        ["cargo", "bench", "--quiet", "-p", "modelhost-text", "--bench", "tokenize", "--", text, *paths],
        cwd=ROOT, check=True, capture_output=True, text=True, env={**os.environ, "TOKENIZE_IDS_DIR": ids_dir}).stdout
    ours = [json.loads(line) for line in ours.splitlines() if line.startswith("{")]
    for i, o in enumerate(ours):
        with open(os.path.join(ids_dir, f"{i}.txt"), "rb") as f:
            o["ids_sha256"] = hashlib.sha256(f.read()).hexdigest()
    theirs = None
    if llama_python:
        r = subprocess.run([llama_python, "-c", LLAMA, text, *paths], check=True, capture_output=True, text=True)
        theirs = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    lines = [
        "## Tokenizer",
        "",
        f"`python3 scripts/bench_tokenizer.py` (the part of `scripts/bench.sh` that measures the tokenizer): {size:,}",
        "bytes of mixed real text (llama.cpp's docs, two of its C++ sources, and the many-script strings of the",
        "gemma tokenizer fixture), tokenized whole, with BOS and no special-token parsing, median of 5 passes.",
        "llama.cpp is llama-cpp-python 0.3.36's `llama_tokenize` on the same bytes in the same run.",
        "",
    ]
    if theirs:
        lines += ["| vocabulary | tokens | modelhost MB/s | llama.cpp MB/s | ratio | same ids | vocabulary read: modelhost | llama.cpp (vocab_only load) |",
                  "|---|---|---|---|---|---|---|---|"]
    else:
        lines += ["| vocabulary | tokens | modelhost MB/s | vocabulary read |", "|---|---|---|---|"]
    for i, (label, _) in enumerate(MODELS):
        o = ours[i]
        if theirs:
            t = theirs[i]
            same = "yes" if o["ids_sha256"] == t["ids_sha256"] else f"NO ({o['tokens']} vs {t['tokens']} tokens)"
            lines.append(f"| {label} | {o['tokens']:,} | {o['mb_s']:.2f} | {t['mb_s']:.2f} | {o['mb_s'] / t['mb_s']:.1f}× | {same} | {o['load_ms']:.0f} ms | {t['load_ms']:.0f} ms |")
        else:
            lines.append(f"| {label} | {o['tokens']:,} | {o['mb_s']:.2f} | {o['load_ms']:.0f} ms |")
    lines.append("")
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
