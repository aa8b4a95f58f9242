//! Validation of `bootstrap` tables: a VM's `bootstrap = { ... }` and the
//! project default `[bootstrap]`, each checked on its own (one kind, a known
//! mode, env names, a duration) and then merged per VM (the VM's keys win,
//! env tables are merged). Every problem points at the value that causes it.
//!
//! Pure: a script path is joined to the config directory, never read (the
//! reconcile layer reads it when it computes the fingerprint).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::diagnostic::Problem;
use super::duration::parse_duration;
use super::model::{
    BootstrapKind, BootstrapMode, BootstrapSpec, DEFAULT_BOOTSTRAP_TIMEOUT, SECRET_SUFFIXES,
};
use super::raw::RawBootstrap;
use super::suggest::closest;

/// One bootstrap table after its own checks, before merging.
#[derive(Debug, Default, Clone)]
pub(crate) struct Partial {
    /// The table's span (the VM's `bootstrap` value, or `[bootstrap]`).
    pub span: Range<usize>,
    pub kind: Option<BootstrapKind>,
    /// A kind key was written (even if its value was refused).
    pub names_kind: bool,
    pub mode: Option<BootstrapMode>,
    pub env: BTreeMap<String, String>,
    pub secret_env: Vec<Spanned<String>>,
    pub timeout: Option<Duration>,
}

const KIND_HELP: &str = "use one of run = \"...\" (inline shell), script = \"setup.sh\", flake = \"<ref>\" (nix run) or nixos = \"<flake>#<host>\" (nixos-rebuild switch)";

/// Check one table; problems are pushed, what is valid is kept.
pub(crate) fn check(
    raw: Spanned<RawBootstrap>,
    root_dir: &Path,
    problems: &mut Vec<Problem>,
) -> Partial {
    let span = raw.span();
    let raw = raw.into_inner();
    let mut out = Partial {
        span,
        ..Partial::default()
    };
    let kinds = [
        ("script", raw.script),
        ("run", raw.run),
        ("flake", raw.flake),
        ("nixos", raw.nixos),
    ];
    let mut first: Option<&str> = None;
    for (key, value) in kinds {
        let Some(value) = value else { continue };
        if let Some(first) = first {
            problems.push(
                Problem::new(
                    format!("bootstrap has both {first} and {key}: it runs one thing"),
                    value.span(),
                )
                .help(format!("keep {first} or {key}, not both ({KIND_HELP})")),
            );
            continue;
        }
        first = Some(key);
        out.names_kind = true;
        let text = value.get_ref();
        if text.trim().is_empty() {
            problems.push(
                Problem::new(format!("bootstrap {key} is empty"), value.span()).help(KIND_HELP),
            );
            continue;
        }
        out.kind = Some(match key {
            "script" => {
                if text == "~" || text.starts_with("~/") {
                    problems.push(
                        Problem::new(format!("script path \"{text}\" starts with '~'"), value.span())
                            .help("'~' is not expanded: write an absolute path or one relative to the directory of castra.toml"),
                    );
                    continue;
                }
                BootstrapKind::Script {
                    path: root_dir.join(text),
                }
            }
            "run" => BootstrapKind::Run {
                command: text.clone(),
            },
            "flake" => BootstrapKind::Flake {
                reference: text.clone(),
            },
            _ => {
                if !text.contains('#') {
                    problems.push(
                        Problem::new(
                            format!("nixos = \"{text}\" names no configuration"),
                            value.span(),
                        )
                        .help(format!(
                            "write the flake and the host: nixos = \"{text}#web\""
                        )),
                    );
                    continue;
                }
                BootstrapKind::Nixos {
                    reference: text.clone(),
                }
            }
        });
    }
    if let Some(m) = &raw.mode {
        match m.get_ref().parse::<BootstrapMode>() {
            Ok(mode) => out.mode = Some(mode),
            Err(e) => {
                let help = match e.suggestion {
                    Some(s) => format!("did you mean \"{s}\"?"),
                    None => format!("expected {}", super::suggest::one_of(&e.expected)),
                };
                problems.push(
                    Problem::new(
                        format!("unknown bootstrap mode \"{}\"", m.get_ref()),
                        m.span(),
                    )
                    .help(help),
                );
            }
        }
    }
    for (key, value) in raw.env.into_iter().flatten() {
        if !valid_env_name(key.get_ref()) {
            problems.push(
                Problem::new(
                    format!("invalid environment variable name \"{}\"", key.get_ref()),
                    key.span(),
                )
                .help("letters, digits and '_', not starting with a digit, e.g. env = { API_URL = \"...\" }"),
            );
            continue;
        }
        out.env.insert(key.into_inner(), value.into_inner());
    }
    out.secret_env = raw.secret_env.unwrap_or_default();
    if let Some(t) = raw.timeout {
        match parse_duration(t.get_ref()) {
            Ok(d) if !d.is_zero() => out.timeout = Some(d),
            Ok(_) => problems.push(
                Problem::new("bootstrap timeout is zero", t.span())
                    .help("for example: timeout = \"10m\""),
            ),
            Err(why) => problems.push(
                Problem::new(format!("invalid bootstrap timeout: {why}"), t.span())
                    .help("for example: timeout = \"10m\" (units: ms, s, m, h)"),
            ),
        }
    }
    out
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The plan of VM `vm`: its own table over the project default. `None`
/// when neither names anything to run, or the mode is `skip` without a kind.
pub(crate) fn merge(
    vm: &str,
    default: Option<&Partial>,
    own: Option<&Partial>,
    problems: &mut Vec<Problem>,
) -> Option<BootstrapSpec> {
    let own_or_default = |f: &dyn Fn(&Partial) -> bool| own.filter(|p| f(p)).or(default);
    let kind = own
        .and_then(|p| p.kind.clone())
        .or_else(|| default.and_then(|d| d.kind.clone()));
    let mode = own
        .and_then(|p| p.mode)
        .or_else(|| default.and_then(|d| d.mode))
        .unwrap_or(BootstrapMode::Auto);
    let Some(kind) = kind else {
        // A VM table that sets something but has nothing to run.
        let named = [own, default].into_iter().flatten().any(|p| p.names_kind);
        if let Some(own) = own.filter(|_| mode != BootstrapMode::Skip && !named) {
            problems.push(
                Problem::new(
                    format!("bootstrap of VM \"{vm}\" has nothing to run"),
                    own.span.clone(),
                )
                .help(KIND_HELP),
            );
        }
        return None;
    };
    let mut env = default.map(|d| d.env.clone()).unwrap_or_default();
    if let Some(own) = own {
        env.extend(own.env.clone());
    }
    let mut secret_env = BTreeSet::new();
    for listed in [default, own].into_iter().flatten() {
        for key in &listed.secret_env {
            if env.contains_key(key.get_ref()) {
                secret_env.insert(key.get_ref().clone());
                continue;
            }
            let keys: Vec<&str> = env.keys().map(String::as_str).collect();
            let help = match closest(key.get_ref(), &keys) {
                Some(best) => format!("did you mean \"{best}\"?"),
                None => "list only keys of env, e.g. env = { API_KEY = \"...\" }, secret_env = [\"API_KEY\"]".into(),
            };
            problems.push(
                Problem::new(
                    format!(
                        "secret_env names \"{}\", which is not in the env of VM \"{vm}\"",
                        key.get_ref()
                    ),
                    key.span(),
                )
                .help(help),
            );
        }
    }
    secret_env.extend(
        env.keys()
            .filter(|k| SECRET_SUFFIXES.iter().any(|s| k.ends_with(s)))
            .cloned(),
    );
    let timeout = own_or_default(&|p| p.timeout.is_some())
        .and_then(|p| p.timeout)
        .unwrap_or(DEFAULT_BOOTSTRAP_TIMEOUT);
    Some(BootstrapSpec {
        kind,
        mode,
        env,
        secret_env,
        timeout,
    })
}
