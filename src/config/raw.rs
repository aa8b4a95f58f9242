//! serde input types: `castra.toml` exactly as written, every value wrapped in
//! `toml::Spanned` so `validate` can point at it. Unknown keys are refused
//! (`deny_unknown_fields`); numbers stay `i64` and sizes, durations, machines
//! and accelerators stay strings, so range and spelling errors are reported
//! by `validate` with a fix instead of by serde. Nothing here is seen outside
//! the config module.

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use std::fmt;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub project: Option<Spanned<RawProject>>,
    #[serde(default)]
    pub vms: Vec<Spanned<RawVm>>,
    pub broker: Option<Spanned<RawBroker>>,
    pub lifecycle: Option<Spanned<RawLifecycle>>,
    pub bootstrap: Option<Spanned<RawBootstrap>>,
    /// `[hosts.NAME]` tables, by name.
    pub hosts: Option<std::collections::BTreeMap<Spanned<String>, Spanned<RawHost>>>,
}

/// `[hosts.NAME]`: a libvirt host VMs can be placed on (`host = "NAME"`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHost {
    pub uri: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProject {
    pub name: Option<Spanned<String>>,
    pub state_dir: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVm {
    pub name: Option<Spanned<String>>,
    pub cpus: Option<Spanned<i64>>,
    pub memory: Option<Spanned<SizeInput>>,
    pub image: Option<Spanned<RawImage>>,
    pub machine: Option<Spanned<String>>,
    pub accel: Option<Spanned<String>>,
    pub forwards: Option<Vec<Spanned<String>>>,
    pub count: Option<Spanned<i64>>,
    pub bootstrap: Option<Spanned<RawBootstrap>>,
    pub shares: Option<Vec<Spanned<RawShare>>>,
    pub host: Option<Spanned<String>>,
}

/// `shares = [{ host = "flake", guest = "/mnt/flake", tag = "flake", readonly = true }]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawShare {
    pub host: Option<Spanned<String>>,
    pub tag: Option<Spanned<String>>,
    pub guest: Option<Spanned<String>>,
    pub readonly: Option<bool>,
}

/// `bootstrap = { run = "...", mode = "auto", env = { K = "v" } }` in a VM,
/// or `[bootstrap]` as the project default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBootstrap {
    pub script: Option<Spanned<String>>,
    pub run: Option<Spanned<String>>,
    pub flake: Option<Spanned<String>>,
    pub nixos: Option<Spanned<String>>,
    pub mode: Option<Spanned<String>>,
    pub env: Option<std::collections::BTreeMap<Spanned<String>, Spanned<String>>>,
    pub secret_env: Option<Vec<Spanned<String>>>,
    pub timeout: Option<Spanned<String>>,
}

/// `memory = "512M"` or `memory = 512` (MiB).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SizeInput {
    Text(String),
    Int(i64),
}

impl<'de> Deserialize<'de> for SizeInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SizeInput;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"512M\" or \"1G\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SizeInput, E> {
                Ok(SizeInput::Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SizeInput, E> {
                Ok(SizeInput::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SizeInput, E> {
                i64::try_from(v)
                    .map(SizeInput::Int)
                    .map_err(|_| E::custom("size is too large"))
            }
        }
        d.deserialize_any(V)
    }
}

/// `image = "default"` or `image = { kernel = ... }` / `image = { disk = ... }`.
#[derive(Debug)]
pub(crate) enum RawImage {
    Named(String),
    Table(RawImageTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawImageTable {
    pub kernel: Option<Spanned<String>>,
    pub initrd: Option<Spanned<String>>,
    pub cmdline: Option<Spanned<String>>,
    pub disk: Option<Spanned<String>>,
}

impl<'de> Deserialize<'de> for RawImage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawImage;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"default\" or a table such as { kernel = \"vmlinux\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawImage, E> {
                Ok(RawImage::Named(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawImage, A::Error> {
                RawImageTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawImage::Table)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBroker {
    pub port: Option<Spanned<i64>>,
    pub allow_tokenless_handshake: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLifecycle {
    pub powerdown_wait: Option<Spanned<String>>,
    pub sigterm_wait: Option<Spanned<String>>,
}
