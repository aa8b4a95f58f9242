//! The pure core of bootstrap: the fingerprint of a plan and the mode
//! decision table (does this apply run the bootstrap of a VM, and why).
//!
//! **Invariant:** no I/O, no clock: same inputs, same answer.

use std::collections::BTreeMap;
use std::fmt;

use sha2::{Digest, Sha256};

use super::record::{BootstrapRecord, RunState};
use crate::config::BootstrapMode;

/// Fingerprint of what a bootstrap runs: its kind, the shell text and every
/// env value (secret ones included, only as part of the hash).
pub fn fingerprint(kind: &str, script: &str, env: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for part in [kind, script] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    for (k, v) in env {
        h.update(k.as_bytes());
        h.update([b'=']);
        h.update(v.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..8])
}

/// The VM launch a bootstrap would run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// Running since `launched_ms` and not touched by this apply.
    Running { launched_ms: u64 },
    /// This apply (re)starts it.
    Starting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Run(RunWhy),
    Skip(SkipWhy),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunWhy {
    /// `always`.
    Always,
    NeverRan,
    /// The plan's fingerprint differs from the last run's.
    Changed,
    /// The VM was (or is being) relaunched since the last run: a new guest.
    Relaunched,
    LastFailed,
    /// The last run was requested but never finished.
    Interrupted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipWhy {
    /// `skip`.
    ModeSkip,
    /// `auto` and the last run in this launch, of this plan, succeeded.
    UpToDate,
}

/// The mode decision table.
pub fn decide(
    mode: BootstrapMode,
    fingerprint: &str,
    launch: Launch,
    last: Option<&BootstrapRecord>,
) -> Decision {
    match mode {
        BootstrapMode::Skip => return Decision::Skip(SkipWhy::ModeSkip),
        BootstrapMode::Always => return Decision::Run(RunWhy::Always),
        BootstrapMode::Auto => {}
    }
    let Some(last) = last else {
        return Decision::Run(RunWhy::NeverRan);
    };
    if last.fingerprint != fingerprint {
        return Decision::Run(RunWhy::Changed);
    }
    match launch {
        Launch::Starting => return Decision::Run(RunWhy::Relaunched),
        Launch::Running { launched_ms } if launched_ms != last.launch_ms => {
            return Decision::Run(RunWhy::Relaunched);
        }
        Launch::Running { .. } => {}
    }
    match last.state {
        RunState::Ok => Decision::Skip(SkipWhy::UpToDate),
        RunState::Failed => Decision::Run(RunWhy::LastFailed),
        RunState::Running => Decision::Run(RunWhy::Interrupted),
    }
}

impl fmt::Display for RunWhy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunWhy::Always => "always",
            RunWhy::NeverRan => "auto: never ran",
            RunWhy::Changed => "auto: plan changed",
            RunWhy::Relaunched => "auto: new VM launch",
            RunWhy::LastFailed => "auto: last run failed",
            RunWhy::Interrupted => "auto: last run did not finish",
        })
    }
}

impl fmt::Display for SkipWhy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipWhy::ModeSkip => "skip",
            SkipWhy::UpToDate => "auto: done for this plan and launch",
        })
    }
}

/// One bootstrap this apply would run: prints as `> bootstrap web (auto: never ran)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub vm: String,
    pub kind: String,
    pub why: RunWhy,
    pub fingerprint: String,
}

impl fmt::Display for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "> bootstrap {} ({}, {})", self.vm, self.why, self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BootstrapMode::*;

    fn last(fp: &str, launch_ms: u64, state: RunState) -> BootstrapRecord {
        BootstrapRecord {
            run: "r".into(),
            state,
            fingerprint: fp.into(),
            mode: Auto,
            kind: "run".into(),
            launch_ms,
            started_ms: 0,
            finished_ms: None,
            exit_code: None,
            error: None,
            log: String::new(),
        }
    }

    #[test]
    fn decision_table() {
        let up = Launch::Running { launched_ms: 10 };
        let ok = last("fp", 10, RunState::Ok);
        let cases: Vec<(BootstrapMode, &str, Launch, Option<BootstrapRecord>, &str)> = vec![
            (Skip, "fp", up, None, "skip: skip"),
            (
                Skip,
                "fp",
                Launch::Starting,
                Some(last("old", 1, RunState::Failed)),
                "skip: skip",
            ),
            (Always, "fp", up, Some(ok.clone()), "run: always"),
            (Always, "fp", up, None, "run: always"),
            (Auto, "fp", up, None, "run: auto: never ran"),
            (Auto, "fp", Launch::Starting, None, "run: auto: never ran"),
            (
                Auto,
                "fp",
                up,
                Some(ok.clone()),
                "skip: auto: done for this plan and launch",
            ),
            (Auto, "fp2", up, Some(ok.clone()), "run: auto: plan changed"),
            (
                Auto,
                "fp",
                Launch::Running { launched_ms: 11 },
                Some(ok.clone()),
                "run: auto: new VM launch",
            ),
            (
                Auto,
                "fp",
                Launch::Starting,
                Some(ok.clone()),
                "run: auto: new VM launch",
            ),
            (
                Auto,
                "fp",
                up,
                Some(last("fp", 10, RunState::Failed)),
                "run: auto: last run failed",
            ),
            (
                Auto,
                "fp",
                up,
                Some(last("fp", 10, RunState::Running)),
                "run: auto: last run did not finish",
            ),
            (
                Auto,
                "fp2",
                up,
                Some(last("fp", 10, RunState::Failed)),
                "run: auto: plan changed",
            ),
        ];
        let table: Vec<String> = cases
            .iter()
            .map(
                |(mode, fp, launch, last, _)| match decide(*mode, fp, *launch, last.as_ref()) {
                    Decision::Run(why) => format!("run: {why}"),
                    Decision::Skip(why) => format!("skip: {why}"),
                },
            )
            .collect();
        let want: Vec<&str> = cases.iter().map(|c| c.4).collect();
        assert_eq!(table, want);
    }

    #[test]
    fn fingerprint_covers_kind_text_and_env() {
        let env = |v: &str| -> BTreeMap<String, String> { [("K".to_owned(), v.to_owned())].into() };
        let base = fingerprint("run", "echo hi", &env("1"));
        assert_eq!(base, fingerprint("run", "echo hi", &env("1")));
        assert_eq!(base.len(), 16);
        for other in [
            fingerprint("script", "echo hi", &env("1")),
            fingerprint("run", "echo ho", &env("1")),
            fingerprint("run", "echo hi", &env("2")),
            fingerprint("run", "echo hi", &BTreeMap::new()),
            // No ambiguity between the parts.
            fingerprint("run", "echo hiK=1", &BTreeMap::new()),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn pending_prints_itself() {
        let p = Pending {
            vm: "web".into(),
            kind: "script".into(),
            why: RunWhy::NeverRan,
            fingerprint: "ab".into(),
        };
        insta::assert_snapshot!(p.to_string(), @"> bootstrap web (auto: never ran, script)");
    }
}
