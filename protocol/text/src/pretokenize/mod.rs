//! Pre-tokenization: how a byte-level BPE vocabulary cuts text into words before merging, by
//! the `tokenizer.ggml.pre` name its converter wrote. Every name llama.cpp (0.3.36's vendored
//! copy) accepts is here, with the patterns and vocabulary options it gives that name; any
//! other is refused by name, because a wrong pre-tokenizer silently degrades every prompt.

mod split;

use std::ops::Range;

use fancy_regex::Regex;

pub use split::Chars;
use split::{RegexInput, Split};

/// A vocabulary's pre-tokenizer and the options its name implies.
pub struct PreTokenizer {
    pub name: String,
    splits: Vec<Split>,
    pub options: PreOptions,
}

/// Vocabulary options that follow from the pre-tokenizer's name (the GGUF's own keys, read
/// after, override the `add_*` ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreOptions {
    /// Words are spelled in GPT-2's printable byte characters (false: raw UTF-8).
    pub byte_encode: bool,
    /// Spaces become `▁` before merging (SentencePiece-style BPE).
    pub escape_whitespaces: bool,
    /// A word that is a whole token is taken as it is, without merging.
    pub ignore_merges: bool,
    /// Detokenized text loses the space before `?!.,` and some contractions.
    pub clean_spaces: bool,
    /// The name implies a BOS token at the start (before the GGUF's own key).
    pub add_bos: bool,
    /// The name implies a separator token at the end.
    pub add_sep: bool,
    /// The name disables the BOS token.
    pub no_bos: bool,
}

impl Default for PreOptions {
    fn default() -> Self {
        PreOptions {
            byte_encode: true,
            escape_whitespaces: false,
            ignore_merges: false,
            clean_spaces: true,
            add_bos: false,
            add_sep: false,
            no_bos: false,
        }
    }
}

/// A pre-tokenizer that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreTokenizerError {
    #[error("unknown pre-tokenizer {0:?} (tokenizer.ggml.pre): the model's words cannot be cut as it was trained")]
    Unknown(String),
    #[error("pre-tokenizer {name:?}: pattern {pattern:?} does not compile: {reason}")]
    Pattern {
        name: String,
        pattern: String,
        reason: String,
    },
}

// The patterns, as llama.cpp writes them (from the models' tokenizer.json files, with `(?i:..)`
// spelled out). The four most common have hand-written splitters, chosen by these names.
const GPT2: &str = r##"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"##;
const LLAMA3: &str = r##"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##;
const QWEN2: &str = r##"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##;
const QWEN35: &str = r##"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##;
const NEWLINES: &str = r##"[^\n]+|[\n]+"##;
/// Digits in threes from the right; llama.cpp's own code stands for these two patterns.
const DIGIT_GROUPS: &str = r##"\p{AFMoE_digits}"##;
const TINY_AYA_DIGITS: &str = r##"\d{1,3}(?=(?:\d{3})*\b)"##;
/// Kimi K2: llama.cpp's own code, expressed here by the model's original pattern.
const KIMI_K2: &str = r##"[\p{Han}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##;

const DEFAULT: &[&str] = &[
    r##"[\p{P}\$\+<=>\^~\|]+"##,
    GPT2,
    r##"\p{N}+"##,
    r##"[0-9][0-9][0-9]"##,
];
const STARCODER: &[&str] = &[r##"\p{N}"##, GPT2];
const DEEPSEEK_LLM: &[&str] = &[
    r##"[\r\n]"##,
    r##"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+"##,
    r##"\s?[!-/:-~！-／：-～‘-‟　-。]+"##,
    r##"\s+$"##,
    r##"[一-龥ࠀ-一가-퟿]+"##,
    r##"\p{N}+"##,
];
const DEEPSEEK_CODER: &[&str] = &[
    r##"[\r\n]"##,
    r##"\s?\p{L}+"##,
    r##"\s?\p{P}+"##,
    r##"[一-龥ࠀ-一가-퟿]+"##,
    r##"\p{N}"##,
];
const DEEPSEEK3: &[&str] = &[
    r##"\p{N}{1,3}"##,
    r##"[一-龥぀-ゟ゠-ヿ]+"##,
    r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
];
const SPARK2_5: &[&str] = &[
    r##"\p{N}{1,3}"##,
    r##"[一-龥぀-ゟ゠-ヿ]+"##,
    r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+"##,
    r##"\p{N}"##,
];
const YOUTU: &[&str] = &[
    r##"[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|[一-龥぀-ゟ゠-ヿ]+"##,
    r##"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
];
const FALCON: &[&str] = &[r##"[\p{P}\$\+<=>\^~\|`]+"##, GPT2, r##"[0-9][0-9][0-9]"##];
const JAIS2: &[&str] = &[
    r##"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}"##,
];
const PORO: &str = r##" ?[^(\s|.,!?…。，、।۔،)]+"##;
const TEKKEN: &[&str] = &[
    r##"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
];
const CHAMELEON: &[&str] = &[
    r##"<sentinel:[0-9]+>"##,
    r##"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z"##,
    r##"([\t\n]|    |  )"##,
    r##"\p{N}"##,
    r##"[\p{P}!-/:-@\[-`{-~]"##,
    GPT2,
];
const GPT4O: &[&str] = &[
    r##"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
];
const GRANITE_EMB_MULTI: &[&str] = &[
    r##"[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))*((?=[\p{L}\p{M}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))+((?=[\p{L}\p{M}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
];
const TINY_AYA: &[&str] = &[
    TINY_AYA_DIGITS,
    r##"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
];
const SUPERBPE: &[&str] = &[r##"\p{N}+"##, r##"(?=(\d{3})+(?!\d))"##];
const BAILINGMOE: &[&str] = &[
    r##"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"##,
];
const SEED_CODER: &[&str] = &[
    r##"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"##,
];
const UFAKZEKA: &[&str] =
    &[r##"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##];
const AFMOE: &[&str] = &[
    DIGIT_GROUPS,
    r##"[一-鿿㐀-䶿豈-﫿぀-ゟ゠-ヿ･-ﾟ⼀-⿟เ-๿຀-໿ក-៿က-႟ꩠ-ꩿꧠ-꧿가-힯ᄀ-ᇿ]+"##,
    r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
];
const EXAONE_MOE: &[&str] = &[
    r##"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+"##,
];
const MINICPM5: &[&str] = &[
    r##"\p{N}{1,3}"##,
    r##"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
];

/// The patterns and options for a `tokenizer.ggml.pre` name (an empty name is "default", as
/// llama.cpp takes a missing key, with a warning from the caller).
fn definition(name: &str) -> Option<(&'static [&'static str], PreOptions)> {
    let base = PreOptions::default();
    let plain = PreOptions {
        clean_spaces: false,
        ..base
    };
    Some(match name {
        "" | "default" => (DEFAULT, base),
        "minicpm5" => (
            MINICPM5,
            PreOptions {
                ignore_merges: true,
                ..base
            },
        ),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => (
            &[LLAMA3],
            PreOptions {
                ignore_merges: true,
                add_bos: true,
                ..base
            },
        ),
        "deepseek-llm" => (DEEPSEEK_LLM, plain),
        "deepseek-coder" => (DEEPSEEK_CODER, plain),
        "deepseek-v3" | "hunyuan-dense" | "hy_v4" | "joyai-llm" => (DEEPSEEK3, plain),
        "spark2_5" => (SPARK2_5, plain),
        "youtu" => (
            YOUTU,
            PreOptions {
                ignore_merges: true,
                ..plain
            },
        ),
        "falcon" => (FALCON, base),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "a.x-4.0" | "mellum" | "modern-bert" | "mpt" | "olmo" | "jais" | "exaone4" => {
            (&[GPT2], base)
        }
        "trillion" | "granite-docling" => (&[GPT2], plain),
        "jina-v1-en" | "jina-v2-code" | "roberta-bpe" => (
            &[GPT2],
            PreOptions {
                add_sep: true,
                ..base
            },
        ),
        "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
            (STARCODER, base)
        }
        "command-r" | "smollm" => (STARCODER, plain),
        "jais-2" => (JAIS2, base),
        "gemma4" | "granite-embed-multi-311m" => (
            &[NEWLINES],
            PreOptions {
                byte_encode: false,
                escape_whitespaces: true,
                ..base
            },
        ),
        "sarvam-moe" => (
            &[NEWLINES],
            PreOptions {
                byte_encode: false,
                escape_whitespaces: true,
                ..plain
            },
        ),
        "whitespace" => (
            &[r##"\S+"##],
            PreOptions {
                byte_encode: false,
                ..base
            },
        ),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "grok-2"
        | "solar-open" => (&[QWEN2], plain),
        "stablelm2" | "megrez" => (&[QWEN2], base),
        "qwen35" => (&[QWEN35], plain),
        "dbrx" | "smaug-bpe" => (&[LLAMA3], base),
        "poro-chat" => (&[PORO], plain),
        "bloom" | "gpt3-finnish" => (&[PORO], base),
        "viking" => (&[PORO, r##"\p{N}"##], plain),
        "chatglm-bpe" => (
            &[LLAMA3],
            PreOptions {
                no_bos: true,
                ..base
            },
        ),
        "glm4" | "glm5" => (
            &[LLAMA3],
            PreOptions {
                no_bos: true,
                ignore_merges: true,
                ..base
            },
        ),
        "tekken" => (
            TEKKEN,
            PreOptions {
                ignore_merges: true,
                add_bos: true,
                ..plain
            },
        ),
        "exaone-moe" => (EXAONE_MOE, base),
        "chameleon" => (
            CHAMELEON,
            PreOptions {
                add_bos: true,
                ..plain
            },
        ),
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => (GPT4O, plain),
        "granite-embed-multi-97m" => (
            GRANITE_EMB_MULTI,
            PreOptions {
                ignore_merges: true,
                ..plain
            },
        ),
        "tiny_aya" | "cohere2moe" => (TINY_AYA, plain),
        "superbpe" => (SUPERBPE, plain),
        "bailingmoe" | "bailingmoe2" | "llada-moe" => (BAILINGMOE, plain),
        "seed-coder" => (SEED_CODER, plain),
        "kimi-k2" => (&[KIMI_K2], plain),
        "ufakzeka" => (UFAKZEKA, plain),
        "afmoe" => (AFMOE, plain),
        "laguna" => (&[NEWLINES, QWEN2], plain),
        _ => return None,
    })
}

/// Every name [`PreTokenizer::new`] accepts.
pub const NAMES: &[&str] = &[
    "default",
    "minicpm5",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
    "deepseek-llm",
    "deepseek-coder",
    "deepseek-v3",
    "spark2_5",
    "youtu",
    "falcon",
    "mpt",
    "starcoder",
    "gpt-2",
    "phi-2",
    "jina-es",
    "jina-de",
    "gigachat",
    "jina-v2-es",
    "jina-v2-de",
    "a.x-4.0",
    "mellum",
    "modern-bert",
    "jais-2",
    "gemma4",
    "granite-embed-multi-311m",
    "sarvam-moe",
    "jina-v1-en",
    "jina-v2-code",
    "roberta-bpe",
    "whitespace",
    "refact",
    "command-r",
    "qwen2",
    "deepseek-r1-qwen",
    "kormo",
    "f2llmv2",
    "qwen35",
    "stablelm2",
    "olmo",
    "dbrx",
    "smaug-bpe",
    "poro-chat",
    "chatglm-bpe",
    "glm4",
    "glm5",
    "viking",
    "jais",
    "tekken",
    "smollm",
    "codeshell",
    "bloom",
    "gpt3-finnish",
    "exaone",
    "exaone4",
    "exaone-moe",
    "chameleon",
    "minerva-7b",
    "megrez",
    "gpt-4o",
    "llama4",
    "kanana2",
    "talkie",
    "granite-embed-multi-97m",
    "tiny_aya",
    "cohere2moe",
    "superbpe",
    "trillion",
    "granite-docling",
    "bailingmoe",
    "bailingmoe2",
    "llada-moe",
    "seed-coder",
    "hunyuan",
    "hunyuan-dense",
    "hy_v4",
    "joyai-llm",
    "kimi-k2",
    "ufakzeka",
    "grok-2",
    "afmoe",
    "laguna",
    "minimax-m2",
    "solar-open",
    "mellum2",
];

impl PreTokenizer {
    /// The pre-tokenizer named `name`, or an error that names it.
    pub fn new(name: &str) -> Result<PreTokenizer, PreTokenizerError> {
        let (patterns, options) =
            definition(name).ok_or_else(|| PreTokenizerError::Unknown(name.to_owned()))?;
        let splits = patterns
            .iter()
            .map(|&p| {
                compile(p).map_err(|reason| PreTokenizerError::Pattern {
                    name: name.to_owned(),
                    pattern: p.to_owned(),
                    reason,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(PreTokenizer {
            name: if name.is_empty() { "default" } else { name }.to_owned(),
            splits,
            options,
        })
    }

    /// The words of `text`, as byte ranges into it.
    pub fn words(&self, text: &str) -> Vec<Range<usize>> {
        let chars = Chars::new(text);
        let mut segments = Vec::new();
        if !chars.chars.is_empty() {
            segments.push(0..chars.chars.len());
        }
        for s in &self.splits {
            segments = split::apply(s, &chars, &segments);
        }
        segments
            .into_iter()
            .map(|r| chars.starts[r.start]..chars.starts[r.end])
            .collect()
    }
}

/// The splitter for one pattern: a hand-written one where llama.cpp has one, else the pattern
/// compiled for the input it runs on.
fn compile(pattern: &str) -> Result<Split, String> {
    Ok(match pattern {
        GPT2 => Split::Gpt2,
        LLAMA3 => Split::Llama3 {
            digit_runs: true,
            marks: false,
        },
        QWEN2 => Split::Llama3 {
            digit_runs: false,
            marks: false,
        },
        QWEN35 => Split::Llama3 {
            digit_runs: false,
            marks: true,
        },
        NEWLINES => Split::Newlines,
        DIGIT_GROUPS | TINY_AYA_DIGITS => Split::DigitGroups,
        KIMI_K2 => Split::Regex {
            regex: Regex::new(pattern).map_err(|e| e.to_string())?,
            input: RegexInput::Original,
        },
        _ if pattern.contains(r"\p{") => {
            if !pattern.is_ascii() {
                return Err("Unicode classes and non-ASCII characters in one pattern".into());
            }
            Split::Regex {
                regex: Regex::new(&collapse_pattern(pattern)).map_err(|e| e.to_string())?,
                input: RegexInput::Collapsed,
            }
        }
        _ => Split::Regex {
            regex: Regex::new(pattern).map_err(|e| e.to_string())?,
            input: RegexInput::Plain,
        },
    })
}

/// Rewrites the Unicode classes of an ASCII pattern for a collapsed text: `\p{L}` becomes the
/// letters' stand-in plus the ASCII letters, in brackets unless already inside a class. The
/// subclasses of letters (`\p{Lu}`...) are all letters, as in llama.cpp.
fn collapse_pattern(pattern: &str) -> String {
    use crate::unicode::{flags, Flags};
    use split::stand_in;
    type Member = fn(Flags) -> bool;
    let class_of = |name: &str| -> Option<(char, Member)> {
        Some(match name {
            "N" => (stand_in::NUMBER, Flags::is_number),
            "L" | "Lu" | "Ll" | "Lt" | "Lm" | "Lo" => (stand_in::LETTER, Flags::is_letter),
            "P" => (stand_in::PUNCTUATION, Flags::is_punctuation),
            "M" => (stand_in::MARK, Flags::is_mark),
            "S" => (stand_in::SYMBOL, Flags::is_symbol),
            _ => return None,
        })
    };
    let bytes = pattern.as_bytes();
    let mut out = String::with_capacity(pattern.len() * 2);
    let mut inside = false;
    let mut i = 0;
    while i < bytes.len() {
        let escaped = i > 0 && bytes[i - 1] == b'\\';
        match bytes[i] {
            b'[' if !escaped => inside = true,
            b']' if inside && !escaped => inside = false,
            b'\\' if bytes.get(i + 1) == Some(&b'p') && bytes.get(i + 2) == Some(&b'{') => {
                if let Some(close) = pattern[i + 3..].find('}').map(|c| i + 3 + c) {
                    if let Some((stand, member)) = class_of(&pattern[i + 3..close]) {
                        if !inside {
                            out.push('[');
                        }
                        out.push(stand);
                        for b in 0..128u8 {
                            if member(flags(char::from(b))) {
                                // Hex escapes: unambiguous inside any class.
                                out.push_str(&format!("\\x{b:02X}"));
                            }
                        }
                        if !inside {
                            out.push(']');
                        }
                        i = close + 1;
                        continue;
                    }
                }
            }
            _ => {}
        }
        out.push(char::from(bytes[i]));
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words<'t>(pre: &PreTokenizer, text: &'t str) -> Vec<&'t str> {
        pre.words(text).into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn every_name_builds() {
        for name in NAMES {
            let pre = PreTokenizer::new(name).unwrap_or_else(|e| panic!("{e}"));
            // Every pre-tokenizer covers the text exactly, in order.
            let text = "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～ \n\n  x";
            let joined: String = words(&pre, text).concat();
            assert_eq!(joined, text, "{name}");
        }
        assert!(matches!(
            PreTokenizer::new("no-such"),
            Err(PreTokenizerError::Unknown(n)) if n == "no-such"
        ));
    }

    #[test]
    fn gpt2_words() {
        let pre = PreTokenizer::new("gpt-2").unwrap();
        assert_eq!(
            words(&pre, "Hello world's  3.14 ok   \n"),
            ["Hello", " world", "'s", " ", " 3", ".", "14", " ok", "   \n"]
        );
    }

    #[test]
    fn llama3_words() {
        let pre = PreTokenizer::new("llama-bpe").unwrap();
        assert_eq!(
            words(&pre, "I'M 1234567 (x)\n\n  y"),
            ["I", "'M", " ", "123", "456", "7", " (", "x", ")\n\n", " ", " y"]
        );
    }

    #[test]
    fn collapsed_patterns_keep_ascii_members() {
        let p = collapse_pattern(r"\p{N}+|[\p{P}\$]+");
        assert!(p.starts_with("[\u{E0D1}\\x30"));
        assert!(p.contains("\\x21"));
    }
}
