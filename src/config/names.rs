//! Name rules shared by VMs and projects: lowercase ASCII letters, digits and
//! '-', starting with a letter, at most [`MAX_NAME_LEN`] characters (names
//! end up in file names, QEMU `-name` and bus topics like `vm:<name>`).
//! Also turns a directory name into a valid default project name.

pub const MAX_NAME_LEN: usize = 32;

/// Why `name` is not a valid VM or project name, if it is not.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let Some(first) = name.chars().next() else {
        return Err("is empty".into());
    };
    if !first.is_ascii_lowercase() {
        return Err("must start with a lowercase letter".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "contains {bad:?}: use only lowercase letters, digits and '-'"
        ));
    }
    let len = name.chars().count();
    if len > MAX_NAME_LEN {
        return Err(format!(
            "is {len} characters long: the limit is {MAX_NAME_LEN}"
        ));
    }
    Ok(())
}

/// A valid name close to `raw`: lowercased, other characters turned into
/// '-', runs of '-' collapsed, trimmed, prefixed with `castra-` when it does
/// not start with a letter, cut to [`MAX_NAME_LEN`]; `castra` if nothing is left.
pub(crate) fn sanitize(raw: &str) -> String {
    let mut out = String::new();
    for c in raw.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if !(c == '-' && (out.is_empty() || out.ends_with('-'))) {
            out.push(c);
        }
    }
    let trimmed = out.trim_end_matches('-');
    if trimmed.is_empty() {
        return "castra".into();
    }
    let mut name = if trimmed.starts_with(|c: char| c.is_ascii_lowercase()) {
        trimmed.to_string()
    } else {
        format!("castra-{trimmed}")
    };
    name.truncate(MAX_NAME_LEN);
    name.trim_end_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects_names() {
        for ok in ["web", "db-1", "a", "x-y-z", &"a".repeat(32)] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        let cases: &[(&str, &str)] = &[
            ("", "is empty"),
            ("1web", "start with a lowercase letter"),
            ("-web", "start with a lowercase letter"),
            ("Web", "start with a lowercase letter"),
            ("web_1", "contains '_'"),
            ("wéb", "contains 'é'"),
            ("web server", "contains ' '"),
        ];
        for (name, want) in cases {
            let err = check_name(name).expect_err(name);
            assert!(err.contains(want), "{name}: {err}");
        }
        let long = "a".repeat(33);
        assert_eq!(
            check_name(&long),
            Err("is 33 characters long: the limit is 32".into())
        );
    }

    #[test]
    fn sanitizes_directory_names() {
        let cases: &[(&str, &str)] = &[
            ("demo", "demo"),
            ("My Project", "my-project"),
            ("my_project.v2", "my-project-v2"),
            ("--x--", "x"),
            ("2024-lab", "castra-2024-lab"),
            ("Ünïcode", "n-code"),
            ("", "castra"),
            ("___", "castra"),
            (&"long-".repeat(10), "long-long-long-long-long-long-lo"),
        ];
        for (raw, want) in cases {
            let got = sanitize(raw);
            assert_eq!(got, *want, "{raw:?}");
            assert_eq!(check_name(&got), Ok(()), "{raw:?} -> {got}");
        }
    }
}
