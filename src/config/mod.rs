//! Validated project configuration: the types every other module consumes,
//! and the `castra.toml` loader that produces them.
//!
//! `castra.toml` is found by [`discover`], read by [`load`] (or [`load_str`]
//! for text already in memory), checked key by key in `schema`, deserialized
//! into the serde input types of `raw` and turned into a [`Project`] by
//! `validate`. Every problem is reported with file, line, column and a fix
//! (see [`ConfigError`]). Nothing outside this module sees the raw serde
//! types; nothing inside it does I/O beyond finding and reading the one
//! config file: referenced kernels and disks are not checked here.

mod bootstrap;
mod cross_checks;
mod diagnostic;
mod discover;
mod duration;
mod forward;
mod hosts;
mod legacy;
mod load;
#[cfg(test)]
mod load_tests;
mod model;
mod names;
mod paths;
mod places;
pub mod project_ports;
mod raw;
mod schema;
pub mod share_table;
mod shares;
mod size;
mod suggest;
mod template;
mod validate;

pub use diagnostic::{ConfigError, Diagnostic, Location};
pub use discover::{CONFIG_FILE_NAME, discover};
pub use duration::{format_duration, parse_duration};
pub use load::{load, load_str};
pub use names::MAX_NAME_LEN;
pub use places::{Key, Places};
pub use project_ports::{PortBlock, block_for, default_broker_port};
pub use shares::{MAX_TAG_LEN, default_tag};
pub use size::{ByteSize, parse_size};
pub use template::init_template;

pub use model::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accel_parses_from_env_style_strings() {
        assert_eq!("auto".parse(), Ok(AccelChoice::Auto));
        assert_eq!(" KVM\n".parse(), Ok(AccelChoice::Kvm));
        assert_eq!("Tcg".parse(), Ok(AccelChoice::Tcg));
        let err = "tgc".parse::<AccelChoice>().unwrap_err();
        assert_eq!(err.suggestion, Some("tcg"));
        assert_eq!(
            err.to_string(),
            "unknown accelerator \"tgc\": expected \"auto\", \"kvm\" or \"tcg\" (did you mean \"tcg\"?)"
        );
        let err = "hvf".parse::<AccelChoice>().unwrap_err();
        assert_eq!(err.suggestion, None);
        for a in AccelChoice::ALL {
            assert_eq!(a.to_string().parse(), Ok(a));
        }
    }

    #[test]
    fn machine_parses() {
        assert_eq!("microvm".parse(), Ok(Machine::Microvm));
        assert_eq!("Q35".parse(), Ok(Machine::Q35));
        let err = "pc".parse::<Machine>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown machine \"pc\": expected \"microvm\" or \"q35\""
        );
        assert_eq!(
            "mircovm".parse::<Machine>().unwrap_err().suggestion,
            Some("microvm")
        );
    }

    #[test]
    fn forward_display_brackets_ipv6() {
        let f = Forward {
            proto: Proto::Udp,
            host_addr: "::1".parse().unwrap(),
            host_port: 5353,
            guest_port: 53,
        };
        assert_eq!(f.to_string(), "[::1]:5353->53/udp");
    }
}
