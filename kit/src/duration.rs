//! The one grammar of every duration flag in both services.
//!
//! A number, an optional space and a unit: `500ms`, `1.5s`, `5 m`, `2h`,
//! `90d`; a bare number counts seconds (`2` is `2s`). Surrounding spaces are
//! ignored. It accepts everything the services' two former parsers accepted
//! (user-service's whole numbers with `ms`/`s`/`m`/`h`/`d`, the gateway's
//! decimals, bare seconds and spaces with `ms`/`s`/`m`/`h`).
//!
//! The number is read as a decimal, not a float, so `0.1s` is exactly 100 ms
//! and whole numbers of any size keep every digit; digits finer than a
//! nanosecond are dropped.

use std::time::Duration;

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// Fraction digits read: more than the 14 that reach a nanosecond of the
/// largest unit (a day), few enough that the arithmetic cannot overflow.
const MAX_FRACTION_DIGITS: usize = 18;

/// What the error messages offer as examples.
const EXAMPLES: &str = "500ms, 1.5s, 5m, 2h or 7d";

/// Parses a duration (see the module documentation); usable as a clap
/// `value_parser`. The error names the text and what was expected.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let nanos_per_unit = match unit.trim_start() {
        "ms" => NANOS_PER_SECOND / 1000,
        "" | "s" => NANOS_PER_SECOND,
        "m" => 60 * NANOS_PER_SECOND,
        "h" => 3600 * NANOS_PER_SECOND,
        "d" => 86_400 * NANOS_PER_SECOND,
        other => {
            return Err(format!(
                "`{text}`: unknown duration unit `{other}` (use ms, s, m, h or d; none means seconds)"
            ));
        }
    };
    let not_a_duration = || format!("`{text}` is not a duration like {EXAMPLES}");
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(not_a_duration());
    }
    let too_long = || format!("`{text}` is too long a duration");
    let whole = whole
        .bytes()
        .try_fold(0u128, |n, digit| n.checked_mul(10)?.checked_add(u128::from(digit - b'0')))
        .ok_or_else(too_long)?;
    let fraction = &fraction[..fraction.len().min(MAX_FRACTION_DIGITS)];
    // Only ASCII digits are left in `fraction`; an empty one is zero.
    let fraction_value: u128 = fraction.parse().unwrap_or(0);
    let scale = 10u128.pow(u32::try_from(fraction.len()).unwrap_or(0));
    let nanos = whole
        .checked_mul(nanos_per_unit)
        .and_then(|n| n.checked_add(fraction_value * nanos_per_unit / scale))
        .ok_or_else(too_long)?;
    let seconds = u64::try_from(nanos / NANOS_PER_SECOND).map_err(|_| too_long())?;
    // The remainder is below one second, so it fits in a u32.
    let subsec = u32::try_from(nanos % NANOS_PER_SECOND).unwrap_or(0);
    Ok(Duration::new(seconds, subsec))
}

/// Like [`parse`], but refuses zero: for intervals and timeouts where zero
/// would mean "spin" or "never wait".
pub fn parse_positive(text: &str) -> Result<Duration, String> {
    match parse(text)? {
        Duration::ZERO => Err(format!("`{}` must be more than zero", text.trim())),
        duration => Ok(duration),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn every_unit_is_understood() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("3s"), Ok(secs(3)));
        assert_eq!(parse("5m"), Ok(secs(300)));
        assert_eq!(parse("2h"), Ok(secs(7200)));
        assert_eq!(parse("7d"), Ok(secs(604_800)));
    }

    #[test]
    fn what_user_service_accepted_still_parses() {
        // README defaults and examples of user-service's flags.
        for (text, expected) in [
            ("3s", secs(3)),
            ("2s", secs(2)),
            ("7d", secs(7 * 86_400)),
            ("48h", secs(48 * 3600)),
            ("3650d", secs(3650 * 86_400)),
            ("90d", secs(90 * 86_400)),
            ("15s", secs(15)),
            ("1s", secs(1)),
            ("10s", secs(10)),
            ("1h", secs(3600)),
            ("0s", Duration::ZERO),
        ] {
            assert_eq!(parse(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn what_the_gateway_accepted_still_parses() {
        assert_eq!(parse("5s"), Ok(secs(5)));
        assert_eq!(parse("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2"), Ok(secs(2)));
        assert_eq!(parse("1m"), Ok(secs(60)));
        assert_eq!(parse("1h"), Ok(secs(3600)));
        assert_eq!(parse("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse(" 5 s "), Ok(secs(5)));
        assert_eq!(parse(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("5."), Ok(secs(5)));
        assert_eq!(parse("20s"), Ok(secs(20)));
    }

    #[test]
    fn decimals_are_exact_to_the_nanosecond() {
        assert_eq!(parse("0.1s"), Ok(Duration::from_millis(100)));
        assert_eq!(parse("1.5d"), Ok(secs(36 * 3600)));
        assert_eq!(parse("0.000000001s"), Ok(Duration::from_nanos(1)));
        assert_eq!(parse("0.0000000019s"), Ok(Duration::from_nanos(1)));
        assert_eq!(parse("0.1234567890123456789012345s"), Ok(Duration::from_nanos(123_456_789)));
        assert_eq!(parse("2.5ms"), Ok(Duration::from_micros(2500)));
    }

    #[test]
    fn malformed_text_is_refused_with_a_reason() {
        for text in ["", " ", "s", ".", "x", "-1s", "+1s", "1.2.3s", "5 hours", "1h30m", "1e3s", "5sec"] {
            let error = parse(text).expect_err(text);
            assert!(error.contains("duration"), "{text}: {error}");
        }
        assert!(parse("5 hours").unwrap_err().contains("unknown duration unit `hours`"));
    }

    #[test]
    fn durations_beyond_the_range_are_refused_not_wrapped() {
        assert_eq!(parse(&format!("{}s", u64::MAX)), Ok(secs(u64::MAX)));
        for text in [format!("{}d", u64::MAX), format!("{}0s", u64::MAX), "9".repeat(60)] {
            assert!(parse(&text).expect_err(&text).contains("too long"), "{text}");
        }
    }

    #[test]
    fn positive_refuses_zero_only() {
        assert!(parse_positive("0s").is_err());
        assert!(parse_positive("0.0ms").is_err());
        assert_eq!(parse_positive("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_positive("0.000000001s"), Ok(Duration::from_nanos(1)));
        assert!(parse_positive("x").is_err());
    }

    #[test]
    fn works_as_a_clap_value_parser() {
        #[derive(clap::Parser)]
        struct Flags {
            #[arg(long, default_value = "90d", value_parser = parse)]
            wait: Duration,
        }
        use clap::Parser as _;
        let flags = Flags::try_parse_from(["x"]).map(|f| f.wait).ok();
        assert_eq!(flags, Some(secs(90 * 86_400)));
        assert!(Flags::try_parse_from(["x", "--wait", "soon"]).is_err());
    }
}
