//! Turns the requested accelerator (`auto|kvm|tcg`) into the one a VM runs with.
//!
//! `auto` must never hang. `/dev/kvm` can open fine and KVM still be unusable
//! (on some hosts guests spin forever; on others `-cpu host` crashes QEMU),
//! and tiny stubs succeed where Linux does not, so `auto` boots the real
//! kernel under KVM with the exact `-accel kvm -cpu host` castra would launch
//! and waits (bounded, ~3 s) for the first byte on the serial console: any
//! byte means KVM works; silence, an error or a crash means TCG. The probe
//! QEMU is always killed. The answer is cached in `<cache dir>/accel-probe.json`
//! keyed by the host's boot id, the QEMU binary (path and mtime) and the probe
//! kernel (path and mtime), so only the first `apply` after boot pays.
//!
//! Policy for an explicit `kvm`: the user asked, so the answer is always KVM
//! and never a probe; the reason carries the risk (no usable `/dev/kvm`: QEMU
//! will refuse to start; a cached failed probe on this boot: guests may hang).
//! `tcg` is taken as is. Reading `CASTRA_ACCEL` is the caller's job.

use crate::config::AccelChoice;
use crate::qemu::{Accel, qemu_binary};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, UNIX_EPOCH};

/// Name of the cache file inside the cache directory.
pub const PROBE_CACHE_FILE: &str = "accel-probe.json";
/// How long the probe waits for the kernel's first console byte (TCG needs
/// ~0.3 s for it here; KVM, when it works, far less).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// The accelerator arguments the probe tests: the same as `argv.rs` uses for KVM.
const KVM_ARGS: &[&str] = &["-accel", "kvm", "-cpu", "host"];

/// The accelerator to use and why, for status and logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelDecision {
    pub accel: Accel,
    pub reason: String,
}

/// Resolves `choice` on this host. `probe_kernel` is a kernel `auto` may boot
/// under KVM to test it (castra's default image kernel); without one `auto`
/// falls back to TCG.
pub fn resolve(choice: AccelChoice, probe_kernel: Option<&Path>) -> AccelDecision {
    let host = Host {
        kvm_dev: PathBuf::from("/dev/kvm"),
        qemu: qemu_binary(),
        cache_file: Some(crate::cache::root().join(PROBE_CACHE_FILE)),
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        probe_args: KVM_ARGS,
        probe_timeout: PROBE_TIMEOUT,
    };
    host.resolve(choice, probe_kernel)
}

/// Everything about the host the decision depends on (injectable for tests).
struct Host {
    kvm_dev: PathBuf,
    qemu: PathBuf,
    cache_file: Option<PathBuf>,
    boot_id: String,
    probe_args: &'static [&'static str],
    probe_timeout: Duration,
}

/// What the cache remembers: the inputs a probe ran with and its verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CacheEntry {
    boot_id: String,
    qemu: PathBuf,
    qemu_mtime_ns: u128,
    kernel: PathBuf,
    kernel_mtime_ns: u128,
    decision: AccelDecision,
    /// What the probe saw, without the decision's wording.
    probe: String,
}

impl Host {
    fn resolve(&self, choice: AccelChoice, probe_kernel: Option<&Path>) -> AccelDecision {
        let decide = |accel, reason: String| AccelDecision { accel, reason };
        match choice {
            AccelChoice::Tcg => decide(Accel::Tcg, "tcg requested".into()),
            AccelChoice::Kvm => {
                if let Err(why) = kvm_usable(&self.kvm_dev) {
                    return decide(
                        Accel::Kvm,
                        format!(
                            "kvm requested, but {why}: qemu will fail to start; use accel = \"auto\" or \"tcg\""
                        ),
                    );
                }
                let cached = probe_kernel
                    .and_then(|k| self.cache_key(k))
                    .and_then(|key| self.cached(&key));
                match cached {
                    Some(e) if e.decision.accel == Accel::Tcg => decide(
                        Accel::Kvm,
                        format!(
                            "kvm requested; warning: this boot's kvm probe failed ({}), guests may hang",
                            e.probe
                        ),
                    ),
                    _ => decide(Accel::Kvm, "kvm requested".into()),
                }
            }
            AccelChoice::Auto => {
                if let Err(why) = kvm_usable(&self.kvm_dev) {
                    return decide(Accel::Tcg, format!("auto: {why}; using tcg"));
                }
                let Some(kernel) = probe_kernel else {
                    return decide(
                        Accel::Tcg,
                        "auto: no kernel to probe kvm with; using tcg".into(),
                    );
                };
                let Some(key) = self.cache_key(kernel) else {
                    return decide(
                        Accel::Tcg,
                        format!(
                            "auto: cannot probe kvm ({} or {} is missing); using tcg",
                            self.qemu.display(),
                            kernel.display()
                        ),
                    );
                };
                if let Some(e) = self.cached(&key) {
                    return AccelDecision {
                        reason: format!("{} (probed earlier this boot)", e.decision.reason),
                        ..e.decision
                    };
                }
                let (decision, probe) =
                    match probe_boot(&key.qemu, self.probe_args, kernel, self.probe_timeout) {
                        Ok(after) => {
                            let probe =
                                format!("the probe guest printed after {} ms", after.as_millis());
                            (
                                decide(Accel::Kvm, format!("auto: {probe} under kvm")),
                                probe,
                            )
                        }
                        Err(why) => (
                            decide(Accel::Tcg, format!("auto: kvm unusable ({why}); using tcg")),
                            why,
                        ),
                    };
                self.store(CacheEntry {
                    decision: decision.clone(),
                    probe,
                    ..key
                });
                decision
            }
        }
    }

    /// The cache key for a probe with `kernel`, or None if qemu or the kernel is missing.
    fn cache_key(&self, kernel: &Path) -> Option<CacheEntry> {
        let qemu = find_in_path(&self.qemu)?;
        Some(CacheEntry {
            boot_id: self.boot_id.clone(),
            qemu_mtime_ns: mtime_ns(&qemu)?,
            qemu,
            kernel_mtime_ns: mtime_ns(kernel)?,
            kernel: kernel.to_path_buf(),
            decision: AccelDecision {
                accel: Accel::Tcg,
                reason: String::new(),
            },
            probe: String::new(),
        })
    }

    fn cached(&self, key: &CacheEntry) -> Option<CacheEntry> {
        let text = std::fs::read_to_string(self.cache_file.as_ref()?).ok()?;
        let entry: CacheEntry = serde_json::from_str(&text).ok()?;
        let same = entry.boot_id == key.boot_id
            && !key.boot_id.is_empty()
            && entry.qemu == key.qemu
            && entry.qemu_mtime_ns == key.qemu_mtime_ns
            && entry.kernel == key.kernel
            && entry.kernel_mtime_ns == key.kernel_mtime_ns;
        same.then_some(entry)
    }

    /// Best effort: a cache that cannot be written only costs the next probe.
    fn store(&self, entry: CacheEntry) {
        let Some(file) = &self.cache_file else { return };
        let Ok(json) = serde_json::to_string_pretty(&entry) else {
            return;
        };
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = crate::fsutil::write_atomic(file, (json + "\n").as_bytes());
    }
}

/// Ok if `dev` opens read-write, else why not.
fn kvm_usable(dev: &Path) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map(|_| ())
        .map_err(|e| format!("{} is not usable ({e})", dev.display()))
}

/// Boots `kernel` with `accel_args` and waits up to `timeout` for the first
/// byte on its serial console. Ok(time to first byte), or why not. The QEMU
/// is killed before returning, whatever happened.
fn probe_boot(
    qemu: &Path,
    accel_args: &[&str],
    kernel: &Path,
    timeout: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    let mut child = Command::new(qemu)
        .args(["-M", "microvm"])
        .args(accel_args)
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot", "-m", "128"])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 earlyprintk=ttyS0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;

    let (tx, rx) = mpsc::channel();
    let readers = [
        child.stdout.take().map(|mut out| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut byte = [0u8; 1];
                let got = matches!(out.read(&mut byte), Ok(1));
                let _ = tx.send(got);
                String::new()
            })
        }),
        child.stderr.take().map(|mut err| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = err.by_ref().take(64 * 1024).read_to_string(&mut text);
                text
            })
        }),
    ];
    drop(tx);
    let first_byte = rx.recv_timeout(timeout);
    let elapsed = start.elapsed();
    let _ = child.kill();
    let status = child.wait();
    let mut stderr = String::new();
    for r in readers.into_iter().flatten() {
        stderr.push_str(&r.join().unwrap_or_default());
    }
    match first_byte {
        Ok(true) => Ok(elapsed),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
            "the probe guest printed nothing within {} ms",
            timeout.as_millis()
        )),
        // Stdout closed without a byte: QEMU refused to start or crashed.
        Ok(false) | Err(mpsc::RecvTimeoutError::Disconnected) => {
            let last = stderr
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .find(|l| l.contains("error") || l.contains("could not"))
                .or_else(|| stderr.lines().rev().find(|l| !l.trim().is_empty()))
                .map(str::to_string);
            Err(match (last, status) {
                (Some(line), _) => format!("qemu failed: {line}"),
                (None, Ok(s)) => format!("qemu exited ({s}) before printing"),
                (None, Err(e)) => format!("qemu failed: {e}"),
            })
        }
    }
}

/// `qemu` as an absolute path: as given if it names a file, else found in $PATH.
fn find_in_path(qemu: &Path) -> Option<PathBuf> {
    if qemu.components().count() > 1 {
        return qemu.is_file().then(|| qemu.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(qemu))
        .find(|p| p.is_file())
}

fn mtime_ns(path: &Path) -> Option<u128> {
    let t = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PVH ELF32 (loaded at 1 MiB) whose code is `code` followed by
    /// `cli; hlt; jmp .-1`.
    fn pvh_stub(code: &[u8]) -> Vec<u8> {
        const BASE: u32 = 0x10_0000;
        const NOTE_OFF: u32 = 52 + 2 * 32;
        const CODE_OFF: u32 = NOTE_OFF + 20;
        let mut body = code.to_vec();
        body.extend_from_slice(&[0xfa, 0xf4, 0xeb, 0xfd]);
        let size = CODE_OFF + body.len() as u32;
        let entry = BASE + CODE_OFF;
        let mut b = vec![0x7f, b'E', b'L', b'F', 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        for v in [2u16, 3] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for v in [1u32, entry, 52, 0, 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for v in [52u16, 32, 2, 40, 0, 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let load = [1, 0, BASE, BASE, size, size, 5, 0x1000];
        let note = [4, NOTE_OFF, BASE + NOTE_OFF, BASE + NOTE_OFF, 20, 20, 4, 4];
        for v in load.into_iter().chain(note).chain([4, 4, 18]) {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(b"Xen\0");
        b.extend_from_slice(&entry.to_le_bytes());
        b.extend_from_slice(&body);
        b
    }

    /// `mov dx, 0x3f8; mov al, 'K'; out dx, al`: one byte on COM1.
    const PRINT_K: &[u8] = &[0x66, 0xba, 0xf8, 0x03, 0xb0, b'K', 0xee];
    const TCG_ARGS: &[&str] = &["-accel", "tcg", "-cpu", "max"];

    fn write_stub(dir: &Path, name: &str, code: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, pvh_stub(code)).unwrap();
        p
    }

    fn host(dir: &Path, kvm_dev: PathBuf, probe_args: &'static [&'static str]) -> Host {
        Host {
            kvm_dev,
            qemu: qemu_binary(),
            cache_file: Some(dir.join("cache").join(PROBE_CACHE_FILE)),
            boot_id: "boot-1".into(),
            probe_args,
            probe_timeout: Duration::from_millis(1500),
        }
    }

    /// A regular file stands in for an openable /dev/kvm.
    fn fake_kvm(dir: &Path) -> PathBuf {
        let p = dir.join("kvm");
        std::fs::write(&p, "").unwrap();
        p
    }

    #[test]
    fn probe_sees_the_first_console_byte() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = write_stub(dir.path(), "print.elf", PRINT_K);
        // Ok means the byte came before the probe's own 10 s timeout.
        let took = probe_boot(&qemu_binary(), TCG_ARGS, &kernel, Duration::from_secs(10)).unwrap();
        assert!(took < Duration::from_secs(10), "{took:?}");
    }

    #[test]
    fn a_silent_guest_times_out_and_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = write_stub(dir.path(), "silent.elf", &[]);
        let start = Instant::now();
        let err = probe_boot(
            &qemu_binary(),
            TCG_ARGS,
            &kernel,
            Duration::from_millis(700),
        )
        .unwrap_err();
        assert_eq!(err, "the probe guest printed nothing within 700 ms");
        // A bound that only catches a hang (the guest itself never ends).
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn a_qemu_that_fails_to_start_reports_its_error_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let err = probe_boot(
            &qemu_binary(),
            TCG_ARGS,
            &dir.path().join("nope"),
            Duration::from_secs(120),
        )
        .unwrap_err();
        assert!(err.starts_with("qemu failed: "), "{err}");
        assert!(err.contains("could not open kernel file"), "{err}");
        // Not after the probe's 120 s timeout (a generous bound, not a figure).
        assert!(start.elapsed() < Duration::from_secs(60));
    }

    #[test]
    fn explicit_choices_never_probe() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path(), dir.path().join("no-kvm"), TCG_ARGS);
        let kernel = write_stub(dir.path(), "print.elf", PRINT_K);
        assert_eq!(
            h.resolve(AccelChoice::Tcg, Some(&kernel)),
            AccelDecision {
                accel: Accel::Tcg,
                reason: "tcg requested".into()
            }
        );
        let d = h.resolve(AccelChoice::Kvm, Some(&kernel));
        assert_eq!(d.accel, Accel::Kvm);
        assert!(d.reason.starts_with("kvm requested, but "), "{}", d.reason);
        assert!(d.reason.contains("qemu will fail to start"), "{}", d.reason);
        assert!(!dir.path().join("cache").exists(), "no probe ran");
    }

    #[test]
    fn auto_without_kvm_or_kernel_is_tcg_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = write_stub(dir.path(), "print.elf", PRINT_K);
        let no_kvm = host(dir.path(), dir.path().join("no-kvm"), TCG_ARGS);
        let d = no_kvm.resolve(AccelChoice::Auto, Some(&kernel));
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.reason.contains("no-kvm is not usable"), "{}", d.reason);

        let h = host(dir.path(), fake_kvm(dir.path()), TCG_ARGS);
        assert_eq!(
            h.resolve(AccelChoice::Auto, None),
            AccelDecision {
                accel: Accel::Tcg,
                reason: "auto: no kernel to probe kvm with; using tcg".into()
            }
        );
    }

    #[test]
    fn auto_probes_once_per_boot_and_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let printing = write_stub(dir.path(), "print.elf", PRINT_K);
        let silent = write_stub(dir.path(), "silent.elf", &[]);
        // The probe runs with TCG here (KVM hangs on CI hosts), which is
        // enough to exercise the decision and its cache.
        let mut h = host(dir.path(), fake_kvm(dir.path()), TCG_ARGS);

        let first = h.resolve(AccelChoice::Auto, Some(&printing));
        assert_eq!(first.accel, Accel::Kvm, "{}", first.reason);
        assert!(
            first
                .reason
                .starts_with("auto: the probe guest printed after")
        );
        assert!(first.reason.ends_with(" ms under kvm"), "{}", first.reason);

        // A cache hit boots no qemu: the decision says it comes from the
        // cache (below), and the cache file was not written again.
        let cache = h.cache_file.clone().unwrap();
        let written = std::fs::read(&cache).unwrap();
        let modified = std::fs::metadata(&cache).unwrap().modified().unwrap();
        let again = h.resolve(AccelChoice::Auto, Some(&printing));
        assert_eq!(std::fs::read(&cache).unwrap(), written);
        assert_eq!(
            std::fs::metadata(&cache).unwrap().modified().unwrap(),
            modified
        );
        assert_eq!(again.accel, Accel::Kvm, "{}", again.reason);
        assert_eq!(
            again.reason,
            format!("{} (probed earlier this boot)", first.reason)
        );

        // Another kernel is another key: probed again, and this one stays silent.
        let other = h.resolve(AccelChoice::Auto, Some(&silent));
        assert_eq!(other.accel, Accel::Tcg);
        assert_eq!(
            other.reason,
            "auto: kvm unusable (the probe guest printed nothing within 1500 ms); using tcg"
        );
        // An explicit kvm request is granted, with this boot's warning.
        let kvm = h.resolve(AccelChoice::Kvm, Some(&silent));
        assert_eq!(kvm.accel, Accel::Kvm);
        assert_eq!(
            kvm.reason,
            "kvm requested; warning: this boot's kvm probe failed (the probe guest printed nothing within 1500 ms), guests may hang"
        );

        // After a reboot the cache no longer applies.
        h.boot_id = "boot-2".into();
        let start = Instant::now();
        let rebooted = h.resolve(AccelChoice::Auto, Some(&silent));
        assert_eq!(rebooted.accel, Accel::Tcg);
        assert!(!rebooted.reason.contains("earlier"), "{}", rebooted.reason);
        assert!(start.elapsed() >= Duration::from_millis(1500));
    }
}
