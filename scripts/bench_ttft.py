"""Time to first token from every starting point, beside llama.cpp in the same run; part of
scripts/bench.sh.

    python3 scripts/bench_ttft.py OUT.md WORKDIR [LLAMA_PYTHON]

A 32-token prompt on gemma-3-270m (greedy, one token), one worker or process using both cores.
Each starting point is measured RUNS times, each time with a prompt no earlier request had (so
no cached prefix helps); the table gives the median and the range.

modelhost starting points:
- cold: the file evicted from the page cache (posix_fadvise DONTNEED), no host running.
  `modelhost up`, then the request; and, as a client that asks at once, `modelhost serve`, the
  load, and the request sent straight after the load is accepted (it waits in the queue, and
  the worker computes while the host still reads the pages); the same with the workers started
  only after the load (`serve_while_loading: false`), to show what serving during the load buys.
- warm: the same with the file in the page cache.
- one more worker: a host with the model loaded (pages in RAM) and its worker count raised by
  one (`POST /v1/models/gemma/scale`, from 0), the request sent when the scale is answered.
- restart: `kill -9` of the worker, the request sent at once; the supervisor restarts it.

llama.cpp (llama-cpp-python 0.3.36): a fresh process that loads the model and computes the first
token, from process start, cold and warm; one more process beside one already running; and
after `kill -9` of a running one. Floors: `cat FILE > /dev/null` on the evicted file, and the
first token's own compute on a warm worker.
"""
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELHOST = os.path.join(ROOT, "target/release/modelhost")
GEMMA = os.path.join(ROOT, "models/gemma-3-270m-q4_k_m.gguf")
RUNS = int(os.environ.get("TTFT_RUNS", "3"))
CTX = 4096

# A sentence that gemma's vocabulary cuts into 32 tokens with BOS; {n} changes its start.
PROMPT = ("Note {n}: the quick brown fox jumps over the lazy dog while seven wizards "
          "quietly judge the boxing match and the crowd waits")

LLAMA = r'''
import sys, time
t_start = float(sys.argv[3])
import llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=CTX, n_batch=512, n_threads=2,
                      n_threads_batch=2, verbose=False)
tokens = llm.tokenize(sys.argv[2].encode(), add_bos=True)
loaded = time.monotonic()
llm.eval(tokens)
first = llm.sample(temp=0.0)
done = time.monotonic()
print(done, done - loaded, len(tokens), first, flush=True)
if len(sys.argv) > 4:
    sys.stdin.readline()
'''.replace("CTX", str(CTX))


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=300):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def api(sock, method, path, body=None):
    conn = UnixConnection(sock)
    conn.request(method, path, json.dumps(body) if body is not None else None,
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    try:
        return r.status, json.loads(data) if data else None
    except ValueError:
        return r.status, data.decode(errors="replace")


def first_token(sock, n):
    """One greedy token of a fresh prompt; returns (monotonic time it arrived, prompt tokens)."""
    status, body = api(sock, "POST", "/v1/completions",
                       {"model": "gemma", "prompt": PROMPT.format(n=n), "max_tokens": 1,
                        "temperature": 0})
    done = time.monotonic()
    if status != 200:
        raise RuntimeError(f"request failed: {status} {body}")
    return done, body["usage"]["prompt_tokens"]


def evict(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm(path):
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def wait_for(predicate, what, limit=60):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.002)
    raise RuntimeError(f"timed out waiting for {what}")


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def model(sock):
    status, body = api(sock, "GET", "/v1/models/gemma")
    return body if status == 200 else None


class Host:
    """A modelhost daemon on a socket of its own."""

    def __init__(self, work):
        self.sock = os.path.join(work, "ttft.sock")
        self.log = open(os.path.join(work, "ttft-host.log"), "a")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([MODELHOST, "serve", "--socket", self.sock],
                                     stdout=self.log, stderr=self.log)
        wait_for(lambda: self.answers(), "the host's socket")

    def answers(self):
        try:
            return api(self.sock, "GET", "/healthz")[0] == 200
        except OSError:
            return False

    def stop(self):
        """Stops whichever host answers on the socket (one `up` started, or ours)."""
        if self.answers():
            _, status = api(self.sock, "GET", "/v1/status")
            pid = status["pid"]
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not alive(pid), "the host to exit")
        if self.proc:
            self.proc.wait()
            self.proc = None

    def load(self, serve_while_loading=True, workers=1):
        status, body = api(self.sock, "POST", "/v1/models", {
            "path": GEMMA, "name": "gemma", "spawn_workers": True, "devices": ["cpu"] * workers,
            "placement": {"ctx": CTX, "mode": "replicate"},
            "serve_while_loading": serve_while_loading})
        if status != 201:
            raise RuntimeError(f"load failed: {status} {body}")


class Counter:
    def __init__(self):
        self.n = 0

    def next(self):
        self.n += 1
        return self.n


def modelhost_up(host, n, cold):
    """`modelhost up` as a user runs it, then the request."""
    host.stop()
    warm(GEMMA)
    if cold:
        evict(GEMMA)
    t0 = time.monotonic()
    up = subprocess.run([MODELHOST, "up", GEMMA, "--name", "gemma", "--socket", host.sock,
                         "--ctx", str(CTX)], capture_output=True, text=True)
    if up.returncode != 0:
        raise RuntimeError(f"modelhost up failed: {up.stderr.strip()}")
    done, tokens = first_token(host.sock, n)
    return done - t0, tokens


def modelhost_ask_at_once(host, n, cold, serve_while_loading):
    """A host started, the load accepted, the request sent at once; also whether it was
    answered before the load was complete."""
    host.stop()
    warm(GEMMA)
    if cold:
        evict(GEMMA)
    t0 = time.monotonic()
    host.start()
    asked = time.monotonic()
    host.load(serve_while_loading)
    done, _ = first_token(host.sock, n)
    loaded = wait_for(lambda: (m := model(host.sock)) and m["state"] == "ready" and m, "ready")
    # load_ms runs from the host's receipt of the load to the pages all read (and locked).
    load_end = loaded["load_ms"] / 1000
    return done - t0, (done - asked) < load_end, (done - asked, load_end)


def modelhost_more_and_restart(host, counter):
    """One more worker (scale 0 → 1) and kill -9 of the worker, on a host with the model."""
    host.stop()
    warm(GEMMA)
    host.start()
    host.load()
    wait_for(lambda: (m := model(host.sock)) and len(m["serving"]["workers_computing"]) == 1,
             "a computing worker")
    first_token(host.sock, counter.next())  # the engine warmed once, as on any running host
    compute, scale_up, restart = [], [], []
    for _ in range(RUNS):
        t0 = time.monotonic()
        done, _ = first_token(host.sock, counter.next())
        compute.append(done - t0)
    for _ in range(RUNS):
        api(host.sock, "POST", "/v1/models/gemma/scale", {"workers": 0})
        wait_for(lambda: model(host.sock)["workers"] == [], "no workers")
        t0 = time.monotonic()
        status, body = api(host.sock, "POST", "/v1/models/gemma/scale", {"workers": 1})
        assert status == 200, body
        done, _ = first_token(host.sock, counter.next())
        scale_up.append(done - t0)
    for _ in range(RUNS):
        pid = wait_for(lambda: (m := model(host.sock)) and len(m["serving"]["workers_computing"]) == 1
                       and m["workers"][0]["pid"], "a computing worker")
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        done, _ = first_token(host.sock, counter.next())
        restart.append(done - t0)
    host.stop()
    return compute, scale_up, restart


def llama_fresh(python, n, cold):
    warm(GEMMA)
    if cold:
        evict(GEMMA)
    t0 = time.monotonic()
    out = subprocess.run([python, "-c", LLAMA, GEMMA, PROMPT.format(n=n), str(t0)],
                         check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]) - t0, float(out[1]), int(out[2])


def llama_more_and_restart(python, counter):
    warm(GEMMA)
    more, restart = [], []
    for _ in range(RUNS):
        # One process running (loaded, idle), then one more beside it.
        resident = subprocess.Popen([python, "-c", LLAMA, GEMMA, PROMPT.format(n=counter.next()),
                                     "0", "hold"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True)
        resident.stdout.readline()
        t0 = time.monotonic()
        out = subprocess.run([python, "-c", LLAMA, GEMMA, PROMPT.format(n=counter.next()), str(t0)],
                             check=True, capture_output=True, text=True).stdout.split()
        more.append(float(out[0]) - t0)
        # kill -9 of the running one, and a new process in its place.
        t0 = time.monotonic()
        resident.kill()
        resident.wait()
        out = subprocess.run([python, "-c", LLAMA, GEMMA, PROMPT.format(n=counter.next()), str(t0)],
                             check=True, capture_output=True, text=True).stdout.split()
        restart.append(float(out[0]) - t0)
    return more, restart


def cold_cat():
    warm(GEMMA)
    evict(GEMMA)
    t0 = time.monotonic()
    subprocess.run(f"cat '{GEMMA}' > /dev/null", shell=True, check=True)
    return time.monotonic() - t0


def fmt(values):
    med = statistics.median(values)
    return f"{med * 1000:,.0f} ms ({min(values) * 1000:,.0f}–{max(values) * 1000:,.0f})"


def main():
    out_path, work = sys.argv[1], sys.argv[2]
    python = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] else None
    os.makedirs(work, exist_ok=True)
    counter = Counter()
    host = Host(work)
    try:
        cat = [cold_cat() for _ in range(RUNS)]
        up_cold, up_warm, ask_cold, ask_warm, late_cold = [], [], [], [], []
        during_load = []
        prompt_tokens = None
        for _ in range(RUNS):
            t, prompt_tokens = modelhost_up(host, counter.next(), cold=True)
            up_cold.append(t)
            up_warm.append(modelhost_up(host, counter.next(), cold=False)[0])
            t, before_ready, (answered, load_end) = modelhost_ask_at_once(
                host, counter.next(), True, True)
            ask_cold.append(t)
            during_load.append((answered, load_end, before_ready))
            ask_warm.append(modelhost_ask_at_once(host, counter.next(), False, True)[0])
            late_cold.append(modelhost_ask_at_once(host, counter.next(), True, False)[0])
        compute, scale_up, restart = modelhost_more_and_restart(host, counter)
    finally:
        host.stop()
    ll = {}
    if python:
        fresh_cold = [llama_fresh(python, counter.next(), True) for _ in range(RUNS)]
        fresh_warm = [llama_fresh(python, counter.next(), False) for _ in range(RUNS)]
        more, killed = llama_more_and_restart(python, counter)
        ll = {"cold": [f[0] for f in fresh_cold], "warm": [f[0] for f in fresh_warm],
              "more": more, "restart": killed,
              "compute": [f[1] for f in fresh_warm], "tokens": fresh_warm[0][2]}

    floor = statistics.median(cat) + statistics.median(compute)
    med = statistics.median
    ratio = lambda a, b: f"{med(a) / med(b):.2f}×"
    rows = [
        ("cold: file evicted, no host", "`up`, then the request", up_cold,
         "process start → first token", ll.get("cold")),
        ("cold, asked at once", "host start, load, request sent at once (served while loading)",
         ask_cold, None, None),
        ("cold, asked at once, workers after the load", "the same with `serve_while_loading: false`",
         late_cold, None, None),
        ("warm file, nothing running", "`up`, then the request", up_warm,
         "process start → first token", ll.get("warm")),
        ("warm, asked at once", "host start, load, request sent at once", ask_warm, None, None),
        ("host running, model loaded: one more worker", "`scale` (0 → 1) → its first token",
         scale_up, "one more process beside a running one → its first token", ll.get("more")),
        ("a worker killed with `kill -9`", "kill → the restarted worker's first token", restart,
         "kill → a new process's first token", ll.get("restart")),
    ]
    lines = [
        f"Prompt: {prompt_tokens} tokens (llama.cpp: {ll.get('tokens', '-')}), one greedy token; "
        f"{RUNS} runs each, median (range).",
        "",
        "| starting point | modelhost | | llama.cpp | | modelhost / llama.cpp |",
        "|---|---|---|---|---|---|",
    ]
    for label, how, mh, how_ll, lv in rows:
        lines.append(f"| {label} | {how} | {fmt(mh)} | {how_ll or ''} | {fmt(lv) if lv else ''} | "
                     f"{ratio(mh, lv) if lv else ''} |")
    lines += [
        "",
        "| floor | time |",
        "|---|---|",
        f"| `cat FILE > /dev/null`, file evicted | {fmt(cat)} |",
        f"| first token's compute, warm worker (request round trip) | {fmt(compute)} |",
    ]
    if ll:
        lines.append(f"| first token's compute in llama.cpp (eval + sample, in process) | {fmt(ll['compute'])} |")
    lines += [
        "",
        "Against the goals (issue 16):",
        f"- cold, `up` then the request: {med(up_cold) / floor:.2f}× (cold `cat` + first-token "
        f"compute = {floor * 1000:,.0f} ms); asked at once: {med(ask_cold) / floor:.2f}× (goal: at most 1.1×).",
    ]
    if ll:
        lines.append(f"- one more worker: {med(scale_up) / med(ll['more']) * 100:.1f}% of llama.cpp's "
                     f"one more process; a restarted worker: {med(restart) / med(ll['restart']) * 100:.1f}% "
                     f"of a new llama.cpp process after kill -9 (goal: at most 10%).")
    served = sum(1 for _, _, before in during_load if before)
    lines.append(
        f"- a request sent at once during a cold load: answered before the load completed in "
        f"{served} of {len(during_load)} runs (from the load's start: answer at "
        + ", ".join(f"{t * 1000:,.0f} ms, load complete at {end * 1000:,.0f} ms" for t, end, _ in during_load)
        + f"; first-token compute {med(compute) * 1000:,.0f} ms).")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(out_path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
