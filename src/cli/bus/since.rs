//! `castra bus tail --since WHEN`: the accepted forms of WHEN and the filter
//! they make. Pure: the caller passes the current time; reading the logs is
//! `tail.rs`'s job.
//!
//! WHEN is a duration ago (`10m`, `2h`, `1h30m`: the units of castra.toml
//! durations), an RFC 3339 timestamp (`2026-11-23T10:00:00Z`, fractions
//! and `+HH:MM` offsets allowed), or `seq:N` (sequence numbers N and later).

use crate::broker::buslog::LogRecord;
use crate::config::parse_duration;

/// Where a tail starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Records logged at or after this unix time (ms).
    Time(u64),
    /// Records with this sequence number or later.
    Seq(u64),
}

/// What the error says the accepted forms are.
const FORMS: &str = "a duration ago (\"10m\", \"2h\", \"1h30m\"; units ms, s, m, h), \
an RFC 3339 time (\"2026-11-23T10:00:00Z\") or \"seq:N\"";

impl Since {
    /// Parse WHEN at `now_ms` (unix ms).
    pub fn parse(when: &str, now_ms: u64) -> Result<Since, String> {
        let w = when.trim();
        let bad = |why: String| format!("--since {when:?}: {why}; expected {FORMS}");
        if let Some(n) = w.strip_prefix("seq:") {
            return n
                .trim()
                .parse::<u64>()
                .map(Since::Seq)
                .map_err(|_| bad(format!("{n:?} is not a sequence number")));
        }
        if looks_like_date(w) {
            return parse_rfc3339(w).map(Since::Time).map_err(bad);
        }
        match parse_duration(w) {
            Ok(d) => Ok(Since::Time(
                now_ms.saturating_sub(d.as_millis().min(u128::from(u64::MAX)) as u64),
            )),
            Err(why) => Err(bad(why)),
        }
    }

    /// Whether a record is at or after the start.
    pub fn admits(&self, rec: &LogRecord) -> bool {
        match *self {
            Since::Time(ms) => rec.ts_ms >= ms,
            Since::Seq(n) => rec.seq >= n,
        }
    }
}

/// `YYYY-` at the start: a date, not a duration.
fn looks_like_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 5 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-'
}

/// `YYYY-MM-DD(T|t| )HH:MM:SS[.frac](Z|z|+HH:MM|-HH:MM)` -> unix ms.
pub fn parse_rfc3339(s: &str) -> Result<u64, String> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Result<i64, String> {
        let part = b
            .get(from..from + len)
            .filter(|p| p.iter().all(u8::is_ascii_digit))
            .ok_or_else(|| "not an RFC 3339 time".to_owned())?;
        Ok(part.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let sep = |at: usize, allowed: &[u8]| -> Result<(), String> {
        match b.get(at) {
            Some(c) if allowed.contains(c) => Ok(()),
            _ => Err("not an RFC 3339 time".to_owned()),
        }
    };
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    sep(4, b"-")?;
    sep(7, b"-")?;
    sep(10, b"Tt ")?;
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    sep(13, b":")?;
    sep(16, b":")?;
    let mut at = 19;
    let mut millis = 0;
    if b.get(at) == Some(&b'.') {
        let digits = b[at + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if digits == 0 {
            return Err("a fraction needs digits after the '.'".into());
        }
        // Milliseconds: the first three digits, padded.
        for i in 0..3 {
            let d = if i < digits { num(at + 1 + i, 1)? } else { 0 };
            millis = millis * 10 + d;
        }
        at += 1 + digits;
    }
    let offset_min = match b.get(at) {
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(&c @ (b'+' | b'-')) if at + 6 == b.len() => {
            sep(at + 3, b":")?;
            let (h, m) = (num(at + 1, 2)?, num(at + 4, 2)?);
            if h > 23 || m > 59 {
                return Err("the offset is out of range".into());
            }
            let sign = if c == b'+' { 1 } else { -1 };
            sign * (h * 60 + m)
        }
        _ => return Err("it needs a zone: \"Z\" or \"+HH:MM\"".into()),
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(format!("month {month} does not exist")),
    };
    if day < 1 || day > days_in_month {
        return Err(format!("{year:04}-{month:02} has no day {day}"));
    }
    // 60 is a leap second; it counts as the last second of the minute.
    if hour > 23 || minute > 59 || second > 60 {
        return Err("the time of day is out of range".into());
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_min * 60;
    if secs < 0 {
        return Err("it is before 1970".into());
    }
    Ok(secs as u64 * 1000 + millis as u64)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// days_from_civil; the inverse of `broker::stamp::utc`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::stamp::utc;

    const NOW: u64 = 1_795_400_000_000;

    #[test]
    fn durations_times_and_seqs() {
        let cases = [
            ("10m", Since::Time(NOW - 600_000)),
            ("2h", Since::Time(NOW - 7_200_000)),
            ("1h30m", Since::Time(NOW - 5_400_000)),
            ("0s", Since::Time(NOW)),
            ("seq:42", Since::Seq(42)),
            ("seq:0", Since::Seq(0)),
            ("2024-05-01T12:34:56Z", Since::Time(1_714_566_896_000)),
            ("2024-05-01T12:34:56.789Z", Since::Time(1_714_566_896_789)),
            ("2024-05-01t12:34:56.7z", Since::Time(1_714_566_896_700)),
            (
                "2024-05-01 12:34:56.789123Z",
                Since::Time(1_714_566_896_789),
            ),
            ("2024-05-01T14:34:56+02:00", Since::Time(1_714_566_896_000)),
            ("2024-05-01T07:04:56-05:30", Since::Time(1_714_566_896_000)),
            ("2000-02-29T00:00:00Z", Since::Time(951_782_400_000)),
            ("1970-01-01T00:00:00Z", Since::Time(0)),
        ];
        for (when, want) in cases {
            assert_eq!(Since::parse(when, NOW), Ok(want), "{when}");
        }
    }

    #[test]
    fn the_inverse_of_the_log_timestamps() {
        for ms in [
            0,
            951_782_400_000,
            1_714_566_896_789,
            1_795_386_299_919,
            4_102_444_800_000,
        ] {
            assert_eq!(parse_rfc3339(&utc(ms)), Ok(ms), "{}", utc(ms));
        }
    }

    #[test]
    fn bad_input_names_the_accepted_forms() {
        let errors: Vec<String> = [
            "yesterday",
            "10",
            "1.5h",
            "seq:",
            "seq:-3",
            "2024-05-01",
            "2024-05-01T12:34:56",
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:34:56+2:00",
            "1969-12-31T23:59:59Z",
        ]
        .iter()
        .map(|w| Since::parse(w, NOW).unwrap_err())
        .collect();
        for e in &errors {
            assert!(e.ends_with(&format!("expected {FORMS}")), "{e}");
        }
        let whys: Vec<&str> = errors
            .iter()
            .map(|e| e.split("; expected").next().unwrap())
            .collect();
        insta::assert_snapshot!(whys.join("\n"), @r#"
            --since "yesterday": "yesterday" is not a duration: write a number with a unit such as "20s" or "500ms"
            --since "10": "10" has no unit: write "10s" for seconds (units: ms, s, m, h)
            --since "1.5h": "1.5h" has a fraction: use a smaller unit instead ("1500ms", not "1.5s")
            --since "seq:": "" is not a sequence number
            --since "seq:-3": "-3" is not a sequence number
            --since "2024-05-01": not an RFC 3339 time
            --since "2024-05-01T12:34:56": it needs a zone: "Z" or "+HH:MM"
            --since "2024-13-01T00:00:00Z": month 13 does not exist
            --since "2023-02-29T00:00:00Z": 2023-02 has no day 29
            --since "2024-05-01T24:00:00Z": the time of day is out of range
            --since "2024-05-01T12:34:56+2:00": it needs a zone: "Z" or "+HH:MM"
            --since "1969-12-31T23:59:59Z": it is before 1970
            "#);
    }

    #[test]
    fn records_at_or_after_the_start_are_admitted() {
        let rec = |seq, ts_ms| LogRecord {
            seq,
            vm: "web".into(),
            topic: "t".into(),
            ts_ms,
            payload: serde_json::Value::Null,
            id: None,
        };
        assert!(Since::Seq(5).admits(&rec(5, 0)) && !Since::Seq(5).admits(&rec(4, NOW)));
        assert!(
            Since::Time(NOW).admits(&rec(1, NOW)) && !Since::Time(NOW).admits(&rec(9, NOW - 1))
        );
    }
}
