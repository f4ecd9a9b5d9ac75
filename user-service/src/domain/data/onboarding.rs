//! `onboarding_status`: `{step, completed, started_at, completed_at?}`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{DataSet, check_version, put_valid};
use crate::domain::error::{Error, Result};
use crate::domain::{
    keys::ONBOARDING_STATUS,
    time::{iso, parse_time},
};

/// Onboarding steps, in order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// First screen (also: not started).
    #[default]
    Welcome,
    /// Profile.
    Profile,
    /// Preferences.
    Preferences,
    /// Done.
    Complete,
}

/// The stored shape of `onboarding_status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnboardingValue {
    /// The step reached.
    pub step: Step,
    /// True exactly when `step` is `complete`.
    pub completed: bool,
    /// ISO-8601 time of the first advance.
    pub started_at: String,
    /// ISO-8601 time `complete` was reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

impl OnboardingValue {
    /// Checks the invariants the typed RPCs keep.
    pub fn validate(&self) -> Result<(), String> {
        parse_time(&self.started_at).map_err(|e| format!("started_at: {e}"))?;
        if let Some(at) = &self.completed_at {
            parse_time(at).map_err(|e| format!("completed_at: {e}"))?;
        }
        let complete = self.step == Step::Complete;
        if self.completed != complete || self.completed_at.is_some() != complete {
            return Err("completed and completed_at must be set exactly when step is \"complete\"".into());
        }
        Ok(())
    }
}

/// What a read shows: the stored value, or "not started".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The step.
    pub step: Step,
    /// When the first step was taken.
    pub started_at: Option<DateTime<Utc>>,
    /// When `complete` was reached.
    pub completed_at: Option<DateTime<Utc>>,
}

impl Progress {
    /// Reads a stored value (validated on write, so parse failures mean a
    /// value from before validation existed and are treated as unset).
    pub fn from_value(value: Option<&OnboardingValue>) -> Self {
        match value {
            None => Self { step: Step::Welcome, started_at: None, completed_at: None },
            Some(v) => Self {
                step: v.step,
                started_at: parse_time(&v.started_at).ok(),
                completed_at: v.completed_at.as_deref().and_then(|t| parse_time(t).ok()),
            },
        }
    }
}

/// Moves onboarding to `to`. Forward only; the current step again is a no-op
/// (`Ok(None)`), so a retried call succeeds.
pub fn advance(
    current: Option<OnboardingValue>,
    to: Step,
    now: DateTime<Utc>,
) -> Result<Option<OnboardingValue>, String> {
    let started_at = match &current {
        Some(c) if to < c.step => {
            return Err(format!(
                "onboarding is at {:?} and only moves forward (an admin reset starts it over)",
                c.step
            ));
        }
        Some(c) if to == c.step => return Ok(None),
        Some(c) => c.started_at.clone(),
        None => iso(now),
    };
    let complete = to == Step::Complete;
    Ok(Some(OnboardingValue {
        step: to,
        completed: complete,
        started_at,
        completed_at: complete.then(|| iso(now)),
    }))
}

/// Reads the stored value, if any.
pub fn read(value: Option<&serde_json::Value>) -> Option<OnboardingValue> {
    value.and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// Advances the stored onboarding to `to`.
pub fn advance_stored(set: &mut DataSet, to: Step, expected: Option<i64>, now: DateTime<Utc>) -> Result<()> {
    check_version(set, ONBOARDING_STATUS, expected)?;
    match advance(read(set.get(ONBOARDING_STATUS)), to, now).map_err(Error::FailedPrecondition)? {
        Some(value) => {
            let value = serde_json::to_value(value).map_err(|e| Error::Internal(e.to_string()))?;
            put_valid(set, "step", ONBOARDING_STATUS, value)
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_advance_starts_and_complete_completes() {
        let now = Utc::now();
        let first = advance(None, Step::Profile, now).unwrap().unwrap();
        assert!(!first.completed);
        assert!(first.completed_at.is_none());
        let done = advance(Some(first.clone()), Step::Complete, now).unwrap().unwrap();
        assert!(done.completed);
        assert_eq!(done.started_at, first.started_at);
        assert!(done.completed_at.is_some());
        assert!(done.validate().is_ok());
    }

    #[test]
    fn steps_never_move_back_and_repeat_is_a_no_op() {
        let now = Utc::now();
        let at = advance(None, Step::Preferences, now).unwrap().unwrap();
        assert!(advance(Some(at.clone()), Step::Profile, now).is_err());
        assert_eq!(advance(Some(at), Step::Preferences, now), Ok(None));
    }

    #[test]
    fn inconsistent_stored_values_are_rejected() {
        let v = OnboardingValue {
            step: Step::Complete,
            completed: false,
            started_at: "2026-01-01T00:00:00Z".into(),
            completed_at: None,
        };
        assert!(v.validate().is_err());
    }
}
