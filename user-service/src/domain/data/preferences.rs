//! `preferences`: `{theme, notifications, language, timezone}`.

use serde::{Deserialize, Serialize};

use super::{DataSet, check_version, put_valid};
use crate::domain::error::{Error, Result};
use crate::domain::keys::PREFERENCES;

/// Default `language`.
pub const DEFAULT_LANGUAGE: &str = "en";
/// Default `timezone`.
pub const DEFAULT_TIMEZONE: &str = "UTC";

/// Colour scheme.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Theme {
    /// Light.
    Light,
    /// Dark.
    Dark,
    /// Follow the system (default).
    #[default]
    System,
}

/// The stored shape of `preferences`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferencesValue {
    /// Colour scheme.
    pub theme: Theme,
    /// Whether to send notifications.
    pub notifications: bool,
    /// BCP-47 language tag.
    pub language: String,
    /// IANA time zone.
    pub timezone: String,
}

impl Default for PreferencesValue {
    fn default() -> Self {
        Self {
            theme: Theme::System,
            notifications: true,
            language: DEFAULT_LANGUAGE.into(),
            timezone: DEFAULT_TIMEZONE.into(),
        }
    }
}

impl PreferencesValue {
    /// Checks the language and time zone.
    pub fn validate(&self) -> Result<(), String> {
        parse_language(&self.language).map_err(|e| format!("language {e}"))?;
        parse_timezone(&self.timezone).map_err(|e| format!("timezone {e}"))?;
        Ok(())
    }
}

/// A change to preferences; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreferencesPatch {
    /// New theme.
    pub theme: Option<Theme>,
    /// New notifications setting.
    pub notifications: Option<bool>,
    /// New language (already validated).
    pub language: Option<String>,
    /// New time zone (already validated).
    pub timezone: Option<String>,
}

impl PreferencesPatch {
    /// Applies the patch.
    pub fn apply(self, mut prefs: PreferencesValue) -> PreferencesValue {
        if let Some(theme) = self.theme {
            prefs.theme = theme;
        }
        if let Some(notifications) = self.notifications {
            prefs.notifications = notifications;
        }
        if let Some(language) = self.language {
            prefs.language = language;
        }
        if let Some(timezone) = self.timezone {
            prefs.timezone = timezone;
        }
        prefs
    }
}

/// Checks a BCP-47 language tag against the IANA registry (so `xx-YY` and
/// `en_US` are rejected).
pub fn parse_language(tag: &str) -> Result<String, String> {
    let parsed = language_tags::LanguageTag::parse(tag)
        .map_err(|_| "must be a BCP-47 language tag like \"en\" or \"pt-BR\"".to_owned())?;
    parsed.validate().map_err(|_| "must be a registered BCP-47 language tag".to_owned())?;
    Ok(tag.to_owned())
}

/// Checks an IANA time zone name (case-sensitive, as in the tz database).
pub fn parse_timezone(name: &str) -> Result<String, String> {
    name.parse::<chrono_tz::Tz>()
        .map(|_| name.to_owned())
        .map_err(|_| "must be an IANA time zone like \"Europe/Berlin\" or \"UTC\"".to_owned())
}

/// Reads stored preferences, with defaults when unset.
pub fn read(value: Option<&serde_json::Value>) -> PreferencesValue {
    value.and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default()
}

/// Applies a patch to the stored preferences.
pub fn update(set: &mut DataSet, patch: PreferencesPatch, expected: Option<i64>) -> Result<()> {
    check_version(set, PREFERENCES, expected)?;
    let updated = patch.apply(read(set.get(PREFERENCES)));
    let value = serde_json::to_value(updated).map_err(|e| Error::Internal(e.to_string()))?;
    put_valid(set, "preferences", PREFERENCES, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_must_be_registered_tags() {
        for ok in ["en", "pt-BR", "zh-Hant-TW", "de-CH"] {
            assert!(parse_language(ok).is_ok(), "{ok}");
        }
        for bad in ["", "en_US", "xx-YY", "english", "e"] {
            assert!(parse_language(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timezones_must_exist() {
        assert!(parse_timezone("Europe/Berlin").is_ok());
        assert!(parse_timezone("UTC").is_ok());
        assert!(parse_timezone("europe/berlin").is_err());
        assert!(parse_timezone("Mars/Olympus").is_err());
    }
}
