//! The character classes the pre-tokenizers split on: each code point's general category
//! (letter, number, punctuation, symbol, mark, separator, control, unassigned) from the
//! Unicode Character Database 15.1, the version llama.cpp's tables come from, plus the
//! White_Space property.

mod table;

use std::sync::OnceLock;

/// A code point's class and whether it is white space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(u16);

impl Flags {
    // 0x08 is a separator that is not white space: no splitter asks for it.
    const UNASSIGNED: u16 = 0x01;
    const NUMBER: u16 = 0x02;
    const LETTER: u16 = 0x04;
    const MARK: u16 = 0x10;
    const PUNCTUATION: u16 = 0x20;
    const SYMBOL: u16 = 0x40;
    const CONTROL: u16 = 0x80;
    const WHITESPACE: u16 = 0x100;

    /// No code point: what the splitters see past the end of a segment.
    pub const NONE: Flags = Flags(0);

    pub fn is_letter(self) -> bool {
        self.0 & Self::LETTER != 0
    }
    pub fn is_number(self) -> bool {
        self.0 & Self::NUMBER != 0
    }
    pub fn is_mark(self) -> bool {
        self.0 & Self::MARK != 0
    }
    pub fn is_punctuation(self) -> bool {
        self.0 & Self::PUNCTUATION != 0
    }
    pub fn is_symbol(self) -> bool {
        self.0 & Self::SYMBOL != 0
    }
    pub fn is_whitespace(self) -> bool {
        self.0 & Self::WHITESPACE != 0
    }
    pub fn is_control(self) -> bool {
        self.0 & Self::CONTROL != 0
    }
    /// A code point at all (past the end of a segment is none).
    pub fn is_some(self) -> bool {
        self.0 != 0
    }
}

/// The classes of every code point, one byte each, built on first use (1.1 MB).
fn classes() -> &'static [u8] {
    static CLASSES: OnceLock<Vec<u8>> = OnceLock::new();
    CLASSES.get_or_init(|| {
        let mut all = vec![Flags::UNASSIGNED as u8; 0x11_0000];
        let runs = &table::RUNS;
        for (i, &(start, class)) in runs.iter().enumerate() {
            let end = runs.get(i + 1).map_or(0x11_0000, |r| r.0);
            all[start as usize..end as usize].fill(class);
        }
        all
    })
}

/// The flags of `c`.
#[inline]
pub fn flags(c: char) -> Flags {
    let class = u16::from(classes()[c as usize]);
    // White_Space, the property llama.cpp's `\s` and its splitters test, is what
    // `char::is_whitespace` implements.
    if c.is_whitespace() {
        Flags(class | Flags::WHITESPACE)
    } else {
        Flags(class)
    }
}

/// GPT-2's map from bytes to printable characters: a byte-level BPE vocabulary spells every
/// byte as one of these, so that its tokens are printable text.
pub fn byte_to_char(b: u8) -> char {
    BYTE_CHARS.get_or_init(build_byte_chars).0[b as usize]
}

/// The inverse of [`byte_to_char`].
pub fn char_to_byte(c: char) -> Option<u8> {
    let (_, back) = BYTE_CHARS.get_or_init(build_byte_chars);
    back.get(c as usize).copied().flatten()
}

static BYTE_CHARS: OnceLock<([char; 256], Vec<Option<u8>>)> = OnceLock::new();

fn build_byte_chars() -> ([char; 256], Vec<Option<u8>>) {
    // The printable Latin-1 bytes stand for themselves; the others (controls, space, the soft
    // hyphen) take the code points from 256 up, in byte order.
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut chars = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        chars[b as usize] = if printable(b) {
            char::from(b)
        } else {
            let c = char::from_u32(next).expect("below the surrogates");
            next += 1;
            c
        };
    }
    let mut back = vec![None; 512];
    for (b, c) in chars.iter().enumerate() {
        back[*c as usize] = Some(b as u8);
    }
    (chars, back)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_of_a_few_code_points() {
        assert!(flags('a').is_letter() && !flags('a').is_whitespace());
        assert!(flags('7').is_number());
        assert!(flags('½').is_number());
        assert!(flags('!').is_punctuation());
        assert!(flags('$').is_symbol() && flags('+').is_symbol());
        assert!(flags(' ').is_whitespace() && !flags(' ').is_letter());
        assert!(flags('\u{3000}').is_whitespace());
        assert!(flags('\u{0301}').is_mark());
        assert!(flags('\u{85}').is_control() && flags('\u{85}').is_whitespace());
        assert!(flags('中').is_letter());
        // Unassigned in 15.1 (assigned in 16.0): still unassigned here, as in llama.cpp.
        assert!(!flags('\u{0897}').is_mark() && flags('\u{0897}').is_some());
        assert!(flags('\u{E000}').is_control());
    }

    #[test]
    fn byte_map_is_gpt2s() {
        assert_eq!(byte_to_char(b'A'), 'A');
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(0xAD), 'Ń');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(char_to_byte('中'), None);
    }
}
