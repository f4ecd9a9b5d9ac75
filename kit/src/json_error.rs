//! serde_json errors told without the values they quote.

/// A serde_json error as a reason that names what was expected but never
/// the value found: serde's own text quotes it (`invalid type: string
/// "ada@example.com", expected u32`), and the values both services parse
/// (webhook payloads, user data) are personal data that must not reach logs
/// or answers. Errors that quote nothing (syntax, missing fields) pass
/// through unchanged.
pub fn reason(error: &serde_json::Error) -> String {
    let message = error.to_string();
    // The last `, expected `: serde puts its expectation after the quoted
    // value, and the value itself may contain that text.
    let expected = |rest: &str| {
        rest.rsplit_once(", expected ").map_or(String::new(), |(_, e)| format!(", expected {e}"))
    };
    for kind in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(kind) {
            // The kind of value (`string`, `integer`, `map`, ...), not the value.
            let found = rest.split([' ', ',']).next().unwrap_or_default();
            return format!("{} ({found}){}", kind.trim_end_matches(": "), expected(rest));
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        return format!("unknown variant{}", expected(rest));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_expectation_but_never_the_value() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        enum Kind {
            A,
        }
        let wrong_type = serde_json::from_value::<u32>(serde_json::json!("ada@example.com")).unwrap_err();
        let text = reason(&wrong_type);
        assert!(text.contains("invalid type (string)") && text.contains("expected u32"), "{text}");
        assert!(!text.contains("ada"), "{text}");
        let sequence = serde_json::from_str::<Vec<String>>(r#""ada@example.com""#).unwrap_err();
        let text = reason(&sequence);
        assert!(text.starts_with("invalid type (string), expected a sequence"), "{text}");
        assert!(!text.contains("ada"), "{text}");
        let variant = serde_json::from_value::<Kind>(serde_json::json!("ada@example.com")).unwrap_err();
        let text = reason(&variant);
        assert!(text.starts_with("unknown variant") && !text.contains("ada"), "{text}");
        let value = serde_json::from_value::<u8>(serde_json::json!(300)).unwrap_err();
        let text = reason(&value);
        assert!(text.starts_with("invalid value (integer)") && !text.contains("300"), "{text}");
    }

    #[test]
    fn a_value_that_contains_the_word_expected_does_not_leak_its_tail() {
        let value = serde_json::json!("ada, expected lovelace@example.com");
        let error = serde_json::from_value::<Vec<String>>(value).unwrap_err();

        let text = reason(&error);

        assert_eq!(text, "invalid type (string), expected a sequence");
    }

    #[test]
    fn errors_quoting_nothing_pass_through() {
        let missing = serde_json::from_value::<(u32, u32)>(serde_json::json!([1])).unwrap_err();
        assert_eq!(reason(&missing), missing.to_string());
        let syntax = serde_json::from_str::<Vec<String>>("[").unwrap_err();
        assert_eq!(reason(&syntax), syntax.to_string());
    }
}
