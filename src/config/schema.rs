//! The shape of `castra.toml` as data (sections, keys, value kinds, an
//! example per key) and the first check pass over the parsed TOML tree:
//! unknown keys (with "did you mean"), values of the wrong kind and tables
//! written with the wrong brackets, all reported at once with spans.
//!
//! It runs before serde so every such mistake gets a located message and a
//! fix; values' meaning (ranges, units, names) is `validate`'s job.

use super::diagnostic::Problem;
use super::suggest::{closest, one_of};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    /// A string with a unit or an integer (MiB).
    Size,
    StrArray,
    /// A table of any keys whose values are strings (`env = { K = "v" }`).
    StrMap,
    /// `"default"` or a table with [`IMAGE`]'s keys.
    Image,
    Table(&'static Section),
    /// An array of tables: `[[vms]]`.
    Tables(&'static Section),
    /// A table of named tables: `[hosts.NAME]`.
    NamedTables(&'static Section),
}

struct Section {
    /// How messages name it: `[[vms]]`, `[project]`, `image`.
    title: &'static str,
    fields: &'static [Field],
}

struct Field {
    key: &'static str,
    kind: Kind,
    example: &'static str,
}

const fn field(key: &'static str, kind: Kind, example: &'static str) -> Field {
    Field { key, kind, example }
}

static ROOT: Section = Section {
    title: "the top level",
    fields: &[
        field("project", Kind::Table(&PROJECT), "[project]"),
        field("vms", Kind::Tables(&VMS), "[[vms]]"),
        field("broker", Kind::Table(&BROKER), "[broker]"),
        field("lifecycle", Kind::Table(&LIFECYCLE), "[lifecycle]"),
        field("bootstrap", Kind::Table(&BOOTSTRAP), "[bootstrap]"),
        field("hosts", Kind::NamedTables(&HOST), "[hosts.NAME]"),
    ],
};

static HOST: Section = Section {
    title: "[hosts.NAME]",
    fields: &[field(
        "uri",
        Kind::Str,
        "uri = \"qemu+tcp://10.0.0.2/system\"",
    )],
};

static PROJECT: Section = Section {
    title: "[project]",
    fields: &[
        field("name", Kind::Str, "name = \"demo\""),
        field("state_dir", Kind::Str, "state_dir = \".castra\""),
    ],
};

static VMS: Section = Section {
    title: "[[vms]]",
    fields: &[
        field("name", Kind::Str, "name = \"web\""),
        field("cpus", Kind::Int, "cpus = 2"),
        field("memory", Kind::Size, "memory = \"512M\""),
        field("image", Kind::Image, "image = \"default\""),
        field("machine", Kind::Str, "machine = \"microvm\""),
        field("accel", Kind::Str, "accel = \"auto\""),
        field("forwards", Kind::StrArray, "forwards = [\"8080:80\"]"),
        field("count", Kind::Int, "count = 3"),
        field("host", Kind::Str, "host = \"a\""),
        field(
            "bootstrap",
            Kind::Table(&BOOTSTRAP),
            "bootstrap = { run = \"echo hi\" }",
        ),
        field(
            "shares",
            Kind::Tables(&SHARE),
            "{ host = \"flake\", guest = \"/mnt/flake\" }",
        ),
    ],
};

static SHARE: Section = Section {
    title: "shares",
    fields: &[
        field("host", Kind::Str, "host = \"flake\""),
        field("tag", Kind::Str, "tag = \"flake\""),
        field("guest", Kind::Str, "guest = \"/mnt/flake\""),
        field("readonly", Kind::Bool, "readonly = true"),
    ],
};

static BOOTSTRAP: Section = Section {
    title: "bootstrap",
    fields: &[
        field("script", Kind::Str, "script = \"setup.sh\""),
        field("run", Kind::Str, "run = \"echo hi\""),
        field("flake", Kind::Str, "flake = \"./guest#setup\""),
        field("nixos", Kind::Str, "nixos = \"./guest#web\""),
        field("mode", Kind::Str, "mode = \"auto\""),
        field("env", Kind::StrMap, "env = { GREETING = \"hi\" }"),
        field("secret_env", Kind::StrArray, "secret_env = [\"API_KEY\"]"),
        field("timeout", Kind::Str, "timeout = \"10m\""),
    ],
};

static IMAGE: Section = Section {
    title: "image",
    fields: &[
        field("kernel", Kind::Str, "kernel = \"vmlinux\""),
        field("initrd", Kind::Str, "initrd = \"initrd.img\""),
        field("cmdline", Kind::Str, "cmdline = \"console=ttyS0\""),
        field("disk", Kind::Str, "disk = \"base.qcow2\""),
    ],
};

static BROKER: Section = Section {
    title: "[broker]",
    fields: &[
        field("port", Kind::Int, "port = 7750"),
        field(
            "allow_tokenless_handshake",
            Kind::Bool,
            "allow_tokenless_handshake = false",
        ),
    ],
};

static LIFECYCLE: Section = Section {
    title: "[lifecycle]",
    fields: &[
        field("powerdown_wait", Kind::Str, "powerdown_wait = \"20s\""),
        field("sigterm_wait", Kind::Str, "sigterm_wait = \"5s\""),
    ],
};

/// Checks the whole document; problems come back in file order.
pub(crate) fn check(root: &DeTable<'_>) -> Vec<Problem> {
    let mut out = Vec::new();
    check_table(root, &ROOT, &mut out);
    out.sort_by_key(|p| p.span.as_ref().map_or(0, |s| s.start));
    out
}

fn check_table(table: &DeTable<'_>, section: &'static Section, out: &mut Vec<Problem>) {
    for (key, value) in table.iter() {
        match section
            .fields
            .iter()
            .find(|f| f.key == key.get_ref().as_ref())
        {
            Some(f) => check_value(value, f, section, out),
            None => out.push(unknown_key(key, value, section)),
        }
    }
}

fn unknown_key(
    key: &Spanned<std::borrow::Cow<'_, str>>,
    value: &Spanned<DeValue<'_>>,
    section: &Section,
) -> Problem {
    let name = key.get_ref().as_ref();
    let keys: Vec<&str> = section.fields.iter().map(|f| f.key).collect();
    let at_root = std::ptr::eq(section, &ROOT);
    let is_table = value.get_ref().as_table().is_some() || is_array_of_tables(value.get_ref());
    let message = if at_root && is_table {
        format!("unknown table [{name}]")
    } else if at_root {
        format!("unknown key \"{name}\" at the top level")
    } else {
        format!("unknown key \"{name}\" in {}", section.title)
    };
    let help = match closest(name, &keys) {
        Some(best) if at_root => {
            let example = section
                .fields
                .iter()
                .find(|f| f.key == best)
                .map_or(best, |f| f.example);
            format!("did you mean {example}?")
        }
        Some(best) => {
            // Never suggest a key the value cannot go in without saying so.
            let field = section.fields.iter().find(|f| f.key == best);
            match field.filter(|f| !fits(f.kind, value.get_ref())) {
                Some(f) => format!(
                    "did you mean \"{best}\"? it takes {}: {}",
                    kind_words(f.kind),
                    f.example
                ),
                None => format!("did you mean \"{best}\"?"),
            }
        }
        None => {
            let homes: Vec<&str> = [&PROJECT, &VMS, &BROKER, &LIFECYCLE, &BOOTSTRAP]
                .into_iter()
                .filter(|s| at_root && s.fields.iter().any(|f| f.key == name))
                .map(|s| s.title)
                .collect();
            if homes.is_empty() {
                format!("expected one of {}", one_of(&keys))
            } else {
                format!(
                    "\"{name}\" belongs in {}: move it there",
                    homes.join(" or ")
                )
            }
        }
    };
    Problem::new(message, key.span()).help(help)
}

/// Whether a value has the shape a key of `kind` takes.
fn fits(kind: Kind, v: &DeValue<'_>) -> bool {
    match kind {
        Kind::Str => v.is_str(),
        Kind::Int => v.is_integer(),
        Kind::Bool => v.is_bool(),
        Kind::Size => v.is_str() || v.is_integer(),
        Kind::StrArray => v.as_array().is_some(),
        Kind::StrMap | Kind::Table(_) | Kind::NamedTables(_) => v.as_table().is_some(),
        Kind::Image => v.is_str() || v.as_table().is_some(),
        Kind::Tables(_) => v.as_array().is_some() || v.as_table().is_some(),
    }
}

fn kind_words(kind: Kind) -> &'static str {
    match kind {
        Kind::Str => "a string",
        Kind::Int => "a whole number",
        Kind::Bool => "true or false",
        Kind::Size => "a size",
        Kind::StrArray => "an array of strings",
        Kind::StrMap => "a table of strings",
        Kind::Image => "\"default\" or a table",
        Kind::Table(_) => "a table",
        Kind::Tables(_) => "an array of tables",
        Kind::NamedTables(_) => "a table of tables",
    }
}

fn is_array_of_tables(v: &DeValue<'_>) -> bool {
    v.as_array()
        .is_some_and(|a| !a.is_empty() && a.iter().all(|i| i.get_ref().as_table().is_some()))
}

fn check_value(value: &Spanned<DeValue<'_>>, f: &Field, section: &Section, out: &mut Vec<Problem>) {
    let v = value.get_ref();
    let wrong = |want: &str| {
        let place = if std::ptr::eq(section, &ROOT) {
            format!("[{}]", f.key)
        } else {
            format!("\"{}\" in {}", f.key, section.title)
        };
        Problem::new(
            format!("{place} must be {want}, found {}", article(v)),
            value.span(),
        )
        .help(format!("for example: {}", f.example))
    };
    match f.kind {
        Kind::Str if v.is_str() => {}
        Kind::Str => out.push(wrong("a string")),
        Kind::Int | Kind::Size if v.as_integer().is_some_and(|i| !fits_i64(i)) => {
            out.push(
                Problem::new(
                    format!("\"{}\" in {} is far too large", f.key, section.title),
                    value.span(),
                )
                .help(format!("for example: {}", f.example)),
            )
        }
        Kind::Int if v.is_integer() => {}
        Kind::Int => out.push(wrong("a whole number")),
        Kind::Bool if v.is_bool() => {}
        Kind::Bool => out.push(wrong("true or false")),
        Kind::Size if v.is_str() || v.is_integer() => {}
        Kind::Size => out.push(wrong("a size")),
        Kind::StrArray => match v.as_array() {
            Some(items) => {
                for item in items.iter().filter(|i| !i.get_ref().is_str()) {
                    out.push(
                        Problem::new(
                            format!(
                                "each entry of \"{}\" in {} must be a string, found {}",
                                f.key,
                                section.title,
                                article(item.get_ref())
                            ),
                            item.span(),
                        )
                        .help(format!("for example: {}", f.example)),
                    );
                }
            }
            None => out.push(wrong("an array of strings")),
        },
        Kind::StrMap => match v.as_table() {
            Some(t) => {
                for (_, item) in t.iter().filter(|(_, i)| !i.get_ref().is_str()) {
                    out.push(
                        Problem::new(
                            format!(
                                "each value of \"{}\" in {} must be a string, found {}",
                                f.key,
                                section.title,
                                article(item.get_ref())
                            ),
                            item.span(),
                        )
                        .help(format!("quote it: {}", f.example)),
                    );
                }
            }
            None => out.push(wrong("a table of strings")),
        },
        Kind::Image => match v.as_table() {
            Some(t) => check_table(t, &IMAGE, out),
            None if v.is_str() => {}
            None => out.push(
                wrong("\"default\" or a table").help(
                    "write image = \"default\", image = { kernel = \"vmlinux\", initrd = \"initrd.img\" } or image = { disk = \"base.qcow2\" }",
                ),
            ),
        },
        Kind::Table(s) => match v.as_table() {
            Some(t) => check_table(t, s, out),
            None if is_array_of_tables(v) => out.push(
                wrong("a single table")
                    .help(format!("write {} with single brackets: there is only one", f.example)),
            ),
            None => out.push(wrong("a table")),
        },
        Kind::Tables(s) => match v.as_array() {
            Some(items) => {
                for item in items.iter() {
                    match item.get_ref().as_table() {
                        Some(t) => check_table(t, s, out),
                        None => out.push(
                            Problem::new(
                                format!(
                                    "each entry of [{}] must be a table, found {}",
                                    f.key,
                                    article(item.get_ref())
                                ),
                                item.span(),
                            )
                            .help(format!("write one {} table per entry", f.example)),
                        ),
                    }
                }
            }
            None if v.as_table().is_some() => out.push(
                wrong("an array of tables")
                    .help(format!("write each entry as {} (double brackets)", f.example)),
            ),
            None => out.push(wrong("an array of tables")),
        },
        Kind::NamedTables(s) => match v.as_table() {
            Some(t) => {
                for (name, item) in t.iter() {
                    match item.get_ref().as_table() {
                        Some(t) => check_table(t, s, out),
                        None => out.push(
                            Problem::new(
                                format!(
                                    "[{}.{}] must be a table, found {}",
                                    f.key,
                                    name.get_ref(),
                                    article(item.get_ref())
                                ),
                                item.span(),
                            )
                            .help(format!(
                                "write it as a table: [{}.{}] then {}",
                                f.key,
                                name.get_ref(),
                                s.fields[0].example
                            )),
                        ),
                    }
                }
            }
            None => out.push(wrong("a table of tables")),
        },
    }
}

fn fits_i64(i: &toml::de::DeInteger<'_>) -> bool {
    i64::from_str_radix(i.as_str(), i.radix()).is_ok()
}

fn article(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}
