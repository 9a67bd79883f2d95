"""Serving beside llama.cpp, in one run: time to first token and tokens/s at 1, 4 and 16
concurrent streams, and the memory each side holds for them; part of scripts/bench.sh.

    python3 scripts/bench_serving.py OUT.md WORKDIR [LLAMA_PYTHON]

modelhost: a host with 2 CPU workers of 8 slots each (one compute thread per worker, the
machine's two cores), answering streamed chat requests through its OpenAI API over TCP (64
tokens each, end-of-generation ignored, distinct prompts). llama.cpp (LLAMA_PYTHON with
llama-cpp-python 0.3.36): one process per stream, as one runs llama.cpp without a server that
batches, the cores shared out among the processes, each streaming 64 tokens of its own prompt.
Memory is the PSS of every process involved, read while the streams run.
"""
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELHOST = os.path.join(ROOT, "target/release/modelhost")
GEMMA = os.path.join(ROOT, "models/gemma-3-270m-q4_k_m.gguf")
TOKENS = 64
LEVELS = [1, 4, 16]

LLAMA = r'''
import sys, time, llama_cpp
model, threads, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = llama_cpp.Llama(model_path=model, n_ctx=512, n_batch=512, n_threads=threads,
                      n_threads_batch=threads, verbose=False, seed=seed)
prompt = llm.tokenize(f"<start_of_turn>user\nTell me a story about the number {seed}.<end_of_turn>\n<start_of_turn>model\n".encode(), special=True)
print("loaded", flush=True)
sys.stdin.readline()
t0 = time.perf_counter(); first = None; n = 0
llm.eval(prompt)
while n < TOKENS:
    tok = llm.sample(temp=0.8, top_p=0.95)
    if first is None:
        first = time.perf_counter() - t0
    n += 1
    llm.eval([tok])
print(first, time.perf_counter() - t0, n, flush=True)
'''.replace("TOKENS", str(TOKENS))


def pss(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def stream(port, i, out):
    body = {"model": "gemma", "max_tokens": TOKENS, "ignore_eos": True, "stream": True,
            "temperature": 0.8, "top_p": 0.95, "seed": i,
            "messages": [{"role": "user", "content": f"Tell me a story about the number {i}."}]}
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    first, n = None, 0
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            n += 1
            if first is None:
                first = time.perf_counter() - t0
    out[i] = (first, time.perf_counter() - t0, n)


def modelhost_levels(work):
    sock = os.path.join(work, "c.sock")
    port = free_port()
    env = dict(os.environ, MODELHOST_SOCKET=sock)
    host = subprocess.Popen([MODELHOST, "serve", "--http-listen", f"127.0.0.1:{port}"],
                            env=env, stderr=open(os.path.join(work, "host.log"), "w"))
    try:
        while not os.path.exists(sock):
            time.sleep(0.05)
        body = json.dumps({"path": GEMMA, "name": "gemma", "spawn_workers": True,
                           "devices": ["cpu", "cpu"], "worker_options": {"threads": 1},
                           "placement": {"ctx": 512, "parallel": 8, "mode": "replicate"}})
        run(["curl", "-s", "--unix-socket", sock, "-H", "content-type: application/json",
             "-d", body, "http://m/v1/models"])
        while True:
            m = json.loads(run(["curl", "-s", "--unix-socket", sock, "http://m/v1/models/gemma"]))
            if len(m.get("serving", {}).get("workers_computing", [])) == 2:
                break
            time.sleep(0.1)
        pids = [host.pid] + [w["pid"] for w in m["workers"]]
        results = {}
        for level in LEVELS:
            out = [None] * level
            peak = [0]
            threads = [threading.Thread(target=stream, args=(port, i, out)) for i in range(level)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                peak[0] = max(peak[0], sum(pss(p) for p in pids))
                time.sleep(0.2)
            wall = time.perf_counter() - t0
            results[level] = summarize(out, wall, peak[0])
        return results
    finally:
        host.terminate()
        host.wait()


def llama_levels(python):
    results = {}
    for level in LEVELS:
        threads = max(1, 2 // level)
        procs = [subprocess.Popen([python, "-c", LLAMA, GEMMA, str(threads), str(i)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                 for i in range(level)]
        for p in procs:
            assert p.stdout.readline().strip() == "loaded"
        t0 = time.perf_counter()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        peak = 0
        while any(p.poll() is None for p in procs):
            peak = max(peak, sum(pss(p.pid) for p in procs))
            time.sleep(0.2)
        wall = time.perf_counter() - t0
        out = []
        for p in procs:
            first, total, n = p.stdout.read().split()
            out.append((float(first), float(total), int(n)))
        results[level] = summarize(out, wall, peak)
    return results


def summarize(out, wall, memory):
    firsts = [o[0] for o in out]
    tokens = sum(o[2] for o in out)
    return {"ttft_median": statistics.median(firsts), "ttft_max": max(firsts),
            "tok_s": tokens / wall, "per_stream": statistics.median(o[2] / o[1] for o in out),
            "memory": memory, "tokens": tokens}


def main():
    out_path, work = sys.argv[1], sys.argv[2]
    python = sys.argv[3] if len(sys.argv) > 3 else None
    os.makedirs(work, exist_ok=True)
    mh = modelhost_levels(work)
    ll = llama_levels(python) if python else {}
    mib = lambda b: b / (1 << 20)
    lines = [
        "| streams | side | time to first token, median (max) | tokens/s, all streams | tokens/s per stream | memory (PSS) | per stream |",
        "|---|---|---|---|---|---|---|",
    ]
    for level in LEVELS:
        for side, res in (("modelhost", mh), ("llama.cpp, a process per stream", ll)):
            if level not in res:
                continue
            r = res[level]
            lines.append(f"| {level} | {side} | {r['ttft_median'] * 1000:.0f} ms ({r['ttft_max'] * 1000:.0f} ms) | "
                         f"{r['tok_s']:.1f} | {r['per_stream']:.1f} | {mib(r['memory']):.0f} MiB | {mib(r['memory']) / level:.0f} MiB |")
    if ll:
        for level in LEVELS:
            if level in ll and level in mh:
                lines.append(f"\nAt {level} streams llama.cpp holds {mib(ll[level]['memory']):.0f} MiB; "
                             f"modelhost holds {level} streams in {mib(mh[level]['memory']):.0f} MiB "
                             f"({ll[level]['memory'] / mh[level]['memory']:.2f}x less).")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(out_path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
