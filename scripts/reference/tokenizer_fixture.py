"""Writes tests/fixtures/tokenizer/gemma.json: llama.cpp's token ids for 2,000+ strings in the
reference model's own vocabulary (gemma-3, 262,144 tokens), and its detokenization of them.

    python3 scripts/reference/tokenizer_fixture.py MODEL.gguf OUT.json

Run it with the python that has llama-cpp-python 0.3.36 (scripts/bench.sh builds one). The
strings are generated from a fixed seed: Unicode of many scripts, emoji sequences, white-space
runs, code, numbers, and text that looks like control tokens; each is tokenized as a request
is (no special tokens parsed, no BOS), and a quarter also with both on, as a rendered chat
prompt is.
"""
import ctypes
import hashlib
import json
import random
import sys

import llama_cpp
from llama_cpp import Llama

SEED = 20261130

SCRIPTS = {
    "latin": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZàáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßœšžłđğış",
    "cyrillic": "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЭЮЯіїєґ",
    "greek": "αβγδεζηθικλμνξοπρστυφχψωάέήίόύώΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩ",
    "arabic": "ابتثجحخدذرزسشصضطظعغفقكلمنهويءآأؤإئةى",
    "hebrew": "אבגדהוזחטיכלמנסעפצקרשתםןףץ",
    "devanagari": "अआइईउऊएऐओऔकखगघचछजझटठडढणतथदधनपफबभमयरलवशषसहािीुूेैोौंः्",
    "bengali": "অআইঈউঊএঐওঔকখগঘচছজঝটঠডঢণতথদধনপফবভমযরলশষসহািীুূেৈোৌং্",
    "tamil": "அஆஇஈஉஊஎஏஐஒஓகஙசஞடணதநபமயரலவழளறனாிீுூெேைொோௌ்",
    "thai": "กขฃคฅฆงจฉชซฌญฎฏฐฑฒณดตถทธนบปผฝพฟภมยรลวศษสหฬอฮะัาำิีึืุู่้๊๋",
    "khmer": "កខគឃងចឆជឈញដឋឌឍណតថទធនបផពភមយរលវសហឡអាិីឹឺុូួើឿៀេែៃោៅំះ់៌៍",
    "han": "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清物台象记边共风战干接它许八特觉望直服毛林题建南度统色字请交爱让认算论百吃义科怎元社术结六功指思非流每青管夫连远资队跟带花快条院变联言权往展该领传近留红治决周保达办运武半候七必城父强步完革深区即求品士转量空甚众技轻程告江语英基派满式李息写呢识极令黄德收脸钱党倒未持取设始版双历越史商千片容研像找友孩站广改议形委早房音火际则首单据导影失拿网香似斯专石若兵弟谁校读志飞观争究包组造落视济喜离虽坐集编宝谈府拉黑且随格尽剑讲布杀微怕母调局根曾准团段终乐切级克精哪官示冷",
    "kana": "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをんアイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワヲンー",
    "hangul": "가나다라마바사아자차카타파하각난닫랄맘밥삿앙잦찿캌탙팦핳고노도로모보소오조초코토포호구누두루무부수우주추쿠투푸후한국어세계안녕하세요",
    "georgian": "აბგდევზთიკლმნოპჟრსტუფქღყშჩცძწჭხჯჰ",
    "armenian": "աբգդեզէըթժիլխծկհձղճմյնշոչպջռսվտրցւփքօֆ",
    "ethiopic": "ሀሁሂሃሄህሆለሉሊላሌልሎሐሑሒሓሔሕሖመሙሚማሜምሞ",
    "math": "∀∂∃∅∇∈∉∋∏∑−∗√∝∞∠∧∨∩∪∫∴∼≅≈≠≡≤≥⊂⊃⊆⊇⊕⊗⊥⋅⌈⌉⌊⌋〈〉◊♠♣♥♦×÷±²³¹¼½¾",
    "symbols": "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~¡¢£¤¥¦§¨©ª«¬®¯°´µ¶·¸º»¿€‚„…†‡‰‹›‘’“”•–—™",
}
EMOJI = [
    "😀", "😂", "🥲", "😍", "🤔", "🙃", "😴", "🤖", "👍", "👍🏽", "👩‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷", "🇯🇵",
    "❤️", "🔥", "✨", "🎉", "🚀", "🦙", "🧬", "🫠", "🪐", "☕", "⚡", "✅", "❌", "😶‍🌫️", "🧑🏿‍🚀",
]
WHITESPACE = [" ", "  ", "   ", "    ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", "\r\n", " \n", "\n ", "\u00a0",
              "\u3000", "\u2009", "\u200b", " \t \n"]
CODE = [
    "def f(x):\n    return x * 2\n",
    "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "{\"key\": [1, 2.5, null, true], \"nested\": {\"a\": \"b\"}}",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
    "<div class=\"row\"><span id='x'>&amp; &lt;tag&gt;</span></div>",
    "import numpy as np\narr = np.zeros((3, 4), dtype=np.float32)\n",
    "    if (ptr == NULL) {\n        return -ENOMEM;\n    }\n",
    "x = lambda a, b: a ** b  # power\n",
    "$ ls -la /usr/local/bin | grep -v '^d' > out.txt 2>&1",
    "const re = /^[a-z0-9_-]{3,16}$/i;",
    "#include <stdio.h>\n#define MAX(a,b) ((a)>(b)?(a):(b))",
]
LOOKALIKES = [
    "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>", "<unk>", "<mask>", "[multimodal]",
    "<start_of_image>", "<end_of_image>", "<unused0>", "<unused42>", "<start_of_turn>user\n",
    "<end_of_turn>\n", "</s>", "<s>", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<start_of_turn",
    "start_of_turn>", "< start_of_turn >", "<START_OF_TURN>", "<<start_of_turn>>", "<end_of_turn><end_of_turn>",
    "<0x41>", "<0xE2>", "▁", "▁▁hello", "<2mass>", "[@BOS@]", "<image_soft_token>",
]
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "tokenizer", "model", "hello", "world",
         "don't", "it's", "we're", "they've", "I'm", "you'll", "he'd", "Hello", "WORLD", "camelCase", "snake_case",
         "kebab-case", "URL", "https://example.com/path?q=1&r=2#frag", "user@example.org", "v1.2.3", "C++", "C#"]


def number(rng):
    kind = rng.randrange(7)
    if kind == 0:
        return str(rng.randrange(10 ** rng.randrange(1, 12)))
    if kind == 1:
        return f"{rng.uniform(-1e4, 1e4):.{rng.randrange(1, 6)}f}"
    if kind == 2:
        return f"{rng.randrange(1, 13):02d}/{rng.randrange(1, 29):02d}/{rng.randrange(1900, 2100)}"
    if kind == 3:
        return f"+{rng.randrange(1, 99)} {rng.randrange(100, 999)} {rng.randrange(1000, 9999)}"
    if kind == 4:
        return "".join(rng.choice("0123456789") for _ in range(rng.randrange(10, 40)))
    if kind == 5:
        return f"{rng.randrange(1, 1000):,}"
    return f"{rng.random():.3e}"


def script_text(rng, name):
    chars = SCRIPTS[name]
    words = ["".join(rng.choice(chars) for _ in range(rng.randrange(1, 9))) for _ in range(rng.randrange(1, 8))]
    sep = "" if name in ("han", "kana", "thai", "khmer") and rng.random() < 0.6 else " "
    return sep.join(words)


def piece(rng):
    kind = rng.randrange(10)
    if kind <= 2:
        return script_text(rng, rng.choice(list(SCRIPTS)))
    if kind == 3:
        return "".join(rng.choice(EMOJI) for _ in range(rng.randrange(1, 4)))
    if kind == 4:
        return rng.choice(WHITESPACE)
    if kind == 5:
        return rng.choice(CODE)
    if kind == 6:
        return number(rng)
    if kind == 7:
        return rng.choice(LOOKALIKES)
    if kind == 8:
        # Code points from anywhere below the surrogates and in the supplementary planes.
        out = []
        for _ in range(rng.randrange(1, 6)):
            cp = rng.choice([rng.randrange(0x20, 0xD800), rng.randrange(0xE000, 0xFFFE), rng.randrange(0x10000, 0x2FFFF)])
            out.append(chr(cp))
        return "".join(out)
    return " ".join(rng.choice(WORDS) for _ in range(rng.randrange(1, 6)))


def strings(rng, n):
    out = set()
    # Fixed edge cases first.
    for s in ["", " ", "  ", "\n", "a", "A", "🦙", "▁", " ▁ ", "\u2581\u2581", "a" * 1000, " " * 100, "\n" * 50,
              "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n", "é", "e\u0301", "\ufeff",
              "\u0000", "\x7f", "\u200d", "ﬁ", "Ａ", "①"]:
        out.add(s)
    for ws in WHITESPACE:
        out.add(ws)
        out.add(ws + "word" + ws)
    for s in LOOKALIKES + CODE + EMOJI:
        out.add(s)
    while len(out) < n:
        parts = [piece(rng) for _ in range(rng.randrange(1, 5))]
        glue = rng.choice(["", " ", "\n", ""])
        out.add(glue.join(parts))
    return sorted(out)


def main():
    model, dest = sys.argv[1], sys.argv[2]
    llm = Llama(model_path=model, vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    rng = random.Random(SEED)

    def tokenize(text, add_special, parse_special):
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, cap, add_special, parse_special)
        assert n >= 0, (text, n)
        return list(buf[:n])

    def detokenize(ids, remove_special, unparse_special):
        arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
        cap = 64 + 64 * len(ids)
        out = ctypes.create_string_buffer(cap)
        n = llama_cpp.llama_detokenize(vocab, arr, len(ids), out, cap, remove_special, unparse_special)
        assert n >= 0
        return out.raw[:n]

    cases = []
    for i, text in enumerate(strings(rng, 2200)):
        modes = [(False, False)]
        if i % 4 == 0:
            modes.append((True, True))
        for add_special, parse_special in modes:
            ids = tokenize(text, add_special, parse_special)
            detok = detokenize(ids, False, False)
            case = {"text": text, "add_special": add_special, "parse_special": parse_special, "ids": ids}
            # llama.cpp's detokenization, where it does not give the text back.
            if detok != text.encode():
                try:
                    case["detok"] = detok.decode("utf-8")
                except UnicodeDecodeError:
                    case["detok_hex"] = detok.hex()
            cases.append(case)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    special = {
        "bos": llama_cpp.llama_vocab_bos(vocab),
        "eos": llama_cpp.llama_vocab_eos(vocab),
        "eot": llama_cpp.llama_vocab_eot(vocab),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
        "eog": [i for i in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)],
        "control": sum(1 for i in range(n_vocab) if llama_cpp.llama_vocab_is_control(vocab, i)),
    }
    with open(model, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with open(dest, "w", encoding="utf-8") as f:
        json.dump({"model_sha256": digest, "llama_cpp_python": llama_cpp.__version__, "special": special,
                   "cases": cases},
                  f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"{len(cases)} cases ({len({c['text'] for c in cases})} strings) -> {dest}", file=sys.stderr)


if __name__ == "__main__":
    main()
