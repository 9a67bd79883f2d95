//! The two merge loops: SentencePiece's (the pair whose merged text is the best-scoring token
//! merges first) and byte-level BPE's (the pair with the lowest merge rank merges first). Both
//! start from one symbol per character and merge neighbours until no pair qualifies; ties go to
//! the leftmost pair, as in llama.cpp.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use crate::vocab::{TokenId, Vocab};

/// A run of the text: `start..start + len` bytes, linked to its neighbours.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of `left` and its right neighbour `right`, whose texts together were
/// `len` bytes when it was queued (a stale candidate no longer adds up).
struct Candidate<P> {
    priority: P,
    left: usize,
    right: usize,
    len: usize,
}

impl<P: Ord> PartialEq for Candidate<P> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<P: Ord> Eq for Candidate<P> {}
impl<P: Ord> PartialOrd for Candidate<P> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<P: Ord> Ord for Candidate<P> {
    fn cmp(&self, other: &Self) -> Ordering {
        // The greatest pops first: higher priority, then the leftmost.
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// An f32 score ordered totally (NaN scores from a bad file sort, they do not panic).
#[derive(Clone, Copy)]
struct Score(f32);
impl PartialEq for Score {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0) == Ordering::Equal
    }
}
impl Eq for Score {}
impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// One symbol per UTF-8 character of `text` (a lone byte where the text is cut mid-character,
/// which `&str` rules out).
fn symbols(text: &str) -> Vec<Symbol> {
    let n = text.chars().count();
    text.char_indices()
        .enumerate()
        .map(|(i, (start, c))| Symbol {
            start,
            len: c.len_utf8(),
            prev: i.checked_sub(1),
            next: (i + 1 < n).then_some(i + 1),
        })
        .collect()
}

/// Merges until no candidate remains; `propose(joined, split)` says whether the pair whose
/// texts are `joined[..split]` and `joined[split..]` may merge, and with what priority.
fn merge_all<P: Ord>(
    text: &str,
    syms: &mut [Symbol],
    mut propose: impl FnMut(&str, usize) -> Option<P>,
) {
    let mut queue = BinaryHeap::new();
    let push = |queue: &mut BinaryHeap<Candidate<P>>,
                syms: &[Symbol],
                left: Option<usize>,
                right: Option<usize>,
                propose: &mut dyn FnMut(&str, usize) -> Option<P>| {
        let (Some(l), Some(r)) = (left, right) else {
            return;
        };
        let (a, b) = (syms[l], syms[r]);
        let joined = &text[a.start..b.start + b.len];
        if let Some(priority) = propose(joined, a.len) {
            queue.push(Candidate {
                priority,
                left: l,
                right: r,
                len: a.len + b.len,
            });
        }
    };
    for i in 1..syms.len() {
        push(&mut queue, syms, Some(i - 1), Some(i), &mut propose);
    }
    while let Some(c) = queue.pop() {
        let (l, r) = (syms[c.left], syms[c.right]);
        if l.len == 0 || r.len == 0 || l.len + r.len != c.len {
            continue;
        }
        syms[c.left].len += r.len;
        syms[c.right].len = 0;
        syms[c.left].next = r.next;
        if let Some(n) = r.next {
            syms[n].prev = Some(c.left);
        }
        push(
            &mut queue,
            syms,
            syms[c.left].prev,
            Some(c.left),
            &mut propose,
        );
        push(
            &mut queue,
            syms,
            Some(c.left),
            syms[c.left].next,
            &mut propose,
        );
    }
}

/// The pieces left after merging, in order.
fn pieces<'t>(text: &'t str, syms: &[Symbol]) -> Vec<&'t str> {
    let mut out = Vec::new();
    let mut at = if syms.is_empty() { None } else { Some(0) };
    while let Some(i) = at {
        out.push(&text[syms[i].start..syms[i].start + syms[i].len]);
        at = syms[i].next;
    }
    out
}

/// SentencePiece BPE over `text` (already with `▁` for spaces). A piece that is not a token
/// is spelled in byte tokens; a byte without one becomes the unknown token (llama.cpp stops
/// with an error there), or nothing in a vocabulary without one.
pub fn spm(vocab: &Vocab, text: &str, out: &mut Vec<TokenId>) {
    let mut syms = symbols(text);
    merge_all(text, &mut syms, |joined, _| {
        vocab.id(joined).map(|id| Score(vocab.scores[id as usize]))
    });
    for piece in pieces(text, &syms) {
        match vocab.id(piece) {
            Some(id) => out.push(id),
            None => {
                for &b in piece.as_bytes() {
                    if let Some(id) = vocab.byte_token(b).or(vocab.special.unk) {
                        out.push(id);
                    }
                }
            }
        }
    }
}

/// Byte-level BPE over one pre-tokenized word (already byte-encoded where the vocabulary is).
/// `key` is a buffer for the `"left right"` lookups.
pub fn bpe(vocab: &Vocab, word: &str, key: &mut String, out: &mut Vec<TokenId>) {
    if let Some(id) = vocab.id(word) {
        // A whole-word token: taken as it is where the vocabulary ignores merges, and for a
        // run of line breaks in gemma4's vocabulary.
        let newlines = vocab.pre_tokenizer() == Some("gemma4") && word.bytes().all(|b| b == b'\n');
        if vocab.flags.ignore_merges || newlines {
            out.push(id);
            return;
        }
    }
    let mut syms = symbols(word);
    merge_all(word, &mut syms, |joined, split| {
        key.clear();
        key.push_str(&joined[..split]);
        key.push(' ');
        key.push_str(&joined[split..]);
        // The lowest rank merges first.
        vocab.merge_rank(key).map(Reverse)
    });
    for piece in pieces(word, &syms) {
        if let Some(id) = vocab.id(piece) {
            out.push(id);
            continue;
        }
        // No token: each byte's token, where there is one. llama.cpp looks up every byte of
        // the piece as a one-byte text (byte-level vocabularies), or as `<0xXX>` (the others).
        for &b in piece.as_bytes() {
            let id = if vocab.flags.byte_encode {
                std::str::from_utf8(&[b]).ok().and_then(|s| vocab.id(s))
            } else {
                vocab.id(&format!("<0x{b:02X}>"))
            };
            out.extend(id);
        }
    }
}
