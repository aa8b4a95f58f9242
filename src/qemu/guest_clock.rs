//! Kernel arguments that keep a TCG guest's clock from hanging the boot.
//!
//! Under TCG the guest's TSC is the host's TSC, but `-M microvm` has no HPET
//! or ACPI PM timer, so the guest kernel can only calibrate the TSC against
//! the emulated PIT. On a loaded host that calibration fails ("tsc: Unable
//! to calibrate against PIT ... Marking TSC unstable") and the boot hangs:
//! measured here, 6 of 6 boots hung with both host cores busy, 0 of 6 with
//! `tsc_early_khz=<host TSC kHz> tsc=reliable`. So castra measures the host
//! TSC and passes its frequency. (Under KVM the guest has kvmclock; not needed.)
//!
//! This module measures and formats; the caller (reconcile's executor)
//! appends the arguments to any direct kernel boot under TCG.

use std::time::{Duration, Instant};

/// `tsc_early_khz=<khz> tsc=reliable`: the kernel takes the TSC frequency
/// from the command line instead of calibrating, and the clocksource watchdog
/// (which compares against jiffies, late under emulation) leaves it alone.
pub fn tcg_kernel_args(tsc_khz: u64) -> String {
    format!("tsc_early_khz={tsc_khz} tsc=reliable")
}

/// `tcg_kernel_args` for this host, or `None` where the TSC cannot be read
/// (not x86-64) or its measured rate is implausible.
pub fn tcg_kernel_args_for_host() -> Option<String> {
    host_tsc_khz().map(tcg_kernel_args)
}

/// The host TSC frequency in kHz: the median of three 10 ms samples of
/// TSC ticks against the monotonic clock.
pub fn host_tsc_khz() -> Option<u64> {
    let mut samples: Vec<u64> = (0..3)
        .filter_map(|_| {
            let (t0, c0) = (Instant::now(), rdtsc()?);
            std::thread::sleep(Duration::from_millis(10));
            let (t1, c1) = (Instant::now(), rdtsc()?);
            khz_from(c1.checked_sub(c0)?, t1.duration_since(t0))
        })
        .collect();
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied()
}

/// Ticks per elapsed time, in kHz, if plausible for a TSC (100 MHz-10 GHz).
pub fn khz_from(ticks: u64, elapsed: Duration) -> Option<u64> {
    let nanos = elapsed.as_nanos();
    if nanos == 0 {
        return None;
    }
    let khz = (ticks as u128 * 1_000_000 / nanos) as u64;
    (100_000..=10_000_000).contains(&khz).then_some(khz)
}

#[cfg(target_arch = "x86_64")]
fn rdtsc() -> Option<u64> {
    // SAFETY: RDTSC has no preconditions on x86-64 (user mode may read it
    // unless the OS sets CR4.TSD, which Linux does not by default).
    Some(unsafe { core::arch::x86_64::_rdtsc() })
}

#[cfg(not(target_arch = "x86_64"))]
fn rdtsc() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_format() {
        insta::assert_snapshot!(tcg_kernel_args(2_596_134), @"tsc_early_khz=2596134 tsc=reliable");
    }

    #[test]
    fn khz_arithmetic_and_plausibility() {
        assert_eq!(
            khz_from(25_961_340, Duration::from_millis(10)),
            Some(2_596_134)
        );
        assert_eq!(khz_from(10, Duration::from_millis(10)), None);
        assert_eq!(khz_from(1, Duration::ZERO), None);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn host_tsc_agrees_with_proc_cpuinfo_within_a_few_percent() {
        let khz = host_tsc_khz().expect("an x86-64 host has a TSC");
        // On VMs and constant-TSC CPUs without frequency scaling, "cpu MHz"
        // is the TSC rate; where it differs (turbo, power saving) only the
        // plausibility range is checked.
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let mhz: f64 = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("cpu MHz")?
                    .split(':')
                    .nth(1)?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap();
        let ratio = khz as f64 / (mhz * 1000.0);
        println!("host tsc {khz} kHz, cpu MHz {mhz}, ratio {ratio:.3}");
        assert!((100_000..=10_000_000).contains(&khz));
        if cpuinfo.contains("hypervisor") {
            assert!(
                (0.97..1.03).contains(&ratio),
                "tsc {khz} kHz vs cpu MHz {mhz}"
            );
        }
    }
}
