//! Compact storage for a vocabulary's many short strings: one buffer with the end of each,
//! and an open-addressing index from text to position. A 262,144-token vocabulary takes a few
//! megabytes this way, where a string allocation per token and a map of owned keys take ten
//! times that in every host process holding the model.

use std::hash::Hasher;

use crate::hash::FastHasher;

/// Byte strings, numbered in insertion order.
#[derive(Default)]
pub struct Arena {
    bytes: Vec<u8>,
    /// `ends[i]` is where string `i` ends; it starts where `i - 1` ends.
    ends: Vec<u32>,
}

impl Arena {
    pub fn with_capacity(strings: usize, bytes: usize) -> Arena {
        Arena {
            bytes: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(strings),
        }
    }

    /// Appends a string and returns its number. Panics past 4 GiB of text, which the callers'
    /// inputs (metadata arrays of a parsed file) cannot reach.
    pub fn push(&mut self, s: &[u8]) -> u32 {
        self.bytes.extend_from_slice(s);
        self.ends
            .push(u32::try_from(self.bytes.len()).expect("under 4 GiB of strings"));
        (self.ends.len() - 1) as u32
    }

    pub fn get(&self, i: u32) -> &[u8] {
        let i = i as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.bytes[start..self.ends[i] as usize]
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }
}

/// Strings known to be UTF-8 (a vocabulary's texts), so that each comes back as `&str` without
/// being validated again: the buffer is one `String`, and slicing it at the boundaries pushed
/// checks only those two positions. Reading a token's text is on the tokenizer's hot path.
#[derive(Default)]
pub struct TextArena {
    text: String,
    ends: Vec<u32>,
}

impl TextArena {
    pub fn with_capacity(strings: usize, bytes: usize) -> TextArena {
        TextArena {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(strings),
        }
    }

    /// Appends a string and returns its number; the same 4 GiB bound as [`Arena::push`].
    pub fn push(&mut self, s: &str) -> u32 {
        self.text.push_str(s);
        self.ends
            .push(u32::try_from(self.text.len()).expect("under 4 GiB of strings"));
        (self.ends.len() - 1) as u32
    }

    pub fn get(&self, i: u32) -> &str {
        let i = i as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.text[start..self.ends[i] as usize]
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }
}

/// Numbered strings an [`Index`] can find.
pub trait Strings {
    fn bytes_of(&self, i: u32) -> &[u8];
    fn count(&self) -> usize;
}

impl Strings for Arena {
    fn bytes_of(&self, i: u32) -> &[u8] {
        self.get(i)
    }
    fn count(&self) -> usize {
        self.len()
    }
}

impl Strings for TextArena {
    fn bytes_of(&self, i: u32) -> &[u8] {
        self.get(i).as_bytes()
    }
    fn count(&self) -> usize {
        self.len()
    }
}

fn hash(s: &[u8]) -> u64 {
    let mut h = FastHasher::default();
    h.write(s);
    h.finish()
}

/// Finds strings of an [`Arena`] by their bytes.
#[derive(Default)]
pub struct Index {
    /// Open addressing, linear probing; 0 is empty, `i + 1` is string `i`.
    slots: Vec<u32>,
}

/// What to do when a string is already indexed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Duplicates {
    KeepFirst,
    KeepLast,
}

impl Index {
    /// Indexes every string of `arena`.
    pub fn build(arena: &impl Strings, duplicates: Duplicates) -> Index {
        let cap = (arena.count() * 2).next_power_of_two().max(16);
        let mut index = Index {
            slots: vec![0; cap],
        };
        let mask = cap - 1;
        for i in 0..arena.count() as u32 {
            let s = arena.bytes_of(i);
            let mut at = hash(s) as usize & mask;
            loop {
                match index.slots[at] {
                    0 => {
                        index.slots[at] = i + 1;
                        break;
                    }
                    j if arena.bytes_of(j - 1) == s => {
                        if duplicates == Duplicates::KeepLast {
                            index.slots[at] = i + 1;
                        }
                        break;
                    }
                    _ => at = (at + 1) & mask,
                }
            }
        }
        index
    }

    /// The number of the string equal to `s`.
    #[inline]
    pub fn find(&self, arena: &impl Strings, s: &[u8]) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut at = hash(s) as usize & mask;
        loop {
            match self.slots[at] {
                0 => return None,
                j if arena.bytes_of(j - 1) == s => return Some(j - 1),
                _ => at = (at + 1) & mask,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_was_pushed_and_resolves_duplicates() {
        let mut a = Arena::default();
        for s in ["a", "bb", "", "a", "ccc"] {
            a.push(s.as_bytes());
        }
        let first = Index::build(&a, Duplicates::KeepFirst);
        let last = Index::build(&a, Duplicates::KeepLast);
        assert_eq!(first.find(&a, b"a"), Some(0));
        assert_eq!(last.find(&a, b"a"), Some(3));
        assert_eq!(first.find(&a, b"bb"), Some(1));
        assert_eq!(first.find(&a, b""), Some(2));
        assert_eq!(first.find(&a, b"ccc"), Some(4));
        assert_eq!(first.find(&a, b"d"), None);
        assert_eq!(a.get(4), b"ccc");
    }

    #[test]
    fn text_comes_back_as_pushed() {
        let mut a = TextArena::default();
        for s in ["\u{e9}t\u{e9}", "", "\u{1f600}", "x"] {
            a.push(s);
        }
        let index = Index::build(&a, Duplicates::KeepFirst);
        assert_eq!(
            (0..4).map(|i| a.get(i)).collect::<Vec<_>>(),
            ["\u{e9}t\u{e9}", "", "\u{1f600}", "x"]
        );
        assert_eq!(index.find(&a, "\u{1f600}".as_bytes()), Some(2));
    }
}
