"""Reference logits and greedy continuations from llama.cpp (llama-cpp-python), for the engine's
conformance tests.

    python engine_reference.py MODEL.gguf OUT.bin [--prompts gemma|synthetic] [--threads 2]

For each prompt (tokenized by llama.cpp with its BOS), it records:
- the top-K logits at every position, with the log-sum-exp of the whole row, from one
  teacher-forced pass (logits_all);
- the full logits row at a few positions, as f16;
- llama.cpp's greedy continuation of GREEDY tokens.

The fixture format (little-endian), read by worker/tests/reference.rs:
    b"MHRF" u32 version=1 | u32 vocab | u32 prompts
    per prompt: u32 n, u32[n] tokens | u32 g, u32[g] greedy | u32 k,
                n x (f32 lse, k x (u32 id, f32 logit))
    u32 full_rows, each: u32 prompt, u32 position, f16[vocab]
"""
import argparse
import struct
import sys

import numpy as np
from llama_cpp import Llama

GEMMA_PROMPTS = [
    "The capital of France is",
    "Q: What is 17 times 23?\nA:",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Write a haiku about the sea.",
    "Translate to German: The weather is nice today, and we are going for a walk in the park.",
    "List five fruits that are red:\n1.",
    "Once upon a time, in a small village at the foot of the mountains, there lived an old "
    "clockmaker who had never left his workshop. Every morning he opened the shutters, wound "
    "the hundred clocks that hung on his walls, and listened to them tick in unison. One day",
    "Here is a JSON object describing a book: {\"title\": \"The Hobbit\", \"author\": ",
    "Photosynthesis is the process by which green plants and some other organisms use sunlight "
    "to synthesize foods from carbon dioxide and water. Photosynthesis in plants generally "
    "involves the green pigment chlorophyll and generates oxygen as a byproduct. The process "
    "takes place mainly in the leaves, where cells called mesophyll contain chloroplasts. "
    "Inside the chloroplasts, the light-dependent reactions capture energy from light and use "
    "it to make the energy-storage molecules ATP and NADPH, while splitting water molecules and "
    "releasing oxygen. The light-independent reactions, known as the Calvin cycle, then use "
    "this energy to fix carbon dioxide into organic molecules such as glucose. Scientists have "
    "studied photosynthesis for centuries, from Jan van Helmont's experiments with a willow "
    "tree in the seventeenth century to modern work on the structure of photosystem II. "
    "Understanding photosynthesis matters for agriculture, because crop yields depend on how "
    "efficiently plants convert light into biomass, and for energy research, because artificial "
    "photosynthesis could one day produce fuels directly from sunlight. In summary,",
    "The history of computing begins long before electronic machines. The abacus, used in "
    "Mesopotamia, Egypt, Greece, Rome, India and China, let merchants add and subtract quickly. "
    "In the seventeenth century, Blaise Pascal built a mechanical calculator to help his father "
    "with tax accounts, and Gottfried Wilhelm Leibniz designed the stepped reckoner, which could "
    "also multiply and divide. In the nineteenth century, Charles Babbage conceived the "
    "Difference Engine to compute polynomial tables, and later the Analytical Engine, a "
    "general-purpose design with a mill, a store, and punched cards borrowed from the Jacquard "
    "loom. Ada Lovelace wrote notes on the Analytical Engine that included what is often called "
    "the first computer program, an algorithm to compute Bernoulli numbers, and she foresaw that "
    "such machines might manipulate symbols other than numbers, such as musical notes. The "
    "twentieth century brought electromechanical and then electronic computers: the Harvard "
    "Mark I, the Colossus machines at Bletchley Park, and ENIAC, which filled a room and used "
    "about eighteen thousand vacuum tubes. The invention of the transistor at Bell Labs in 1947, "
    "and of the integrated circuit about a decade later, made computers smaller, faster, cheaper "
    "and more reliable. Mainframes gave way to minicomputers, and minicomputers to personal "
    "computers, as companies such as Apple, IBM and Commodore brought machines into homes and "
    "schools. The spread of the internet in the 1990s connected those machines, and the "
    "smartphone put a networked computer in billions of pockets. Today, research continues on "
    "quantum computers, which use qubits that can exist in superpositions of states, and on "
    "neuromorphic chips inspired by the brain. Looking back over this long history, the most "
    "important lesson is that",
]

# Short prompts of token ids for synthetic models, whose vocabularies hold no real text.
SYNTHETIC_PROMPTS = [[1, 17, 400, 33, 9, 250, 600, 5, 77, 3, 901, 12] * 4, [1] + list(range(100, 164))]

FULL_ROWS = [(0, -1), (8, 200)]
GREEDY = 32
TOP_K = 32


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--prompts", choices=["gemma", "synthetic"], default="gemma")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=512,
                    help="tokens per llama.cpp batch; 1 evaluates the prompt token by token")
    ap.add_argument("--no-repack", action="store_true",
                    help="turn off llama.cpp's CPU weight repacking (use_extra_bufts = False)")
    args = ap.parse_args()

    if args.no_repack:
        import llama_cpp
        default_params = llama_cpp.llama_model_default_params

        def without_repack():
            params = default_params()
            params.use_extra_bufts = False
            return params

        llama_cpp.llama_model_default_params = without_repack
        llama_cpp.llama.llama_cpp.llama_model_default_params = without_repack

    llm = Llama(model_path=args.model, n_ctx=1024, n_batch=args.batch, n_ubatch=args.batch,
                logits_all=True,
                n_threads=args.threads, n_threads_batch=args.threads, verbose=False, seed=0)
    vocab = llm.n_vocab()
    if args.prompts == "gemma":
        prompts = [llm.tokenize(p.encode(), add_bos=True, special=False) for p in GEMMA_PROMPTS]
    else:
        prompts = [[t % vocab for t in p] for p in SYNTHETIC_PROMPTS]

    out = bytearray(b"MHRF" + struct.pack("<III", 1, vocab, len(prompts)))
    full = []
    for pi, tokens in enumerate(prompts):
        llm.reset()
        llm.eval(tokens)
        scores = np.array(llm.scores[: len(tokens)], dtype=np.float32)
        greedy = []
        for _ in range(GREEDY):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            greedy.append(nxt)
            llm.eval([nxt])
        out += struct.pack("<I", len(tokens)) + struct.pack(f"<{len(tokens)}I", *tokens)
        out += struct.pack("<I", len(greedy)) + struct.pack(f"<{len(greedy)}I", *greedy)
        out += struct.pack("<I", TOP_K)
        for row in scores:
            m = float(row.max())
            lse = m + float(np.log(np.exp((row - m).astype(np.float64)).sum()))
            top = np.argsort(-row, kind="stable")[:TOP_K]
            out += struct.pack("<f", lse)
            for i in top:
                out += struct.pack("<If", int(i), float(row[i]))
        for fp, pos in FULL_ROWS:
            if fp == pi and abs(pos) <= len(tokens):
                p = pos % len(tokens)
                full.append((pi, p, scores[p].astype(np.float16).tobytes()))
        print(f"prompt {pi}: {len(tokens)} tokens, greedy {greedy[:8]}...", file=sys.stderr)
    out += struct.pack("<I", len(full))
    for pi, p, row in full:
        out += struct.pack("<II", pi, p) + row
    with open(args.out, "wb") as f:
        f.write(out)
    print(f"wrote {args.out}: {len(out)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
