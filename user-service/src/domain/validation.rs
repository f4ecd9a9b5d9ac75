//! Field-level validation that collects every problem of a request at once, so
//! a caller learns about all bad fields in one round trip.

use crate::domain::error::Error;

/// One bad field: its path in the request (e.g. `user.email`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Dotted path of the field in the request message.
    pub field: String,
    /// Human-readable reason.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field` for `description`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self { field: field.into(), description: description.into() }
    }
}

/// Most violations reported for one request. The rest are summed up in one
/// more entry: the details travel in HTTP/2 trailers, which are small, and a
/// caller learns as much from 20 as from 100,000.
pub const MAX_REPORTED: usize = 20;

/// Accumulates violations while a request is parsed.
#[derive(Debug, Default)]
pub struct Violations {
    list: Vec<FieldViolation>,
    /// Violations past [`MAX_REPORTED`]: how many, and the first one's field.
    omitted: Option<(usize, String)>,
}

impl Violations {
    /// Records a violation.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        if self.list.len() < MAX_REPORTED {
            self.list.push(FieldViolation::new(field, description));
        } else {
            let (count, _) = self.omitted.get_or_insert_with(|| (0, field.into()));
            *count += 1;
        }
    }

    fn into_error(mut self) -> Error {
        if let Some((count, field)) = self.omitted.take() {
            self.list.push(FieldViolation::new(field, format!("and {count} more violations, not listed")));
        }
        Error::InvalidArgument(self.list)
    }

    /// Runs a check and records its error under `field`, keeping the value when
    /// it passes.
    pub fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|reason| self.add(field, reason)).ok()
    }

    /// The parsed value when no violation was recorded, otherwise
    /// `InvalidArgument` with all of them. Every check that yields `None`
    /// records a violation, so `None` with none recorded is a bug.
    pub fn finish_parsed<T>(self, parsed: Option<T>) -> Result<T, Error> {
        match (self.list.is_empty(), parsed) {
            (true, Some(value)) => Ok(value),
            (true, None) => {
                Err(Error::Internal("a request field failed to parse without a violation".into()))
            }
            (false, _) => Err(self.into_error()),
        }
    }

    /// `Ok(value)` when no violation was recorded, otherwise `InvalidArgument`
    /// with all of them.
    pub fn finish<T>(self, value: impl FnOnce() -> T) -> Result<T, Error> {
        if self.list.is_empty() { Ok(value()) } else { Err(self.into_error()) }
    }
}

/// Rejects control characters, which have no place in names, ids or emails and
/// tend to break logs and terminals downstream.
pub fn no_control_chars(value: &str) -> Result<(), String> {
    match value.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!("must not contain control characters (found U+{:04X})", c as u32)),
        None => Ok(()),
    }
}

/// Checks a free-text value: non-empty after trimming, at most `max` characters,
/// no control characters.
pub fn text(value: &str, max: usize) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err("must not be empty or only whitespace".into());
    }
    let len = value.chars().count();
    if len > max {
        return Err(format!("must be at most {max} characters (got {len})"));
    }
    no_control_chars(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_rejects_empty_long_and_control_characters() {
        assert!(text("", 5).is_err());
        assert!(text("   ", 5).is_err());
        assert!(text("abcdef", 5).is_err());
        assert!(text("a\u{0}b", 5).is_err());
        assert!(text("Zoë", 5).is_ok());
    }

    #[test]
    fn past_the_limit_violations_are_summed_up() {
        let mut v = Violations::default();
        for i in 0..1000 {
            v.add(format!("ids[{i}]"), "bad");
        }
        match v.finish(|| ()) {
            Err(Error::InvalidArgument(list)) => {
                assert_eq!(list.len(), MAX_REPORTED + 1);
                assert_eq!(list[MAX_REPORTED].field, format!("ids[{MAX_REPORTED}]"));
                assert!(list[MAX_REPORTED].description.contains("980 more"));
            }
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn violations_are_all_reported_together() {
        let mut v = Violations::default();
        v.add("a", "bad");
        v.add("b", "worse");
        match v.finish(|| ()) {
            Err(Error::InvalidArgument(list)) => assert_eq!(list.len(), 2),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }
}
