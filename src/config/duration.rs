//! Durations written by users (`"20s"`, `"500ms"`, `"2m"`, `"1m30s"`):
//! [`parse_duration`] and its inverse [`format_duration`]. A unit is always
//! required, so `"20"` is an error rather than a guess. Knows nothing about
//! which setting the duration belongs to.

use std::time::Duration;

/// Parses one or more `<integer><unit>` groups, units `ms`, `s`, `m`, `h`
/// (`"1m30s"`, `"1h"`, `"0s"`). Spaces between groups are allowed.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err(
            "empty duration: write a number with a unit such as \"20s\" or \"500ms\"".into(),
        );
    }
    let mut rest = s;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits_end == 0 {
            return Err(format!(
                "\"{input}\" is not a duration: write a number with a unit such as \"20s\" or \"500ms\""
            ));
        }
        let (digits, after) = rest.split_at(digits_end);
        if after.starts_with('.') {
            return Err(format!(
                "\"{input}\" has a fraction: use a smaller unit instead (\"1500ms\", not \"1.5s\")"
            ));
        }
        let after = after.trim_start();
        let unit_end = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let value: u64 = digits
            .parse()
            .map_err(|_| format!("\"{input}\" is too long"))?;
        let part = match unit {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.saturating_mul(60)),
            "h" => Duration::from_secs(value.saturating_mul(3600)),
            "" => {
                return Err(format!(
                    "\"{input}\" has no unit: write \"{digits}s\" for seconds (units: ms, s, m, h)"
                ));
            }
            other => {
                return Err(format!(
                    "unknown duration unit \"{other}\" in \"{input}\": use ms, s, m or h"
                ));
            }
        };
        total = total
            .checked_add(part)
            .ok_or_else(|| format!("\"{input}\" is too long"))?;
        rest = after.trim_start();
    }
    Ok(total)
}

/// The shortest exact spelling that [`parse_duration`] reads back
/// (`20s`, `500ms`, `2m`, `1m30s`). Sub-millisecond parts are dropped.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let (h, rem) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rem) = (rem / 60_000, rem % 60_000);
    let (s, ms) = (rem / 1000, rem % 1000);
    for (value, unit) in [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")] {
        if value != 0 {
            out.push_str(&format!("{value}{unit}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_spellings() {
        let cases: &[(&str, u64)] = &[
            ("20s", 20_000),
            ("500ms", 500),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("1m30s", 90_000),
            ("1m 30s", 90_000),
            (" 0s ", 0),
            ("0ms", 0),
        ];
        for (input, ms) in cases {
            assert_eq!(
                parse_duration(input),
                Ok(Duration::from_millis(*ms)),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn rejects_nonsense_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "empty duration"),
            ("20", "has no unit: write \"20s\""),
            ("s", "is not a duration"),
            ("-5s", "is not a duration"),
            ("1.5s", "has a fraction"),
            ("5 sec", "unknown duration unit \"sec\""),
            ("5d", "unknown duration unit \"d\""),
            ("99999999999999999999999s", "too long"),
        ];
        for (input, want) in cases {
            let err = parse_duration(input).expect_err(input);
            assert!(err.contains(want), "input {input:?}: {err}");
        }
    }

    #[test]
    fn format_round_trips() {
        for ms in [0u64, 1, 500, 1000, 20_000, 90_000, 120_000, 3_723_004] {
            let d = Duration::from_millis(ms);
            let shown = format_duration(d);
            assert_eq!(parse_duration(&shown), Ok(d), "{shown}");
        }
        assert_eq!(format_duration(Duration::from_secs(20)), "20s");
        assert_eq!(format_duration(Duration::from_millis(90_500)), "1m30s500ms");
    }
}
