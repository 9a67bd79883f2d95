//! The vocabulary a GGUF carries (`tokenizer.ggml.*`), read and checked, with the rules
//! llama.cpp applies when it loads one: default special tokens per vocabulary type, special
//! tokens found by their text, the end-of-generation set, and per-model token attributes.
//! Nothing in the file is trusted: every array, type and id is checked, and a vocabulary
//! llama.cpp cannot load either is an error that says why.

use std::collections::BTreeSet;

use modelhost_protocol::gguf::{optional, GgufFile, MetadataError, Value, ValueType};

use crate::pretokenize::{PreTokenizer, PreTokenizerError};
use crate::strings::{Arena, Duplicates, Index, TextArena};

/// A token id.
pub type TokenId = u32;

/// How text is cut into tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// SentencePiece BPE: merges chosen by the tokens' scores, byte tokens as fallback
    /// (`tokenizer.ggml.model = "llama"`).
    Spm,
    /// Byte-level BPE with ranked merges over pre-tokenized words (`"gpt2"`, `"gemma4"`).
    Bpe,
}

/// Token attributes, as llama.cpp's `llama_token_attr` bits.
pub mod attr {
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;
    pub const LSTRIP: u16 = 1 << 7;
    pub const RSTRIP: u16 = 1 << 8;
}

/// A vocabulary that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VocabError {
    #[error("the model has no vocabulary (tokenizer.ggml.model is missing)")]
    Missing,
    #[error("the model has no vocabulary (tokenizer.ggml.model = {0:?})")]
    NoVocab(String),
    #[error("unsupported vocabulary {0:?} (tokenizer.ggml.model): modelhost reads \"llama\" (SentencePiece), \"gpt2\" and \"gemma4\" (BPE)")]
    Unsupported(String),
    #[error("unknown vocabulary type {0:?} (tokenizer.ggml.model)")]
    Unknown(String),
    #[error(transparent)]
    PreTokenizer(#[from] PreTokenizerError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("{key}: expected an array of {expected}, found {found}")]
    ArrayType {
        key: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("{key} has {found} entries for {tokens} tokens")]
    TooShort {
        key: &'static str,
        found: u64,
        tokens: u64,
    },
    #[error("the vocabulary has {0} tokens, more than token ids can number")]
    TooLarge(u64),
    #[error("the vocabulary is empty")]
    Empty,
    #[error("token {id} ({text:?}) is not valid UTF-8")]
    NotUtf8 { id: TokenId, text: String },
}

/// A model's vocabulary and its tokenization options.
pub struct Vocab {
    pub(crate) kind: Kind,
    /// `tokenizer.ggml.model`, as written.
    pub(crate) model: String,
    pub(crate) pre: Option<PreTokenizer>,
    /// Each token's text (UTF-8, checked at load).
    pub(crate) texts: TextArena,
    pub(crate) scores: Vec<f32>,
    pub(crate) attrs: Vec<u16>,
    /// Text to id; where two tokens share a text, the later id, as in llama.cpp.
    pub(crate) ids: Index,
    /// The merges, `"left right"`, with their ranks; where a merge repeats, its first rank.
    pub(crate) merges: Arena,
    pub(crate) merge_index: Index,
    pub(crate) merge_ranks: Vec<u32>,
    pub(crate) special: SpecialTokens,
    pub(crate) eog: BTreeSet<TokenId>,
    pub(crate) flags: Flags,
    /// Control, user-defined and unknown tokens, longest first: the order in which they are
    /// found in text.
    pub(crate) specials_by_length: Vec<TokenId>,
    /// What each token reads as, control tokens included.
    pub(crate) pieces: Arena,
}

/// The special token ids a vocabulary names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<TokenId>,
    pub eos: Option<TokenId>,
    pub eot: Option<TokenId>,
    pub eom: Option<TokenId>,
    pub unk: Option<TokenId>,
    pub sep: Option<TokenId>,
    pub pad: Option<TokenId>,
    pub mask: Option<TokenId>,
    pub fim_pre: Option<TokenId>,
    pub fim_suf: Option<TokenId>,
    pub fim_mid: Option<TokenId>,
    pub fim_pad: Option<TokenId>,
    pub fim_rep: Option<TokenId>,
    pub fim_sep: Option<TokenId>,
}

/// Tokenization options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_sep: bool,
    pub add_space_prefix: bool,
    pub escape_whitespaces: bool,
    pub clean_spaces: bool,
    pub ignore_merges: bool,
    pub byte_encode: bool,
}

const TOKENS: &str = "tokenizer.ggml.tokens";
const SCORES: &str = "tokenizer.ggml.scores";
const TYPES: &str = "tokenizer.ggml.token_type";
const MERGES: &str = "tokenizer.ggml.merges";

/// Token texts that mark the end of a turn or of generation in the vocabularies llama.cpp
/// knows (it finds these by text, because converters do not always name them).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "[e~[",
];

const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<\u{ff5c}fim\u{2581}begin\u{ff5c}>",
    "<PRE>",
    "\u{2581}<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<\u{ff5c}fim\u{2581}hole\u{ff5c}>",
    "<SUF>",
    "\u{2581}<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<\u{ff5c}fim\u{2581}end\u{ff5c}>",
    "<MID>",
    "\u{2581}<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

impl Vocab {
    /// Reads the vocabulary of a GGUF file.
    pub fn from_gguf(file: &GgufFile<'_>) -> Result<Vocab, VocabError> {
        let model = match optional(file.str("tokenizer.ggml.model"))? {
            Some(m) => m.to_owned(),
            None => return Err(VocabError::Missing),
        };
        let pre_name = optional(file.str("tokenizer.ggml.pre"))?.map(str::to_owned);
        let mut special = SpecialTokens::default();
        let mut flags = Flags {
            escape_whitespaces: true,
            ..Flags::default()
        };
        let (kind, pre) = match model.as_str() {
            "llama" => {
                special.bos = Some(1);
                special.eos = Some(2);
                special.unk = Some(0);
                flags.add_space_prefix = true;
                flags.add_bos = true;
                (Kind::Spm, None)
            }
            "gpt2" | "gemma4" => {
                let name = if model == "gemma4" {
                    "gemma4"
                } else {
                    pre_name.as_deref().unwrap_or("")
                };
                let pre = PreTokenizer::new(name)?;
                if model == "gpt2" {
                    special.bos = Some(11);
                    special.eos = Some(11);
                }
                let o = pre.options;
                flags.escape_whitespaces = o.escape_whitespaces;
                flags.clean_spaces = o.clean_spaces;
                flags.ignore_merges = o.ignore_merges;
                flags.add_bos = o.add_bos;
                flags.add_sep = o.add_sep;
                flags.byte_encode = o.byte_encode;
                if o.no_bos {
                    special.bos = None;
                }
                (Kind::Bpe, Some(pre))
            }
            "no_vocab" | "none" => return Err(VocabError::NoVocab(model)),
            "bert" | "t5" | "rwkv" | "plamo2" | "hybriddna" | "whitespace" | "test" => {
                return Err(VocabError::Unsupported(model))
            }
            _ => return Err(VocabError::Unknown(model)),
        };
        if let Some(v) = optional(file.bool("tokenizer.ggml.add_space_prefix"))? {
            flags.add_space_prefix = v;
        }

        let tokens = string_array(file, TOKENS)?.ok_or(MetadataError::Missing {
            key: TOKENS.to_owned(),
        })?;
        let n = tokens.len();
        if n == 0 {
            return Err(VocabError::Empty);
        }
        if n > u64::from(i32::MAX as u32) {
            return Err(VocabError::TooLarge(n));
        }
        let scores = scores(file, n)?;
        let types = token_types(file, n)?;

        let mut texts = TextArena::with_capacity(n as usize, n as usize * 8);
        let mut attrs = Vec::with_capacity(n as usize);
        for (i, v) in tokens.iter().enumerate() {
            let id = i as TokenId;
            let Value::String(s) = v else {
                unreachable!("checked: an array of strings")
            };
            match s.to_str() {
                Ok("") => texts.push(&format!("[EMPTY_{id}]")),
                Ok(t) => texts.push(t),
                Err(_) => {
                    return Err(VocabError::NotUtf8 {
                        id,
                        text: String::from_utf8_lossy(s.as_bytes()).into_owned(),
                    })
                }
            };
            attrs.push(match types.as_ref().map(|t| t[i]) {
                None | Some(1) => attr::NORMAL,
                Some(2) => attr::UNKNOWN,
                Some(3) => attr::CONTROL,
                Some(4) => attr::USER_DEFINED,
                Some(5) => attr::UNUSED,
                Some(6) => attr::BYTE,
                Some(_) => 0,
            });
        }

        let mut merges = Arena::default();
        let mut merge_ranks = Vec::new();
        if kind == Kind::Bpe {
            let list = string_array(file, MERGES)?.ok_or(MetadataError::Missing {
                key: MERGES.to_owned(),
            })?;
            merges = Arena::with_capacity(list.len() as usize, list.len() as usize * 10);
            merge_ranks.reserve(list.len() as usize);
            for (rank, v) in list.iter().enumerate() {
                let Value::String(s) = v else {
                    unreachable!("checked: an array of strings")
                };
                // A merge that is not UTF-8 or has no separating space can never apply.
                let Ok(text) = s.to_str() else { continue };
                if !text.as_bytes().iter().skip(1).any(|&b| b == b' ') {
                    continue;
                }
                merges.push(text.as_bytes());
                merge_ranks.push(rank as u32);
            }
        }

        let mut vocab = Vocab {
            kind,
            model,
            pre,
            ids: Index::build(&texts, Duplicates::KeepLast),
            merge_index: Index::build(&merges, Duplicates::KeepFirst),
            merge_ranks,
            texts,
            scores,
            attrs,
            merges,
            special,
            eog: BTreeSet::new(),
            flags,
            specials_by_length: Vec::new(),
            pieces: Arena::default(),
        };
        vocab.read_special_ids(file)?;
        vocab.find_special_tokens();
        vocab.specials_by_length = (0..n as TokenId)
            .filter(|&id| {
                vocab.attrs[id as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .collect();
        // Longest first; among equals, by id, so that the order does not depend on a sort.
        vocab
            .specials_by_length
            .sort_by_key(|&id| std::cmp::Reverse(vocab.texts.get(id).len()));
        let mut pieces = Arena::with_capacity(n as usize, n as usize * 8);
        for id in 0..n as TokenId {
            pieces.push(&vocab.piece_of(id));
        }
        vocab.pieces = pieces;
        vocab.set_model_attributes(file)?;
        Ok(vocab)
    }

    /// The ids the file names (ids outside the vocabulary are ignored, as llama.cpp does with
    /// a warning), and the add_* options it sets.
    fn read_special_ids(&mut self, file: &GgufFile<'_>) -> Result<(), VocabError> {
        let n = self.texts.len() as u64;
        let s = &mut self.special;
        for id in [&mut s.bos, &mut s.eos, &mut s.unk] {
            if id.is_some_and(|i| u64::from(i) >= n) {
                *id = None;
            }
        }
        type Slot = fn(&mut SpecialTokens) -> &mut Option<TokenId>;
        let keys: [(&str, Slot); 17] = [
            ("bos_token_id", |s| &mut s.bos),
            ("eos_token_id", |s| &mut s.eos),
            ("eot_token_id", |s| &mut s.eot),
            ("eom_token_id", |s| &mut s.eom),
            ("unknown_token_id", |s| &mut s.unk),
            ("seperator_token_id", |s| &mut s.sep),
            ("padding_token_id", |s| &mut s.pad),
            ("mask_token_id", |s| &mut s.mask),
            ("fim_pre_token_id", |s| &mut s.fim_pre),
            ("fim_suf_token_id", |s| &mut s.fim_suf),
            ("fim_mid_token_id", |s| &mut s.fim_mid),
            ("fim_pad_token_id", |s| &mut s.fim_pad),
            ("fim_rep_token_id", |s| &mut s.fim_rep),
            ("fim_sep_token_id", |s| &mut s.fim_sep),
            // Older names.
            ("prefix_token_id", |s| &mut s.fim_pre),
            ("suffix_token_id", |s| &mut s.fim_suf),
            ("middle_token_id", |s| &mut s.fim_mid),
        ];
        for (key, slot) in keys {
            let key = format!("tokenizer.ggml.{key}");
            if let Some(id) = optional(file.u32(&key))? {
                if u64::from(id) < n {
                    *slot(s) = Some(id);
                }
            }
        }
        let f = &mut self.flags;
        for (key, slot) in [
            ("tokenizer.ggml.add_bos_token", &mut f.add_bos),
            ("tokenizer.ggml.add_eos_token", &mut f.add_eos),
            ("tokenizer.ggml.add_sep_token", &mut f.add_sep),
        ] {
            if let Some(v) = optional(file.bool(key))? {
                *slot = v;
            }
        }
        if self.pre.as_ref().is_some_and(|p| p.name == "gemma4") {
            self.flags.add_bos = true;
        }
        Ok(())
    }

    /// End-of-turn, fill-in-the-middle and end-of-generation tokens found by their text; the
    /// tokens found are made control tokens.
    fn find_special_tokens(&mut self) {
        // The lowest id among those the texts name (each text's own id: a duplicate text
        // names the id its lookup gives).
        let by_text = |texts: &[&str], vocab: &Vocab| -> Option<TokenId> {
            texts.iter().filter_map(|t| vocab.id(t)).min()
        };
        let found = [
            (self.special.eot, EOT_TEXTS),
            (self.special.eom, EOM_TEXTS),
            (self.special.fim_pre, FIM_PRE_TEXTS),
            (self.special.fim_suf, FIM_SUF_TEXTS),
            (self.special.fim_mid, FIM_MID_TEXTS),
            (self.special.fim_pad, FIM_PAD_TEXTS),
            (self.special.fim_rep, FIM_REP_TEXTS),
            (self.special.fim_sep, FIM_SEP_TEXTS),
        ]
        .map(|(set, texts)| set.or_else(|| by_text(texts, self)));
        let was = [
            self.special.eot,
            self.special.eom,
            self.special.fim_pre,
            self.special.fim_suf,
            self.special.fim_mid,
            self.special.fim_pad,
            self.special.fim_rep,
            self.special.fim_sep,
        ];
        for (found, was) in found.iter().zip(was) {
            if was.is_none() {
                if let Some(id) = found {
                    self.attrs[*id as usize] |= attr::CONTROL;
                }
            }
        }
        let s = &mut self.special;
        [
            s.eot, s.eom, s.fim_pre, s.fim_suf, s.fim_mid, s.fim_pad, s.fim_rep, s.fim_sep,
        ] = found;

        // Control tokens named "unused" are unused.
        for id in 0..self.texts.len() {
            if self.attrs[id] & attr::CONTROL != 0 && self.text_of(id as TokenId).contains("unused")
            {
                self.attrs[id] |= attr::UNUSED;
            }
        }

        let s = self.special;
        self.eog
            .extend([s.fim_pad, s.fim_rep, s.fim_sep].into_iter().flatten());
        for text in EOG_TEXTS {
            if let Some(id) = self.id(text) {
                self.eog.insert(id);
                self.attrs[id as usize] |= attr::CONTROL;
            }
        }
        // gpt-oss's structural tokens are text the client must see.
        for text in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(id) = self.id(text) {
                self.attrs[id as usize] = attr::USER_DEFINED;
            }
        }
        self.eog.extend([s.eos, s.eot, s.eom].into_iter().flatten());
        // o200k_harmony and solar-open: "<|end|>" ends a message, not the generation.
        let has = |vocab: &Vocab, text: &str| vocab.eog.iter().any(|&id| vocab.text_of(id) == text);
        let harmony = has(self, "<|return|>") && has(self, "<|call|>");
        let solar = (has(self, "<|call|>") || has(self, "<|calls|>")) && has(self, "<|flush|>");
        if harmony || solar {
            if let Some(&end) = self.eog.iter().find(|&&id| self.text_of(id) == "<|end|>") {
                self.eog.remove(&end);
                self.attrs[end as usize] = attr::USER_DEFINED;
            }
        }
        // gemma4 and plamo have a normal "</s>".
        if has(self, "<|tool_response>") || has(self, "<|plamo:eos|>") {
            if let Some(&s_id) = self.eog.iter().find(|&&id| self.text_of(id) == "</s>") {
                self.eog.remove(&s_id);
                self.attrs[s_id as usize] = attr::NORMAL;
            }
        }
    }

    /// Attributes llama.cpp sets by model name: strip white space around some special tokens.
    fn set_model_attributes(&mut self, file: &GgufFile<'_>) -> Result<(), VocabError> {
        let name = optional(file.str("general.name"))?
            .unwrap_or("")
            .to_ascii_lowercase();
        let pre = optional(file.str("tokenizer.ggml.pre"))?.unwrap_or("");
        let arch = optional(file.str("general.architecture"))?.unwrap_or("");
        let set = |vocab: &mut Vocab, text: &str, bit: u16, on: bool| {
            if let Some(id) = vocab.id(text) {
                let a = &mut vocab.attrs[id as usize];
                *a = if on { *a | bit } else { *a & !bit };
            }
        };
        if ["jina-v2-de", "jina-v2-es", "jina-v2-code"]
            .iter()
            .any(|p| pre.contains(p))
            || ["nomic-bert-moe", "jina-bert-v3"]
                .iter()
                .any(|a| arch.contains(a))
        {
            set(self, "<mask>", attr::LSTRIP, true);
        } else if name.contains("phi-3") || name.contains("phi3") {
            for id in self.specials_by_length.clone() {
                self.attrs[id as usize] |= attr::RSTRIP;
            }
            set(self, "</s>", attr::RSTRIP, true);
            for text in ["<unk>", "<s>", "<|endoftext|>"] {
                set(self, text, attr::RSTRIP, false);
            }
        } else if name.contains("modern-bert") {
            set(self, "[MASK]", attr::LSTRIP, true);
        }
        Ok(())
    }

    /// What token `id` reads as, control tokens' text included.
    fn piece_of(&self, id: TokenId) -> Box<[u8]> {
        let text = self.text_of(id);
        let a = self.attrs[id as usize];
        if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
            return text.as_bytes().into();
        }
        if a & attr::NORMAL != 0 {
            if self.kind == Kind::Spm || self.flags.escape_whitespaces {
                return text.replace('\u{2581}', " ").into_bytes().into();
            }
            return byte_decode(text).into();
        }
        if a & attr::BYTE != 0 {
            return byte_token_value(text).map_or(Box::new([]), |b| Box::new([b]));
        }
        Box::new([])
    }

    /// The id of the token spelled `text`.
    pub fn id(&self, text: &str) -> Option<TokenId> {
        self.ids.find(&self.texts, text.as_bytes())
    }

    /// Token `id`'s text (`id` in range; checked UTF-8 at load).
    pub(crate) fn text_of(&self, id: TokenId) -> &str {
        self.texts.get(id)
    }

    /// The rank of the merge spelled `"left right"`.
    pub(crate) fn merge_rank(&self, key: &str) -> Option<u32> {
        self.merge_index
            .find(&self.merges, key.as_bytes())
            .map(|i| self.merge_ranks[i as usize])
    }

    /// What token `id` reads as (`id` in range).
    pub(crate) fn piece_bytes(&self, id: TokenId) -> &[u8] {
        self.pieces.get(id)
    }

    /// The number of tokens.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.len() == 0
    }

    /// How text is cut.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// `tokenizer.ggml.model` as written.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The pre-tokenizer's name, for BPE vocabularies.
    pub fn pre_tokenizer(&self) -> Option<&str> {
        self.pre.as_ref().map(|p| p.name.as_str())
    }

    /// The token's text as the vocabulary spells it.
    pub fn text(&self, id: TokenId) -> Option<&str> {
        ((id as usize) < self.texts.len()).then(|| self.text_of(id))
    }

    /// The token's attribute bits ([`attr`]).
    pub fn attrs(&self, id: TokenId) -> Option<u16> {
        self.attrs.get(id as usize).copied()
    }

    /// The special token ids.
    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }

    /// Tokens that end generation.
    pub fn eog(&self) -> &BTreeSet<TokenId> {
        &self.eog
    }

    /// Tokenization options.
    pub fn flags(&self) -> &Flags {
        &self.flags
    }

    /// Whether a token is a control token (rendered only on request).
    pub fn is_control(&self, id: TokenId) -> bool {
        self.attrs(id).is_some_and(|a| a & attr::CONTROL != 0)
    }

    /// The token for byte `b` in an SPM vocabulary: its `<0xXX>` token, else the one-byte
    /// token.
    pub(crate) fn byte_token(&self, b: u8) -> Option<TokenId> {
        self.id(&format!("<0x{b:02X}>"))
            .or_else(|| std::str::from_utf8(&[b]).ok().and_then(|s| self.id(s)))
    }
}

/// The byte of a `<0xXX>` token.
fn byte_token_value(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// A byte-level BPE token's bytes: each char stands for one byte. A char outside GPT-2's map is
/// written out as llama.cpp writes it.
fn byte_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match crate::unicode::char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).as_bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
    out
}

/// A metadata array of strings, or none.
fn string_array<'a>(
    file: &GgufFile<'a>,
    key: &'static str,
) -> Result<Option<modelhost_protocol::gguf::ArrayView<'a>>, VocabError> {
    let Some(a) = optional(file.array(key))? else {
        return Ok(None);
    };
    if a.elem_type() != ValueType::String {
        return Err(VocabError::ArrayType {
            key,
            expected: "strings",
            found: a.elem_type().to_string(),
        });
    }
    Ok(Some(a))
}

/// The tokens' scores (f32, or i32 as llama.cpp also accepts); zeros when absent.
fn scores(file: &GgufFile<'_>, n: u64) -> Result<Vec<f32>, VocabError> {
    let Some(a) = optional(file.array(SCORES))? else {
        return Ok(vec![0.0; n as usize]);
    };
    if a.len() < n {
        return Err(VocabError::TooShort {
            key: SCORES,
            found: a.len(),
            tokens: n,
        });
    }
    match a.elem_type() {
        ValueType::F32 | ValueType::I32 => Ok(a
            .iter()
            .take(n as usize)
            .map(|v| match v {
                Value::F32(f) => f,
                Value::I32(i) => i as f32,
                _ => 0.0,
            })
            .collect()),
        t => Err(VocabError::ArrayType {
            key: SCORES,
            expected: "f32 or i32",
            found: t.to_string(),
        }),
    }
}

fn token_types(file: &GgufFile<'_>, n: u64) -> Result<Option<Vec<i32>>, VocabError> {
    let Some(a) = optional(file.array(TYPES))? else {
        return Ok(None);
    };
    if a.elem_type() != ValueType::I32 {
        return Err(VocabError::ArrayType {
            key: TYPES,
            expected: "i32",
            found: a.elem_type().to_string(),
        });
    }
    if a.len() < n {
        return Err(VocabError::TooShort {
            key: TYPES,
            found: a.len(),
            tokens: n,
        });
    }
    Ok(Some(
        a.iter()
            .take(n as usize)
            .map(|v| if let Value::I32(i) = v { i } else { 0 })
            .collect(),
    ))
}
