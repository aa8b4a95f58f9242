//! Memory sizes: the [`ByteSize`] type and [`parse_size`], the one parser for
//! sizes written by users (`"512M"`, `"512 MiB"`, `"1G"`, `"1.5GiB"`, `2048`).
//!
//! Units are binary (powers of 1024) whatever their spelling: `K`, `KB`,
//! `KiB` all mean 1024 bytes, as in QEMU's `-m`. A number without a unit
//! means MiB, again as QEMU's `-m 2048` does; write `B` for bytes. This module
//! knows nothing about VMs (the 64M floor is checked in `validate`).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// A number of bytes. Serialized as a plain `u64` of bytes; displayed in the
/// largest binary unit that divides it exactly (`512M`, `1G`, `1536M`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn from_bytes(bytes: u64) -> Self {
        ByteSize(bytes)
    }

    pub const fn from_mib(mib: u64) -> Self {
        ByteSize(mib * MIB)
    }

    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// Whole MiB, rounded down (QEMU's `-m` takes MiB).
    pub const fn mib(self) -> u64 {
        self.0 / MIB
    }

    /// True when the size is a whole number of MiB.
    pub const fn is_whole_mib(self) -> bool {
        self.0.is_multiple_of(MIB)
    }
}

impl fmt::Display for ByteSize {
    /// `0B`, `100B`, `4K`, `512M`, `1536M`, `1G`, `2T`: exact, never rounded,
    /// and accepted back by [`parse_size`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, suffix) in [(TIB, "T"), (GIB, "G"), (MIB, "M"), (KIB, "K")] {
            if b != 0 && b.is_multiple_of(unit) {
                return write!(f, "{}{}", b / unit, suffix);
            }
        }
        write!(f, "{b}B")
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_size(s)
    }
}

/// Parses a size: a decimal number, optional spaces, an optional binary unit.
///
/// Units (case-insensitive, all powers of 1024): `B`; `K`, `KB`, `KiB`;
/// `M`, `MB`, `MiB`; `G`, `GB`, `GiB`; `T`, `TB`, `TiB`. No unit means MiB.
/// A fraction is allowed when the result is a whole number of bytes
/// (`"1.5G"` = 1536 MiB). The error is a lowercase sentence without the input's
/// location, ready to be wrapped by the caller.
pub fn parse_size(input: &str) -> Result<ByteSize, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty size: write a number with a unit such as \"512M\" or \"1G\"".into());
    }
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(num_end);
    let unit = unit.trim_start();
    if number.is_empty() {
        return Err(format!(
            "\"{input}\" does not start with a number: write a size such as \"512M\" or \"1G\""
        ));
    }
    let multiplier = unit_multiplier(unit).ok_or_else(|| {
        format!("unknown size unit \"{unit}\" in \"{input}\": use B, K, M, G or T (binary units)")
    })?;
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() || frac.contains('.') || (number.contains('.') && frac.is_empty()) {
        return Err(format!("\"{input}\" is not a valid number"));
    }
    let too_big = || format!("\"{input}\" is too large");
    let whole: u64 = whole.parse().map_err(|_| too_big())?;
    let mut bytes = whole.checked_mul(multiplier).ok_or_else(too_big)?;
    if !frac.is_empty() {
        // frac / 10^digits * multiplier must be a whole number of bytes.
        let digits = u32::try_from(frac.len()).map_err(|_| too_big())?;
        let denom = 10u128.checked_pow(digits).ok_or_else(too_big)?;
        let numer: u128 = frac.parse::<u128>().map_err(|_| too_big())? * u128::from(multiplier);
        if !numer.is_multiple_of(denom) {
            return Err(format!(
                "\"{input}\" is not a whole number of bytes: use a smaller unit (e.g. M instead of G)"
            ));
        }
        let extra = u64::try_from(numer / denom).map_err(|_| too_big())?;
        bytes = bytes.checked_add(extra).ok_or_else(too_big)?;
    }
    Ok(ByteSize(bytes))
}

fn unit_multiplier(unit: &str) -> Option<u64> {
    let u = unit.to_ascii_lowercase();
    Some(match u.as_str() {
        "" => MIB,
        "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => TIB,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_spellings() {
        let cases: &[(&str, u64)] = &[
            ("512M", 512 * MIB),
            ("512 MiB", 512 * MIB),
            ("512mb", 512 * MIB),
            ("1G", GIB),
            ("1GiB", GIB),
            ("1 gb", GIB),
            ("2048", 2048 * MIB),
            ("  64M  ", 64 * MIB),
            ("4096B", 4096),
            ("4K", 4 * KIB),
            ("1.5G", 1536 * MIB),
            ("0.5 GiB", 512 * MIB),
            ("1T", TIB),
            ("0", 0),
        ];
        for (input, bytes) in cases {
            assert_eq!(parse_size(input), Ok(ByteSize(*bytes)), "input {input:?}");
        }
    }

    #[test]
    fn rejects_nonsense_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "empty size"),
            ("   ", "empty size"),
            ("M", "does not start with a number"),
            ("-1G", "does not start with a number"),
            ("1X", "unknown size unit \"X\""),
            ("1 Mbit", "unknown size unit \"Mbit\""),
            ("1.2.3G", "not a valid number"),
            (".5G", "not a valid number"),
            ("5.G", "not a valid number"),
            ("1.1B", "not a whole number of bytes"),
            ("99999999999999999999", "too large"),
            ("20000000T", "too large"),
        ];
        for (input, want) in cases {
            let err = parse_size(input).expect_err(input);
            assert!(err.contains(want), "input {input:?}: {err}");
        }
    }

    #[test]
    fn display_uses_the_largest_exact_binary_unit() {
        let cases: &[(u64, &str)] = &[
            (0, "0B"),
            (100, "100B"),
            (4 * KIB, "4K"),
            (512 * MIB, "512M"),
            (1536 * MIB, "1536M"),
            (GIB, "1G"),
            (3 * TIB, "3T"),
            (GIB + 1, "1073741825B"),
        ];
        for (bytes, want) in cases {
            assert_eq!(ByteSize(*bytes).to_string(), *want);
        }
    }

    #[test]
    fn display_round_trips_through_parse() {
        for bytes in [0, 1, 1023, KIB, 3 * KIB, 64 * MIB, 1536 * MIB, 7 * GIB, TIB] {
            let shown = ByteSize(bytes).to_string();
            assert_eq!(parse_size(&shown), Ok(ByteSize(bytes)), "{shown}");
        }
    }

    #[test]
    fn serializes_as_plain_bytes() {
        let json = serde_json::to_string(&ByteSize::from_mib(512)).unwrap();
        assert_eq!(json, "536870912");
        let back: ByteSize = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ByteSize::from_mib(512));
    }

    #[test]
    fn mib_helpers() {
        assert_eq!(ByteSize::from_mib(256).mib(), 256);
        assert!(ByteSize::from_mib(3).is_whole_mib());
        assert!(!ByteSize(MIB + 1).is_whole_mib());
    }
}
