//! Redaction of secret env values: in run logs, progress lines and anything
//! castra prints. Pure.

use std::collections::{BTreeMap, BTreeSet};

/// What replaces a secret value.
pub const MASK: &str = "***";

/// The secret values of `env` (non-empty ones, longest first so a secret
/// that contains another is masked whole).
pub fn secret_values<'a>(
    env: &'a BTreeMap<String, String>,
    secret: &BTreeSet<String>,
) -> Vec<&'a str> {
    let mut out: Vec<&str> = env
        .iter()
        .filter(|(k, v)| secret.contains(*k) && !v.is_empty())
        .map(|(_, v)| v.as_str())
        .collect();
    out.sort_by_key(|v| std::cmp::Reverse(v.len()));
    out.dedup();
    out
}

/// `text` with every occurrence of a secret value replaced by [`MASK`].
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for s in secrets {
        if out.contains(s) {
            out = out.replace(s, MASK);
        }
    }
    out
}

/// `env` for display: secret values masked.
pub fn shown_env(
    env: &BTreeMap<String, String>,
    secret: &BTreeSet<String>,
) -> BTreeMap<String, String> {
    env.iter()
        .map(|(k, v)| {
            let v = if secret.contains(k) {
                MASK.to_owned()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_secret_value_and_nothing_else() {
        let env: BTreeMap<String, String> = [
            ("API_TOKEN", "abc123"),
            ("LONG_SECRET", "xxabc123yy"),
            ("EMPTY_SECRET", ""),
            ("REGION", "eu"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let secret: BTreeSet<String> = ["API_TOKEN", "LONG_SECRET", "EMPTY_SECRET"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        let values = secret_values(&env, &secret);
        assert_eq!(values, ["xxabc123yy", "abc123"]);
        for (input, want) in [
            ("token=abc123 region=eu", "token=*** region=eu"),
            ("xxabc123yy and abc123abc123", "*** and ******"),
            ("nothing here", "nothing here"),
            ("", ""),
        ] {
            assert_eq!(redact(input, &values), want, "{input}");
        }
        let shown = shown_env(&env, &secret);
        assert_eq!(shown["API_TOKEN"], MASK);
        assert_eq!(shown["REGION"], "eu");
    }
}
