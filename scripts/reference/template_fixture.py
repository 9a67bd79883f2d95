"""Writes tests/fixtures/templates/renders.json: how Python's jinja2, set up as Hugging Face
transformers' `apply_chat_template` sets it up, renders each real chat template that llama.cpp
keeps (models/templates/*.jinja in the llama-cpp-python 0.3.36 sdist), for a set of
conversations; and how llama.cpp's built-in gemma and chatml formats render the same
conversations (the formats modelhost falls back to for a model without a template).

    scripts/fetch-llama-vendor.sh
    python3 scripts/reference/template_fixture.py target/llama-vendor/templates OUT.json

Run it with the python that has llama-cpp-python 0.3.36 (for the built-in formats) and jinja2.
"""
import ctypes
import datetime
import hashlib
import json
import os
import sys

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

# The date `strftime_now` sees, so that renders do not depend on the day they were made.
NOW = datetime.datetime(2026, 11, 30, 14, 5, 9)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}

CONVERSATIONS = {
    "user": {"messages": [{"role": "user", "content": "Hello!"}]},
    "system": {"messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 2+2?"},
    ]},
    "multi_turn": {"messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And times 3?"},
    ]},
    "unicode": {"messages": [
        {"role": "user", "content": "  H\u00e9llo\n w\u00f6rld \U0001f999 \u4f60\u597d  "},
        {"role": "assistant", "content": "Bonjour !\n\n"},
        {"role": "user", "content": "\"quotes\" and 'apostrophes' and <tags> & {braces}"},
    ]},
    "tools": {
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "system", "content": "You can call tools."},
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [{
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
            }]},
            {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "{\"temperature\": 21}"},
            {"role": "user", "content": "Thanks."},
        ],
    },
}

BOS, EOS = "<s>", "</s>"


class Generation(jinja2.ext.Extension):
    """transformers' AssistantTracker: `{% generation %}...{% endgeneration %}` marks the
    assistant's text (for training masks) and renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def hf_environment():
    """jinja2 as transformers' chat template utilities build it."""

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return NOW.strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render_jinja(env, source, conv, add_generation_prompt):
    try:
        template = env.from_string(source)
        out = template.render(
            messages=conv["messages"],
            tools=conv.get("tools"),
            documents=None,
            add_generation_prompt=add_generation_prompt,
            bos_token=BOS,
            eos_token=EOS,
        )
        return {"output": out}
    except Exception as e:  # noqa: BLE001 - any failure is recorded as the reference's answer
        return {"error": f"{type(e).__name__}: {e}"}


def render_builtin(name, conv, add_generation_prompt):
    import llama_cpp

    msgs = conv["messages"]
    arr = (llama_cpp.llama_chat_message * len(msgs))()
    keep = []
    for i, m in enumerate(msgs):
        role, content = m["role"].encode(), (m.get("content") or "").encode()
        keep += [role, content]
        arr[i].role, arr[i].content = role, content
    cap = 1 << 16
    buf = ctypes.create_string_buffer(cap)
    n = llama_cpp.llama_chat_apply_template(name.encode(), arr, len(msgs), add_generation_prompt, buf, cap)
    assert 0 <= n <= cap, n
    return {"output": buf.raw[:n].decode()}


def main():
    src_dir, dest = sys.argv[1], sys.argv[2]
    env = hf_environment()
    templates = {}
    for name in sorted(os.listdir(src_dir)):
        if not name.endswith(".jinja"):
            continue
        with open(os.path.join(src_dir, name), encoding="utf-8") as f:
            source = f.read()
        renders = []
        for conv_name, conv in CONVERSATIONS.items():
            for agp in (False, True):
                r = render_jinja(env, source, conv, agp)
                renders.append({"conversation": conv_name, "add_generation_prompt": agp, **r})
        templates[name] = {"sha256": hashlib.sha256(source.encode()).hexdigest(), "renders": renders}
    builtins = {}
    for name in ("gemma", "chatml"):
        builtins[name] = [
            {"conversation": c, "add_generation_prompt": agp, **render_builtin(name, conv, agp)}
            for c, conv in CONVERSATIONS.items()
            for agp in (False, True)
        ]
    out = {
        "jinja2": jinja2.__version__,
        "now": NOW.isoformat(),
        "bos_token": BOS,
        "eos_token": EOS,
        "conversations": CONVERSATIONS,
        "templates": templates,
        "builtins": builtins,
    }
    with open(dest, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    n_err = sum(1 for t in templates.values() for r in t["renders"] if "error" in r)
    print(f"{len(templates)} templates, {n_err} renders that raise -> {dest}", file=sys.stderr)


if __name__ == "__main__":
    main()
