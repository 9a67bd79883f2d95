"""The engine's speed and memory beside llama.cpp's, in one run; part of scripts/bench.sh.

    python3 scripts/bench_engine.py OUT.md WORKDIR [LLAMA_PYTHON]

Models: the reference gemma, and a 1 GiB synthetic llama of Q4_K blocks (where llama.cpp's CPU
repack matters). For each, `modelhost-worker --bench` with 1 and 2 threads (median of 3 runs),
and with LLAMA_PYTHON, llama-cpp-python 0.3.36 with its repack on and off (median of 3). The
floor for decoding is the bytes of weights read per token over the read bandwidth measured in
the same process (the model's own mapping, summed by as many threads).
"""
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "target/release/modelhost-worker")
MODELHOST = os.path.join(ROOT, "target/release/modelhost")
GEMMA = os.path.join(ROOT, "models/gemma-3-270m-q4_k_m.gguf")

LLAMA = r'''
import json, sys, time, llama_cpp
from llama_cpp import Llama
model, threads, repack = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "on"
if not repack:
    default_params = llama_cpp.llama_model_default_params
    def without_repack():
        p = default_params(); p.use_extra_bufts = False; return p
    llama_cpp.llama_model_default_params = without_repack
    llama_cpp.llama.llama_cpp.llama_model_default_params = without_repack
llm = Llama(model_path=model, n_ctx=1024, n_batch=512, n_threads=threads,
            n_threads_batch=threads, verbose=False)
vocab = llm.n_vocab()
toks = [300 + (i * 7919) % (vocab - 600) for i in range(128)]
llm.eval(toks[:8]); llm.reset()
t = time.perf_counter(); llm.eval(toks); prompt = 128 / (time.perf_counter() - t)
t = time.perf_counter()
for _ in range(32):
    llm.eval([int(llm.scores[llm.n_tokens - 1].argmax())])
decode = 32 / (time.perf_counter() - t)
anon = int([l for l in open("/proc/self/smaps_rollup") if l.startswith("Anonymous:")][0].split()[1]) * 1024
print(json.dumps({"prompt": prompt, "decode": decode, "anon": anon}))
'''


def median_runs(command, runs=3):
    reports = []
    for _ in range(runs):
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        reports.append(json.loads(out.strip().splitlines()[-1]))
    keys = [k for k, v in reports[0].items() if isinstance(v, (int, float))]
    merged = dict(reports[0])
    for k in keys:
        merged[k] = statistics.median(r[k] for r in reports)
    return merged


def ours(model, threads, decode):
    return median_runs([WORKER, "--bench", model, "--threads", str(threads), "--prompt", "128",
                        "--decode", str(decode), "--sequences", "4", "--json"])


def llama(python, model, threads, repack):
    return median_runs([python, "-c", LLAMA, model, str(threads), repack])


def main():
    out, work = sys.argv[1], sys.argv[2]
    llama_python = sys.argv[3] if len(sys.argv) > 3 else ""
    q4k = os.path.join(work, "llama-q4k-1gib.gguf")
    subprocess.run([MODELHOST, "synth", "--arch", "llama", "--types", "q4_K", "--size", "1GiB",
                    "--seed", "7", "-o", q4k], check=True, capture_output=True)
    rows = []
    for name, model, decode in [("gemma", GEMMA, 64), ("Q4_K, 1 GiB", q4k, 16)]:
        for threads in (1, 2):
            print(f"engine: {name}, {threads} thread(s) ...", file=sys.stderr)
            r = ours(model, threads, decode)
            floor = r["mapping_read_gbs"] * 1e9 / r["weight_bytes_per_step"]
            rows.append((name, threads, r, floor))
    lines = [
        "## Inference engine",
        "",
        "`modelhost-worker --bench MODEL --threads N` (median of 3 runs): a 128-token prompt, then",
        "greedy decoding of one sequence, then of four sequences in one step each. The floor is",
        "the weight bytes a decode step reads over the read bandwidth the same process measured",
        "on the model's mapping with as many threads. Anonymous memory is the process's private",
        "pages after the run: the weights are shared file pages and never count there.",
        "",
        "| model | threads | kernels | weights read per token | prompt tok/s | decode tok/s | floor tok/s | decode / floor | 4 sequences tok/s | 4 seq / 1 seq | anonymous memory (KV + scratch) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, threads, r, floor in rows:
        mib = lambda b: f"{b / 2**20:.0f} MiB"
        lines.append(
            f"| {name} | {threads} | {r['kernels']} | {mib(r['weight_bytes_per_step'])} | "
            f"{r['prompt_tok_s']:.0f} | {r['decode_tok_s']:.1f} | {floor:.1f} | "
            f"{r['decode_tok_s'] / floor:.2f}× | {r['batched_tok_s']:.1f} | "
            f"{r['batched_tok_s'] / r['decode_tok_s']:.2f}× | {mib(r['anonymous_bytes'])} "
            f"({mib(r['kv_bytes'] + r['scratch_bytes'])}) |")
    lines.append("")
    if llama_python:
        lines += [
            "llama.cpp in the same run (llama-cpp-python 0.3.36, its own loop: a 128-token prompt,",
            "then 32 greedy tokens; median of 3), with its CPU repack on (its default) and off",
            "(`use_extra_bufts = False`):",
            "",
            "| model | threads | repack | prompt tok/s | decode tok/s | anonymous memory | engine prompt / llama.cpp | engine decode / llama.cpp |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, model, _ in [("gemma", GEMMA, 64), ("Q4_K, 1 GiB", q4k, 16)]:
            for threads in (1, 2):
                ours_row = next(r for n, t, r, _ in rows if n == name and t == threads)
                for repack in ("on", "off"):
                    print(f"llama.cpp: {name}, {threads} thread(s), repack {repack} ...",
                          file=sys.stderr)
                    l = llama(llama_python, model, threads, repack)
                    lines.append(
                        f"| {name} | {threads} | {repack} | {l['prompt']:.0f} | {l['decode']:.1f} | "
                        f"{l['anon'] / 2**20:.0f} MiB | {ours_row['prompt_tok_s'] / l['prompt']:.2f}× | "
                        f"{ours_row['decode_tok_s'] / l['decode']:.2f}× |")
        lines.append("")
    else:
        lines += ["(Set LLAMA_PYTHON to add llama.cpp's figures from the same run.)", ""]
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
