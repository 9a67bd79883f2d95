//! Stop strings, matched on the text as it streams: text that might be the start of a stop
//! string is held back until the next token settles it, so a client never sees part of a stop
//! string, nor the text after one.

/// The matcher of one request.
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received and not yet released.
    held: String,
}

/// What a piece of text resolves to.
#[derive(Debug, PartialEq, Eq)]
pub struct Released {
    /// Text the client may see now.
    pub text: String,
    /// A stop string was found; `text` ends where it began.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Takes the next piece of text.
    pub fn push(&mut self, text: &str) -> Released {
        self.held.push_str(text);
        // The earliest stop string wins.
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let text = self.held[..at].to_owned();
            self.held.clear();
            return Released {
                text,
                stopped: true,
            };
        }
        // Hold back the longest tail that begins some stop string.
        let keep = self
            .stops
            .iter()
            .map(|s| partial_suffix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let text = self.held[..cut].to_owned();
        self.held.drain(..cut);
        Released {
            text,
            stopped: false,
        }
    }

    /// The end of the stream: what was held back was not a stop string after all.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// The length of the longest proper prefix of `stop` that `text` ends with, on a character
/// boundary of both.
fn partial_suffix(text: &str, stop: &str) -> usize {
    let max = stop.len().saturating_sub(1).min(text.len());
    (1..=max)
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n)
                && stop.is_char_boundary(n)
                && text.ends_with(&stop[..n])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_stop_string_split_over_tokens_is_held_then_cut() {
        let mut m = StopMatcher::new(vec!["\nUser:".into()]);
        assert_eq!(m.push("Hello").text, "Hello");
        let r = m.push(" there\nUs");
        assert_eq!((r.text.as_str(), r.stopped), (" there", false));
        let r = m.push("er: more");
        assert_eq!((r.text.as_str(), r.stopped), ("", true));
    }

    #[test]
    fn held_text_that_is_no_stop_is_released() {
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("a ST").text, "a ");
        assert_eq!(m.push("OOP").text, "STOOP");
        assert_eq!(m.push("ST").text, "");
        assert_eq!(m.finish(), "ST");
    }

    #[test]
    fn the_earliest_of_several_stops_wins_and_unicode_is_whole() {
        let mut m = StopMatcher::new(vec!["b".into(), "é!".into(), String::new()]);
        let r = m.push("xé!ab");
        assert_eq!((r.text.as_str(), r.stopped), ("x", true));
        let mut m = StopMatcher::new(vec!["éé".into()]);
        assert_eq!(m.push("aé").text, "a");
        assert_eq!(m.finish(), "é");
    }

    proptest! {
        /// However the text is split, what is released is the text up to the first stop string
        /// (or all of it), and nothing after a stop.
        #[test]
        fn splitting_does_not_change_the_result(text in "[ab\\n:é]{0,40}", cuts in prop::collection::vec(0usize..40, 0..8)) {
            let stops = vec!["\n:".to_owned(), "bé".to_owned()];
            let expect = {
                let at = stops.iter().filter_map(|s| text.find(s.as_str())).min();
                at.map_or(text.clone(), |at| text[..at].to_owned())
            };
            let mut bounds: Vec<usize> = cuts.into_iter().filter(|&c| c < text.len() && text.is_char_boundary(c)).collect();
            bounds.push(text.len());
            bounds.sort_unstable();
            let mut m = StopMatcher::new(stops);
            let (mut out, mut start, mut stopped) = (String::new(), 0, false);
            for b in bounds {
                let r = m.push(&text[start..b]);
                out.push_str(&r.text);
                start = b;
                if r.stopped { stopped = true; break; }
            }
            if !stopped { out.push_str(&m.finish()); }
            prop_assert_eq!(out, expect);
        }
    }
}
