//! `shares = [{ host, guest, tag, readonly }]` of one `[[vms]]` entry: host
//! directories the guest mounts over virtio-9p. Checks the shape of each
//! entry (paths, the 9p tag's characters and QEMU's 31-byte limit, unique
//! tags and mount points) and resolves host paths against the config's
//! directory. Pure: whether the host directory exists is checked when the VM
//! starts, like kernels and disks.

use std::collections::BTreeSet;
use std::path::Path;

use toml::Spanned;

use super::diagnostic::Problem;
use super::model::Share;
use super::raw::RawShare;

/// QEMU 7.2 refuses longer 9p mount tags.
pub const MAX_TAG_LEN: usize = 31;

/// Valid shares of one VM; every problem goes to `problems`.
pub(super) fn check(
    raw: Vec<Spanned<RawShare>>,
    root: &Path,
    problems: &mut Vec<Problem>,
) -> Vec<Share> {
    let mut out = Vec::new();
    let mut tags = BTreeSet::new();
    let mut mounts = BTreeSet::new();
    for entry in raw {
        let span = entry.span();
        let RawShare {
            host,
            tag,
            guest,
            readonly,
        } = entry.into_inner();
        let before = problems.len();
        let host = match host {
            Some(h) => super::paths::check_path("host", &h)
                .map_err(|p| problems.push(p))
                .ok()
                .map(|p| root.join(p)),
            None => {
                problems.push(
                    Problem::new("share has no host directory", span.clone()).help(
                        "add host = \"dir\" (relative paths start at the directory of castra.toml)",
                    ),
                );
                None
            }
        };
        let guest_span = guest.as_ref().map_or(span.clone(), |g| g.span());
        let guest = match guest {
            Some(g) => check_guest(&g).map_err(|p| problems.push(p)).ok(),
            None => {
                problems.push(
                    Problem::new("share has no guest mount point", span.clone())
                        .help("add guest = \"/mnt/dir\" (an absolute path in the guest)"),
                );
                None
            }
        };
        let (tag, tag_span) = match (tag, &guest) {
            (Some(t), _) => match check_tag(t.get_ref()) {
                Ok(()) => (Some(t.get_ref().clone()), t.span()),
                Err(why) => {
                    problems.push(Problem::new(why, t.span()).help(TAG_HELP));
                    (None, t.span())
                }
            },
            (None, Some(g)) => {
                let derived = default_tag(g);
                match check_tag(&derived) {
                    Ok(()) => (Some(derived), guest_span.clone()),
                    Err(why) => {
                        problems.push(
                            Problem::new(
                                format!("{why} (derived from guest \"{g}\")"),
                                guest_span.clone(),
                            )
                            .help(format!("set tag explicitly; {TAG_HELP}")),
                        );
                        (None, guest_span.clone())
                    }
                }
            }
            (None, None) => (None, span.clone()),
        };
        if let Some(t) = &tag
            && !tags.insert(t.clone())
        {
            problems.push(
                Problem::new(format!("share tag \"{t}\" is used twice in this VM"), tag_span.clone())
                    .help("give each share its own tag = \"...\" (the tag defaults to the last component of guest)"),
            );
        }
        if let Some(g) = &guest
            && !mounts.insert(g.clone())
        {
            problems.push(
                Problem::new(
                    format!("guest mount point \"{g}\" is shared twice in this VM"),
                    guest_span.clone(),
                )
                .help("mount each share at its own guest path"),
            );
        }
        if problems.len() > before {
            continue;
        }
        if let (Some(host), Some(tag), Some(guest)) = (host, tag, guest) {
            out.push(Share {
                host,
                tag,
                guest,
                readonly: readonly.unwrap_or(true),
            });
        }
    }
    out
}

const TAG_HELP: &str =
    "a tag is 1 to 31 letters, digits, '_', '-' or '.', for example tag = \"flake\"";

/// The tag when none is given: the mount point's last component (`/mnt/flake` -> `flake`).
pub fn default_tag(guest: &str) -> String {
    guest
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn check_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("share tag is empty".into());
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(format!(
            "share tag \"{tag}\" is {} bytes, over QEMU's {MAX_TAG_LEN}",
            tag.len()
        ));
    }
    if let Some(c) = tag
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!("share tag \"{tag}\" has the character {c:?}"));
    }
    Ok(())
}

fn check_guest(g: &Spanned<String>) -> Result<String, Problem> {
    let text = g.get_ref();
    let bad = |why: String| Problem::new(why, g.span());
    if !text.starts_with('/') {
        return Err(bad(format!(
            "guest mount point \"{text}\" is not an absolute path"
        ))
        .help(format!(
            "write guest = \"/{}\"",
            text.trim_start_matches("./")
        )));
    }
    let trimmed = text.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(bad("a share cannot be mounted on the guest's /".into())
            .help("mount it below, for example guest = \"/mnt/share\""));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(format!("guest mount point {text:?} has whitespace"))
            .help("use a path without spaces, tabs or newlines"));
    }
    if trimmed.split('/').any(|part| part == "..") {
        return Err(bad(format!(
            "guest mount point \"{text}\" has a \"..\" component"
        ))
        .help("write the absolute path it means"));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_tags_come_from_the_mount_point() {
        assert_eq!(default_tag("/mnt/flake"), "flake");
        assert_eq!(default_tag("/mnt/flake/"), "flake");
        assert_eq!(default_tag("/srv"), "srv");
    }

    #[test]
    fn tag_table() {
        for (tag, ok) in [
            ("flake", true),
            ("a.b_c-1", true),
            (&"x".repeat(31), true),
            (&"x".repeat(32), false),
            ("", false),
            ("a b", false),
            ("a,b", false),
            ("a/b", false),
        ] {
            assert_eq!(check_tag(tag).is_ok(), ok, "{tag:?}");
        }
    }
}
