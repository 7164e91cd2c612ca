//! Stop strings matched across token boundaries.

use crate::thinking::partial_suffix;

/// Watches answer text for stop strings, holding back text that could be the start of one.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

/// What feeding text to a [`StopMatcher`] produced.
#[derive(Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Text safe to emit; no stop string yet.
    Continue(String),
    /// A stop string matched: emit this text (everything before the match) and stop.
    Stopped(String),
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Feeds answer text.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome::Continue(text.to_string());
        }
        self.pending.push_str(text);
        let first_match = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first_match {
            let before = self.pending[..at].to_string();
            self.pending.clear();
            return StopOutcome::Stopped(before);
        }
        let keep = self
            .stops
            .iter()
            .map(|s| partial_suffix(&self.pending, s))
            .max()
            .unwrap_or(0);
        let emit: String = self.pending.drain(..self.pending.len() - keep).collect();
        StopOutcome::Continue(emit)
    }

    /// Releases held-back text when generation ends for another reason.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_string_split_over_tokens_is_found_and_not_emitted() {
        let mut m = StopMatcher::new(&["STOP".into()]);
        assert_eq!(m.push("hello S"), StopOutcome::Continue("hello ".into()));
        assert_eq!(m.push("TO"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("P and more"), StopOutcome::Stopped("".into()));
    }

    #[test]
    fn false_starts_are_released() {
        let mut m = StopMatcher::new(&["\n\n".into(), "END".into()]);
        assert_eq!(m.push("a\n"), StopOutcome::Continue("a".into()));
        assert_eq!(m.push("b EN"), StopOutcome::Continue("\nb ".into()));
        assert_eq!(m.finish(), "EN");
    }

    #[test]
    fn earliest_of_several_matches_wins() {
        let mut m = StopMatcher::new(&["zz".into(), "y".into()]);
        assert_eq!(m.push("xx y zz"), StopOutcome::Stopped("xx ".into()));
    }

    #[test]
    fn no_stops_passes_everything() {
        let mut m = StopMatcher::new(&[String::new()]);
        assert_eq!(m.push("abc"), StopOutcome::Continue("abc".into()));
    }
}
