//! Text to token ids and back, from the vocabulary a GGUF carries, with llama.cpp's rules, so
//! that a prompt becomes the ids llama.cpp would give the same model. No I/O: the caller
//! parses the file and hands over its metadata.
//!
//! - [`vocab`]: the vocabulary and its options, read and checked.
//! - [`pretokenize`]: how byte-level BPE vocabularies cut text into words, per
//!   `tokenizer.ggml.pre`.
//! - [`Tokenizer::encode`]: special tokens first (only the ones the caller allows), then
//!   SentencePiece or BPE merging.
//! - [`Tokenizer::decode`] and [`StreamDecoder`]: ids back to text, whole or as they come.

pub mod chat;
mod hash;
mod merge;
pub mod pretokenize;
mod strings;
pub mod unicode;
pub mod vocab;

use std::ops::Range;

use modelhost_protocol::gguf::GgufFile;

use vocab::attr;
pub use vocab::{Kind, SpecialTokens, TokenId, Vocab, VocabError};

/// A vocabulary ready to tokenize.
pub struct Tokenizer {
    vocab: Vocab,
}

/// An id that is not in the vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("token id {id} is outside the vocabulary of {size} tokens")]
pub struct UnknownToken {
    pub id: TokenId,
    pub size: usize,
}

/// A piece of the text being tokenized: text still to cut, or a special token found in it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fragment {
    Text(Range<usize>),
    Token(TokenId),
}

impl Tokenizer {
    /// The tokenizer of a GGUF file's vocabulary.
    pub fn from_gguf(file: &GgufFile<'_>) -> Result<Tokenizer, VocabError> {
        Ok(Tokenizer {
            vocab: Vocab::from_gguf(file)?,
        })
    }

    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// The ids of `text`. `add_special` adds the BOS/EOS/SEP tokens the vocabulary asks for;
    /// `parse_special` lets control tokens written in the text (`<end_of_turn>`) be those
    /// tokens. Without it, only user-defined tokens are matched as wholes, and request text
    /// cannot inject a control token.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<TokenId> {
        let v = &self.vocab;
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        let fragments = self.partition(text, parse_special);
        let bos = v.special.bos.filter(|_| add_special && v.flags.add_bos);
        out.extend(bos);
        match v.kind {
            Kind::Spm => {
                // SentencePiece puts a space before text that starts the prompt or follows a
                // special token.
                let mut after_special = true;
                let mut buf = String::new();
                for f in &fragments {
                    match f {
                        Fragment::Text(r) => {
                            buf.clear();
                            if v.flags.add_space_prefix && after_special {
                                buf.push(' ');
                            }
                            buf.push_str(&text[r.clone()]);
                            let escaped = buf.replace(' ', "\u{2581}");
                            merge::spm(v, &escaped, &mut out);
                            after_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(*id);
                            after_special = true;
                        }
                    }
                }
            }
            Kind::Bpe => {
                let pre = v
                    .pre
                    .as_ref()
                    .expect("a BPE vocabulary has a pre-tokenizer");
                let mut key = String::new();
                let mut word = String::new();
                for f in &fragments {
                    match f {
                        Fragment::Text(r) => {
                            let piece = &text[r.clone()];
                            let escaped;
                            let piece = if v.flags.escape_whitespaces {
                                escaped = piece.replace(' ', "\u{2581}");
                                escaped.as_str()
                            } else {
                                piece
                            };
                            for w in pre.words(piece) {
                                word.clear();
                                if v.flags.byte_encode {
                                    word.extend(piece[w].bytes().map(crate::unicode::byte_to_char));
                                } else {
                                    word.push_str(&piece[w]);
                                }
                                merge::bpe(v, &word, &mut key, &mut out);
                            }
                        }
                        Fragment::Token(id) => out.push(*id),
                    }
                }
            }
        }
        if add_special {
            if v.flags.add_eos {
                out.extend(v.special.eos);
            }
            if v.kind == Kind::Bpe && v.flags.add_sep {
                out.extend(v.special.sep);
            }
        }
        out
    }

    /// Cuts `text` at the special tokens it contains, longest tokens first (control and
    /// unknown tokens only with `parse_special`), stripping white space beside tokens that ask
    /// for it.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let v = &self.vocab;
        let mut frags = if text.is_empty() {
            Vec::new()
        } else {
            vec![Fragment::Text(0..text.len())]
        };
        for &id in &v.specials_by_length {
            let a = v.attrs[id as usize];
            if !parse_special && a & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            let tok = v.text_of(id);
            // Skip the token unless it occurs at all (one scan of the text).
            if !text.contains(tok) {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Text(mut r) = f else {
                    next.push(f);
                    continue;
                };
                while let Some(at) = text[r.clone()].find(tok).map(|i| r.start + i) {
                    let mut left = r.start..at;
                    if a & attr::LSTRIP != 0 {
                        while left.end > left.start
                            && text.as_bytes()[left.end - 1].is_ascii_whitespace()
                        {
                            left.end -= 1;
                        }
                    }
                    if !left.is_empty() {
                        next.push(Fragment::Text(left));
                    }
                    next.push(Fragment::Token(id));
                    r.start = at + tok.len();
                    if a & attr::RSTRIP != 0 {
                        while r.start < r.end && text.as_bytes()[r.start].is_ascii_whitespace() {
                            r.start += 1;
                        }
                    }
                }
                if !r.is_empty() {
                    next.push(Fragment::Text(r));
                }
            }
            frags = next;
        }
        frags
    }

    /// What `id` reads as. Control and unknown tokens read as nothing unless `special`.
    pub fn piece(&self, id: TokenId, special: bool) -> Result<&[u8], UnknownToken> {
        let v = &self.vocab;
        let a = *v
            .attrs
            .get(id as usize)
            .ok_or(UnknownToken { id, size: v.len() })?;
        if !special && a & (attr::CONTROL | attr::UNKNOWN) != 0 {
            return Ok(&[]);
        }
        Ok(v.piece_bytes(id))
    }

    /// The text of `ids`, as llama.cpp's detokenizer writes it: `remove_special` drops the
    /// BOS/EOS the vocabulary adds; `special` renders control tokens. The bytes may end
    /// inside a character where the ids do; see [`StreamDecoder`] for text.
    pub fn decode(
        &self,
        ids: &[TokenId],
        remove_special: bool,
        special: bool,
    ) -> Result<Vec<u8>, UnknownToken> {
        let v = &self.vocab;
        let mut ids = ids;
        let mut strip_space = v.flags.add_space_prefix;
        if remove_special && v.flags.add_bos {
            if let (Some(&first), Some(bos)) = (ids.first(), v.special.bos) {
                if first == bos {
                    strip_space = false;
                    ids = &ids[1..];
                }
            }
        }
        if remove_special && v.flags.add_eos {
            if let (Some(&last), Some(eos)) = (ids.last(), v.special.eos) {
                if last == eos {
                    ids = &ids[..ids.len() - 1];
                }
            }
        }
        let mut out = Vec::new();
        for &id in ids {
            let mut piece = self.piece(id, special)?;
            if strip_space {
                piece = piece.strip_prefix(b" ").unwrap_or(piece);
            }
            strip_space = false;
            out.extend_from_slice(piece);
        }
        if v.flags.clean_spaces {
            clean_spaces(&mut out);
        }
        Ok(out)
    }
}

/// The clean-up of `clean_up_tokenization_spaces`, in llama.cpp's three passes: no space
/// before `?!.,`; none around a lone apostrophe; none before `'s`, `'m`, `'re`, `'ve`.
/// [`Tokenizer::decode`] applies it where the vocabulary asks (`Flags::clean_spaces`); the
/// streaming decoder does not, as llama.cpp's per-token pieces do not.
pub fn clean_spaces(text: &mut Vec<u8>) {
    let t = std::mem::take(text);
    // First pass.
    let mut a = Vec::with_capacity(t.len());
    for (i, &x) in t.iter().enumerate() {
        if i > 0 && t[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            a.pop();
        }
        a.push(x);
    }
    // Second pass: " ' " becomes "'". The space after is consumed, so it cannot also be the
    // space before the next apostrophe.
    let mut b = Vec::with_capacity(a.len());
    let mut i = 0;
    let mut consumed = usize::MAX;
    while i < a.len() {
        let x = a[i];
        let space_before = i > 0 && a[i - 1] == b' ' && consumed != i - 1;
        if x == b'\'' && space_before && i + 1 < a.len() && a[i + 1] == b' ' {
            b.pop();
            b.push(x);
            consumed = i + 1;
            i += 2;
            continue;
        }
        b.push(x);
        i += 1;
    }
    // Third pass.
    let mut c = Vec::with_capacity(b.len());
    for (i, &x) in b.iter().enumerate() {
        if i > 0 && b[i - 1] == b' ' && x == b'\'' && i + 1 < b.len() {
            let x1 = b[i + 1];
            let x2 = b.get(i + 2).copied();
            let drop = matches!(x1, b's' | b'm')
                || (i + 2 < b.len() && matches!((x1, x2), (b'r', Some(b'e')) | (b'v', Some(b'e'))));
            if drop {
                c.pop();
            }
        }
        c.push(x);
    }
    *text = c;
}

/// Turns ids into text as they arrive: a token that ends inside a UTF-8 character yields
/// nothing until the character completes, byte tokens (`<0xE2>`) are joined into the
/// characters they spell, and only bytes that can never complete (invalid UTF-8) become
/// U+FFFD.
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    special: bool,
    /// Bytes of an unfinished character.
    pending: Vec<u8>,
    /// Whether the next piece is the first (SentencePiece strips its leading space).
    first: bool,
}

impl<'t> StreamDecoder<'t> {
    /// A decoder for a sequence that starts after the prompt (`first`: the generated text is
    /// the start of the text, so SentencePiece's leading space is dropped).
    pub fn new(tokenizer: &'t Tokenizer, special: bool, first: bool) -> StreamDecoder<'t> {
        StreamDecoder {
            tokenizer,
            special,
            pending: Vec::new(),
            first,
        }
    }

    /// The text that `id` completes.
    pub fn push(&mut self, id: TokenId) -> Result<String, UnknownToken> {
        let mut piece = self.tokenizer.piece(id, self.special)?;
        if self.first && self.tokenizer.vocab.flags.add_space_prefix {
            piece = piece.strip_prefix(b" ").unwrap_or(piece);
        }
        // Only the first token loses its space, as in llama.cpp's detokenizer, even when that
        // token was nothing but the space (" a" is "▁" then "▁a").
        self.first = false;
        self.pending.extend_from_slice(piece);
        Ok(self.take_complete())
    }

    /// What is left at the end of the sequence (an unfinished character as U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }

    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // SAFETY-free: the prefix was just checked.
                    out.push_str(
                        std::str::from_utf8(&self.pending[..valid]).expect("valid prefix"),
                    );
                    match e.error_len() {
                        // The tail may still complete: keep it.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // Bytes that can never be UTF-8.
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }
}

/// A model's text side: its tokenizer and its chat template, read from its GGUF.
pub struct ModelText {
    tokenizer: Tokenizer,
    template: Result<chat::ChatTemplate, chat::TemplateError>,
}

/// What [`ModelText`] says about a model, for `inspect` and the API.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TextSummary {
    /// `tokenizer.ggml.model`: "llama" (SentencePiece) or "gpt2"/"gemma4" (BPE).
    pub vocabulary: String,
    pub tokens: usize,
    /// The BPE pre-tokenizer.
    pub pre_tokenizer: Option<String>,
    pub bos: Option<TokenId>,
    pub eos: Option<TokenId>,
    /// Tokens that end generation.
    pub end_of_generation: Vec<TokenId>,
    pub add_bos: bool,
    pub add_eos: bool,
    /// Where the chat template comes from, or why it cannot be used.
    pub chat_template: String,
    /// Whether the chat template can be rendered.
    pub chat_template_ok: bool,
}

impl ModelText {
    /// The tokenizer and chat template of a GGUF file. A template that does not compile is
    /// kept as its error (tokenizing still works); a vocabulary that cannot be read is an error.
    pub fn from_gguf(file: &GgufFile<'_>) -> Result<ModelText, VocabError> {
        let tokenizer = Tokenizer::from_gguf(file)?;
        let template = match modelhost_protocol::gguf::optional(file.str("tokenizer.chat_template"))
        {
            Ok(source) => chat::ChatTemplate::for_model(source, Some(tokenizer.vocab())),
            Err(e) => Err(chat::TemplateError(e.to_string())),
        };
        Ok(ModelText {
            tokenizer,
            template,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn template(&self) -> Result<&chat::ChatTemplate, &chat::TemplateError> {
        self.template.as_ref()
    }

    /// The texts templates see as `bos_token` and `eos_token`.
    pub fn bos_eos_texts(&self) -> (&str, &str) {
        let special = self.tokenizer.vocab().special();
        (
            self.special_text(special.bos),
            self.special_text(special.eos),
        )
    }

    /// The text of a special token (for templates' `bos_token`), or "".
    fn special_text(&self, id: Option<TokenId>) -> &str {
        id.and_then(|id| self.tokenizer.vocab().text(id))
            .unwrap_or("")
    }

    /// The prompt text for a conversation, from the model's template.
    pub fn render(
        &self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
        extra: Option<&serde_json::Map<String, serde_json::Value>>,
        now: i64,
    ) -> Result<String, chat::TemplateError> {
        let template = self.template.as_ref().map_err(Clone::clone)?;
        let special = self.tokenizer.vocab().special();
        template.render(&chat::ChatInput {
            messages,
            tools,
            add_generation_prompt,
            bos_token: self.special_text(special.bos),
            eos_token: self.special_text(special.eos),
            extra,
            now,
        })
    }

    /// The ids of a rendered prompt: control tokens in it are parsed, and the BOS the
    /// vocabulary asks for is added unless the template already wrote it (no EOS: the model
    /// is to continue the prompt).
    pub fn encode_prompt(&self, prompt: &str) -> Vec<TokenId> {
        let v = self.tokenizer.vocab();
        let bos = v.special().bos.filter(|_| v.flags().add_bos);
        let written = bos
            .and_then(|id| v.text(id))
            .is_some_and(|t| prompt.starts_with(t));
        let mut ids = Vec::new();
        if !written {
            ids.extend(bos);
        }
        ids.extend(self.tokenizer.encode(prompt, false, true));
        ids
    }

    pub fn summary(&self) -> TextSummary {
        let v = self.tokenizer.vocab();
        let (chat_template, chat_template_ok) = match &self.template {
            Ok(t) => (t.origin.to_string(), true),
            Err(e) => (e.to_string(), false),
        };
        TextSummary {
            vocabulary: v.model().to_owned(),
            tokens: v.len(),
            pre_tokenizer: v.pre_tokenizer().map(str::to_owned),
            bos: v.special().bos,
            eos: v.special().eos,
            end_of_generation: v.eog().iter().copied().collect(),
            add_bos: v.flags().add_bos,
            add_eos: v.flags().add_eos,
            chat_template,
            chat_template_ok,
        }
    }
}
