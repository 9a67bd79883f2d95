//! The splitters: each refines a list of segments of a text into smaller ones. The common
//! patterns (GPT-2's, Llama 3's, Qwen 2's and 3.5's) are hand-written state machines over the
//! code points, as llama.cpp has them, because they run on every request; the rest are regular
//! expressions, run the way llama.cpp runs them (see [`Split::Regex`]).

use std::ops::Range;

use fancy_regex::Regex;

use crate::unicode::{flags, Flags};

/// A text as code points, with their classes and where each starts in the UTF-8 bytes.
pub struct Chars {
    pub chars: Vec<char>,
    pub flags: Vec<Flags>,
    /// `starts[i]` is the byte offset of char `i`; one more entry holds the text's length.
    pub starts: Vec<usize>,
}

impl Chars {
    pub fn new(text: &str) -> Chars {
        let n = text.len();
        let mut chars = Vec::with_capacity(n);
        let mut starts = Vec::with_capacity(n + 1);
        for (at, c) in text.char_indices() {
            chars.push(c);
            starts.push(at);
        }
        starts.push(n);
        let flags = chars.iter().map(|&c| flags(c)).collect();
        Chars {
            chars,
            flags,
            starts,
        }
    }
}

/// One pre-tokenization step.
pub enum Split {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    Gpt2,
    /// Llama 3's pattern and its relatives: contractions in either case, an optional non-letter
    /// before letters (`marks`: letters and combining marks), numbers in runs of up to three
    /// (`digit_runs`) or one by one, punctuation runs with trailing line breaks, line breaks
    /// with the white space before them, white space.
    Llama3 { digit_runs: bool, marks: bool },
    /// `[^\n]+|[\n]+`
    Newlines,
    /// Digit runs split in threes from the right; the text before a run joins its first group.
    DigitGroups,
    /// A regular expression, with the parts between matches kept as segments too.
    Regex { regex: Regex, input: RegexInput },
}

/// What text a regular expression runs on. llama.cpp runs C++ `std::regex` on bytes, so it
/// rewrites texts and patterns to keep one byte per code point; the same rewriting keeps its
/// results here, where the engine is Rust's.
pub enum RegexInput {
    /// Patterns with Unicode classes (`\p{L}`...): every code point above ASCII becomes a
    /// stand-in for its class (or a vertical tab, for white space), and each `\p{..}` in the
    /// pattern becomes its stand-in plus the ASCII characters of the class.
    Collapsed,
    /// Patterns without classes: the text as it is, but with non-ASCII white space as a
    /// vertical tab (C++'s `\s` matches ASCII white space only).
    Plain,
    /// Patterns llama.cpp answers with its own code that this crate expresses as the model's
    /// original regular expression (Kimi K2's): the text as it is, with Rust's Unicode classes.
    Original,
}

/// Splits every segment of `segments` (ranges of char indices) with `split`.
pub fn apply(split: &Split, text: &Chars, segments: &[Range<usize>]) -> Vec<Range<usize>> {
    let mut out = Vec::with_capacity(segments.len() * 2);
    for seg in segments {
        let mut cuts = Cuts {
            out: &mut out,
            last: seg.start,
        };
        match split {
            Split::Gpt2 => gpt2(text, seg.clone(), &mut cuts),
            Split::Llama3 { digit_runs, marks } => {
                llama3(text, seg.clone(), *digit_runs, *marks, &mut cuts)
            }
            Split::Newlines => newlines(text, seg.clone(), &mut cuts),
            Split::DigitGroups => digit_groups(text, seg.clone(), &mut cuts),
            Split::Regex { regex, input } => {
                regex_split(regex, input, text, seg.clone(), &mut cuts)
            }
        }
        cuts.cut(seg.end);
    }
    out
}

/// Emits segments that end where the splitter says, each from where the last one ended.
struct Cuts<'a> {
    out: &'a mut Vec<Range<usize>>,
    last: usize,
}

impl Cuts<'_> {
    fn cut(&mut self, end: usize) {
        if end > self.last {
            self.out.push(self.last..end);
            self.last = end;
        }
    }
}

/// Char and flags at `i`, or none past the segment.
struct View<'a> {
    text: &'a Chars,
    end: usize,
}

impl View<'_> {
    fn char(&self, i: usize) -> Option<char> {
        (i < self.end).then(|| self.text.chars[i])
    }
    fn flags(&self, i: usize) -> Flags {
        if i < self.end {
            self.text.flags[i]
        } else {
            Flags::NONE
        }
    }
    /// The length of a contraction (`'s`, `'re`...) at `pos`, if one starts there.
    fn contraction(&self, pos: usize, any_case: bool) -> Option<usize> {
        if self.char(pos) != Some('\'') {
            return None;
        }
        let lower = |c: Option<char>| c.map(|c| if any_case { c.to_ascii_lowercase() } else { c });
        let next = lower(self.char(pos + 1))?;
        if matches!(next, 's' | 't' | 'm' | 'd') {
            return Some(2);
        }
        match (next, lower(self.char(pos + 2))?) {
            ('r', 'e') | ('v', 'e') | ('l', 'l') => Some(3),
            _ => None,
        }
    }
    /// How many white-space chars start at `pos`.
    fn spaces(&self, pos: usize) -> usize {
        (pos..self.end)
            .take_while(|&i| self.text.flags[i].is_whitespace())
            .count()
    }
}

fn other(f: Flags) -> bool {
    f.is_some() && !(f.is_whitespace() || f.is_letter() || f.is_number())
}

fn gpt2(text: &Chars, seg: Range<usize>, cuts: &mut Cuts<'_>) {
    let v = View { text, end: seg.end };
    let mut pos = seg.start;
    while pos < seg.end {
        if let Some(n) = v.contraction(pos, false) {
            pos += n;
            cuts.cut(pos);
            continue;
        }
        let c = text.chars[pos];
        // ` ?X+` for letters, numbers and the rest: the class is the one after the space.
        let lead = usize::from(c == ' ');
        let f = v.flags(pos + lead);
        let class: Option<fn(Flags) -> bool> = if f.is_letter() {
            Some(Flags::is_letter)
        } else if f.is_number() {
            Some(Flags::is_number)
        } else if other(f) {
            Some(other)
        } else {
            None
        };
        if let Some(class) = class {
            pos += lead;
            while class(v.flags(pos)) {
                pos += 1;
            }
            cuts.cut(pos);
            continue;
        }
        let n = v.spaces(pos);
        // `\s+(?!\S)`: a run of spaces before text leaves its last one to the text.
        pos += if n > 1 && pos + n < seg.end {
            n - 1
        } else {
            n.max(1)
        };
        cuts.cut(pos);
    }
}

fn llama3(text: &Chars, seg: Range<usize>, digit_runs: bool, marks: bool, cuts: &mut Cuts<'_>) {
    let v = View { text, end: seg.end };
    let wordish = |f: Flags| f.is_letter() || (marks && f.is_mark());
    let rest = |f: Flags| f.is_some() && !(f.is_whitespace() || wordish(f) || f.is_number());
    let line_break = |c: Option<char>| matches!(c, Some('\r' | '\n'));
    let mut pos = seg.start;
    while pos < seg.end {
        if let Some(n) = v.contraction(pos, true) {
            pos += n;
            cuts.cut(pos);
            continue;
        }
        let c = text.chars[pos];
        let f = text.flags[pos];
        // `[^\r\n\p{L}\p{N}]?\p{L}+`
        if !(c == '\r' || c == '\n' || f.is_number()) && (wordish(f) || wordish(v.flags(pos + 1))) {
            pos += 1;
            while wordish(v.flags(pos)) {
                pos += 1;
            }
            cuts.cut(pos);
            continue;
        }
        // `\p{N}{1,3}` or `\p{N}`
        if f.is_number() {
            if digit_runs {
                let mut run = 0;
                while v.flags(pos).is_number() {
                    pos += 1;
                    run += 1;
                    if run == 3 {
                        cuts.cut(pos);
                        run = 0;
                    }
                }
            } else {
                pos += 1;
            }
            cuts.cut(pos);
            continue;
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        let lead = usize::from(c == ' ');
        if rest(v.flags(pos + lead)) {
            pos += lead;
            while rest(v.flags(pos)) {
                pos += 1;
            }
            while line_break(v.char(pos)) {
                pos += 1;
            }
            cuts.cut(pos);
            continue;
        }
        let n = v.spaces(pos);
        // `\s*[\r\n]+`: through the last line break of the run.
        if let Some(last) = (pos..pos + n).rev().find(|&i| line_break(v.char(i))) {
            pos = last + 1;
        } else if n > 1 && pos + n < seg.end {
            // `\s+(?!\S)`
            pos += n - 1;
        } else {
            pos += n.max(1);
        }
        cuts.cut(pos);
    }
}

fn newlines(text: &Chars, seg: Range<usize>, cuts: &mut Cuts<'_>) {
    let mut pos = seg.start;
    while pos < seg.end {
        let newline = text.chars[pos] == '\n';
        while pos < seg.end && (text.chars[pos] == '\n') == newline {
            pos += 1;
        }
        cuts.cut(pos);
    }
}

fn digit_groups(text: &Chars, seg: Range<usize>, cuts: &mut Cuts<'_>) {
    let mut pos = seg.start;
    while pos < seg.end {
        if !text.flags[pos].is_number() {
            pos += 1;
            continue;
        }
        let start = pos;
        while pos < seg.end && text.flags[pos].is_number() {
            pos += 1;
        }
        // The first group takes the one or two digits over a multiple of three, and the text
        // before the run with them (or with the first full group).
        let mut at = start + (pos - start) % 3;
        if at > start {
            cuts.cut(at);
        }
        while at < pos {
            at += 3;
            cuts.cut(at);
        }
    }
}

/// The stand-in of each class in a collapsed text, as llama.cpp chooses them (one byte above
/// ASCII each; here a private-use char so that the text stays a Rust string).
pub(crate) mod stand_in {
    pub const OTHER: char = '\u{E0D0}';
    pub const NUMBER: char = '\u{E0D1}';
    pub const LETTER: char = '\u{E0D2}';
    pub const PUNCTUATION: char = '\u{E0D3}';
    pub const MARK: char = '\u{E0D4}';
    pub const SYMBOL: char = '\u{E0D5}';
}

fn collapse(c: char, f: Flags) -> char {
    if c.is_ascii() {
        c
    } else if f.is_whitespace() {
        '\u{0B}'
    } else if f.is_number() {
        stand_in::NUMBER
    } else if f.is_letter() {
        stand_in::LETTER
    } else if f.is_punctuation() {
        stand_in::PUNCTUATION
    } else if f.is_mark() {
        stand_in::MARK
    } else if f.is_symbol() {
        stand_in::SYMBOL
    } else {
        stand_in::OTHER
    }
}

fn regex_split(
    regex: &Regex,
    input: &RegexInput,
    text: &Chars,
    seg: Range<usize>,
    cuts: &mut Cuts<'_>,
) {
    // The segment as the pattern sees it, and the char index of each of its bytes.
    let mut s = String::with_capacity(seg.len());
    let mut char_at = Vec::with_capacity(seg.len() + 1);
    for i in seg.clone() {
        let (c, f) = (text.chars[i], text.flags[i]);
        let c = match input {
            RegexInput::Collapsed => collapse(c, f),
            RegexInput::Plain if !c.is_ascii() && f.is_whitespace() => '\u{0B}',
            _ => c,
        };
        s.push(c);
        char_at.resize(s.len(), i);
    }
    char_at.push(seg.end);
    let mut at = 0;
    while at <= s.len() {
        let m = match regex.find_from_pos(&s, at) {
            Ok(Some(m)) => m,
            // No match, or a pattern that gave up (its backtracking limit): the rest stays whole.
            Ok(None) | Err(_) => break,
        };
        cuts.cut(char_at[m.start()]);
        cuts.cut(char_at[m.end()]);
        // An empty match splits without consuming: step over one char.
        at = if m.end() > m.start() {
            m.end()
        } else {
            match s[m.end()..].chars().next() {
                Some(c) => m.end() + c.len_utf8(),
                None => break,
            }
        };
    }
}
