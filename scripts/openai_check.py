"""The official `openai` Python client, unmodified, against a running modelhost: the
acceptance test of the generation API. tests/tests/openai_client.rs runs it against a real host;
run it by hand against any host with the TCP listener on:

    target/pyenv/bin/python scripts/openai_check.py --base-url http://127.0.0.1:8080/v1 \
        --api-key KEY --model gemma

It prints one line per check and exits 1 if any failed.
"""
import argparse
import json
import sys
import time
import urllib.request

import openai

failures = []


def check(name, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
    if not ok:
        failures.append(name)


def running(base_url, key, model):
    req = urllib.request.Request(f"{base_url}/models/{model}",
                                 headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)["serving"]["running"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--api-key", required=True)
    p.add_argument("--model", default="gemma")
    a = p.parse_args()
    client = openai.OpenAI(base_url=a.base_url, api_key=a.api_key, max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]

    ids = [m.id for m in client.models.list()]
    check("models.list", a.model in ids, str(ids))

    r = client.chat.completions.create(model=a.model, messages=messages, temperature=0,
                                       max_tokens=12, seed=7)
    whole = r.choices[0].message.content
    check("chat, whole", bool(whole) and r.choices[0].finish_reason in ("stop", "length")
          and r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0,
          f"{whole!r} {r.usage}")

    stream = client.chat.completions.create(model=a.model, messages=messages, temperature=0,
                                            max_tokens=12, seed=7, stream=True,
                                            stream_options={"include_usage": True})
    parts, finish, usage, roles = [], None, None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            if c.delta.content:
                parts.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    check("chat, streamed, same text as whole", "".join(parts) == whole,
          f"{''.join(parts)!r}")
    check("chat, streamed, role first, finish and usage at the end",
          roles == ["assistant"] and finish is not None and usage is not None
          and usage.completion_tokens == r.usage.completion_tokens, f"{roles} {finish} {usage}")

    c = client.completions.create(model=a.model, prompt="The capital of France is",
                                  temperature=0, max_tokens=8, logprobs=2)
    check("completions, with logprobs", bool(c.choices[0].text)
          and len(c.choices[0].logprobs.tokens) == c.usage.completion_tokens,
          repr(c.choices[0].text))

    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
        check("an unknown model is NotFoundError", False, "no error")
    except openai.NotFoundError as e:
        check("an unknown model is NotFoundError", e.status_code == 404, str(e.body))
    try:
        client.chat.completions.create(model=a.model, messages=messages, max_tokens=10**6)
        check("a context overflow is BadRequestError naming max_tokens", False, "no error")
    except openai.BadRequestError as e:
        check("a context overflow is BadRequestError naming max_tokens",
              e.code == "context_length_exceeded" and e.param == "max_tokens", str(e.body))
    try:
        openai.OpenAI(base_url=a.base_url, api_key="wrong", max_retries=0).models.list()
        check("a wrong key is AuthenticationError", False, "no error")
    except openai.AuthenticationError as e:
        check("a wrong key is AuthenticationError", e.status_code == 401)

    # Cancellation: closing the stream frees the worker's slot within a step or two.
    stream = client.chat.completions.create(model=a.model, messages=messages, max_tokens=500,
                                            stream=True, extra_body={"ignore_eos": True})
    got = 0
    for chunk in stream:
        got += 1
        if got == 4:
            break
    busy = running(a.base_url, a.api_key, a.model)
    stream.close()
    closed = time.monotonic()
    while running(a.base_url, a.api_key, a.model) > 0 and time.monotonic() - closed < 10:
        time.sleep(0.02)
    freed = time.monotonic() - closed
    check("closing a stream cancels it", busy >= 1 and running(a.base_url, a.api_key, a.model) == 0,
          f"slot freed {freed * 1000:.0f} ms after close")

    print(f"openai {openai.__version__}: {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
