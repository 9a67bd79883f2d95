"""Writes tests/fixtures/serving/gemma_chat.json: what llama.cpp answers to a few chat
requests on the reference model, for the serving test to hold the whole path to (template,
tokenizer, engine, sampling, detokenizer).

    python scripts/reference/serving_fixture.py models/gemma-3-270m-q4_k_m.gguf OUT.json

Run it with the python that has llama-cpp-python 0.3.36. The file has no chat template, so
llama.cpp's built-in "gemma" format renders the conversation (the format modelhost picks for a
vocabulary with <start_of_turn>); the prompt is tokenized with special tokens parsed, and the
answer is greedy (temperature 0), up to 24 tokens or an end-of-generation token.
"""
import ctypes
import json
import sys

import llama_cpp

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "Name three colours."}],
    [{"role": "user", "content": "Write a haiku about the sea."},
     {"role": "assistant", "content": "Waves fold into foam"},
     {"role": "user", "content": "Another one, about mountains."}],
]
MAX_TOKENS = 24


def render(messages):
    arr = (llama_cpp.llama_chat_message * len(messages))()
    keep = []
    for i, m in enumerate(messages):
        role, content = m["role"].encode(), m["content"].encode()
        keep += [role, content]
        arr[i].role = role
        arr[i].content = content
    size = 1 << 16
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_chat_apply_template(b"gemma", arr, len(messages), True, buf, size)
    assert 0 < n < size
    return buf.raw[:n].decode()


def main(model_path, out_path):
    llm = llama_cpp.Llama(model_path, n_ctx=1024, n_batch=512, verbose=False, n_threads=2)
    eog = {1, 106}
    cases = []
    for messages in CONVERSATIONS:
        prompt = render(messages)
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        llm.reset()
        llm.eval(ids)
        out = []
        finish = "length"
        for _ in range(MAX_TOKENS):
            t = llm.sample(temp=0.0)
            if t in eog:
                finish = "stop"
                break
            out.append(t)
            llm.eval([t])
        cases.append({
            "messages": messages,
            "prompt": prompt,
            "prompt_ids": ids,
            "answer_ids": out,
            "answer": llm.detokenize(out).decode("utf-8", "replace"),
            "finish_reason": finish,
        })
    with open(out_path, "w") as f:
        json.dump({"llama_cpp_python": llama_cpp.__version__, "max_tokens": MAX_TOKENS,
                   "cases": cases}, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
