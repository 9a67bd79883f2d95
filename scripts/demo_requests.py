"""The demo's clients (standard library only): concurrent chat requests through the generation
API, and streams that a worker's death interrupts.

    python3 scripts/demo_requests.py concurrent HOST:PORT N
    python3 scripts/demo_requests.py kill-during HOST:PORT N MODELHOST_BIN
"""
import http.client
import json
import subprocess
import sys
import threading
import time

QUESTIONS = [
    "What is the capital of France?", "Name a large mammal.", "What colour is the sky?",
    "Say hello in Spanish.", "What is 2 + 2?", "Name a planet.", "What do bees make?",
    "Name a fruit.", "What is ice made of?", "Name a musical instrument.",
    "What is the opposite of hot?", "Name an ocean.", "How many legs has a spider?",
    "What do cows drink?", "Name a colour of the rainbow.", "What is the largest ocean?",
]


def post(addr, body, stream=False):
    host, port = addr.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=300)
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    return conn, conn.getresponse()


def concurrent(addr, n):
    results = [None] * n

    def one(i):
        body = {"model": "gemma", "max_tokens": 16, "seed": i, "temperature": 0.7,
                "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]}
        start = time.monotonic()
        _, r = post(addr, body)
        data = json.load(r)
        results[i] = (r.getheader("x-modelhost-worker"), time.monotonic() - start,
                      data["usage"]["completion_tokens"], data["choices"][0]["message"]["content"])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    print(f"{'#':>3} {'WORKER':<10} {'SECONDS':>7} {'TOKENS':>6}  QUESTION -> ANSWER (the model is a base model: it continues text)")
    for i, (worker, secs, tokens, text) in enumerate(results):
        answer = " ".join(text.split())[:60]
        print(f"{i:>3} {worker:<10} {secs:>7.2f} {tokens:>6}  {QUESTIONS[i % len(QUESTIONS)]} -> {answer!r}")
    spread = {}
    for worker, *_ in results:
        spread[worker] = spread.get(worker, 0) + 1
    tokens = sum(r[2] for r in results)
    print(f"{n} requests in {wall:.2f} s, {tokens / wall:.1f} tokens/s in all; served by {dict(sorted(spread.items()))}")


def kill_during(addr, n, modelhost):
    outcome = [None] * n
    started = threading.Barrier(n + 1)

    def one(i):
        body = {"model": "gemma", "max_tokens": 60, "ignore_eos": True, "stream": True,
                "seed": i, "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]}
        _, r = post(addr, body)
        chunks, first, error = 0, True, None
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                error = event["error"]["message"]
                break
            chunks += 1
            if first and chunks == 2:
                first = False
                started.wait()
        if first:
            started.wait()
        outcome[i] = (chunks, error)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    started.wait()
    rows = json.loads(subprocess.check_output([modelhost, "ps", "--json"]))
    victim = [r for r in rows if r["role"] == "gemma-1"][0]["pid"]
    print(f"every stream has begun; kill -9 worker gemma-1 (pid {victim})")
    subprocess.check_call(["kill", "-9", str(victim)])
    for t in threads:
        t.join()
    for i, (chunks, error) in enumerate(outcome):
        print(f"  stream {i}: {chunks:>3} chunks, " + (f"ended with an error event: {error}" if error else "finished ([DONE])"))
    failed = sum(1 for _, e in outcome if e)
    print(f"{n - failed} streams finished; {failed} (those on the killed worker) ended with an error event; none hung")


if __name__ == "__main__":
    if sys.argv[1] == "concurrent":
        concurrent(sys.argv[2], int(sys.argv[3]))
    else:
        kill_during(sys.argv[2], int(sys.argv[3]), sys.argv[4])
