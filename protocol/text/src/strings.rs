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
    pub fn build(arena: &Arena, duplicates: Duplicates) -> Index {
        let cap = (arena.len() * 2).next_power_of_two().max(16);
        let mut index = Index {
            slots: vec![0; cap],
        };
        let mask = cap - 1;
        for i in 0..arena.len() as u32 {
            let s = arena.get(i);
            let mut at = hash(s) as usize & mask;
            loop {
                match index.slots[at] {
                    0 => {
                        index.slots[at] = i + 1;
                        break;
                    }
                    j if arena.get(j - 1) == s => {
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
    pub fn find(&self, arena: &Arena, s: &[u8]) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut at = hash(s) as usize & mask;
        loop {
            match self.slots[at] {
                0 => return None,
                j if arena.get(j - 1) == s => return Some(j - 1),
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
}
