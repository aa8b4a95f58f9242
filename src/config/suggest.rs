//! "Did you mean" for misspelled keys and values: the closest candidate by
//! Jaro-Winkler similarity (strsim), or nothing when no candidate is close.
//! Pure string work; callers word the help line.

/// The candidate closest to `input`, if it is close enough to be a likely
/// typo: Jaro-Winkler similarity of at least 0.8, or an edit distance
/// (with transpositions) of 1 for short words and 2 for longer ones, which
/// catches swapped letters in short names (`tgc` -> `tcg`).
pub(crate) fn closest<'a>(input: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lowered = input.to_ascii_lowercase();
    let max_edits = if lowered.chars().count() <= 4 { 1 } else { 2 };
    candidates
        .iter()
        .map(|c| {
            let edits = strsim::osa_distance(&lowered, c);
            (edits, strsim::jaro_winkler(&lowered, c), *c)
        })
        .filter(|(edits, score, _)| *edits <= max_edits || *score >= 0.8)
        .min_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)))
        .map(|(_, _, c)| c)
}

/// `"a", "b" or "c"`: a closed list for help lines.
pub(crate) fn one_of(candidates: &[&str]) -> String {
    let quoted: Vec<String> = candidates.iter().map(|c| format!("\"{c}\"")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[&str] = &[
        "name", "cpus", "memory", "image", "machine", "accel", "forwards", "count",
    ];

    #[test]
    fn finds_typos_and_ignores_strangers() {
        let cases: &[(&str, Option<&str>)] = &[
            ("memroy", Some("memory")),
            ("mem", Some("memory")),
            ("cpu", Some("cpus")),
            ("forward", Some("forwards")),
            ("acel", Some("accel")),
            ("Machine", Some("machine")),
            ("cpsu", Some("cpus")),
            ("imgae", Some("image")),
            ("replicas", None),
            ("zzz", None),
        ];
        for (input, want) in cases {
            assert_eq!(closest(input, KEYS), *want, "input {input:?}");
        }
    }

    #[test]
    fn lists_read_naturally() {
        assert_eq!(one_of(&[]), "");
        assert_eq!(one_of(&["a"]), "\"a\"");
        assert_eq!(one_of(&["a", "b"]), "\"a\" or \"b\"");
        assert_eq!(one_of(&["a", "b", "c"]), "\"a\", \"b\" or \"c\"");
    }
}
