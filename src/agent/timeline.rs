//! The guest's side of the boot timeline: the marks the agent sends in its
//! hello (`boot=init:412,net:450,agent:480,hello:530`, guest uptime in ms).
//! `init` is the kernel's own "Run /init as init process" record in
//! /dev/kmsg (microseconds, no guesswork), else what the init script read
//! from /proc/uptime; `net` is the init's reading once eth0 was up; `agent`
//! is when this process started; `hello` is taken as the line is sent. The
//! host maps them onto its clock with the handshake (docs/BOOT.md).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

/// The kernel's message when it hands over to the initramfs's init.
const INIT_RECORD: &str = "Run /init as init process";

/// Milliseconds since the guest booted (`CLOCK_BOOTTIME`, the clock of
/// /proc/uptime); 0 if the clock cannot be read.
pub fn uptime_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

/// The timestamp (ms) of the kernel's "Run /init" record in /dev/kmsg text
/// (`6,301,412345,-;Run /init as init process`: the third field is µs).
pub fn init_from_kmsg(records: &str) -> Option<u64> {
    records.lines().find_map(|line| {
        let (head, message) = line.split_once(';')?;
        if !message.starts_with(INIT_RECORD) {
            return None;
        }
        let micros: u64 = head.split(',').nth(2)?.parse().ok()?;
        Some(micros / 1000)
    })
}

/// `/proc/uptime`'s first word as the init script saved it (`0.61`) -> ms.
pub fn seconds_to_ms(text: &str) -> Option<u64> {
    let secs: f64 = text.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| (secs * 1000.0).round() as u64)
}

/// Reads what /dev/kmsg holds now (each read returns one record; the
/// non-blocking open ends at the last one instead of waiting for more).
fn read_kmsg() -> String {
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return String::new();
    };
    let mut out = String::new();
    let mut buf = vec![0u8; 8192];
    // The kernel's early records are few; 4096 reads is a bound, not a target.
    for _ in 0..4096 {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.push_str(&String::from_utf8_lossy(&buf[..n])),
            // EPIPE: a record was overwritten meanwhile; keep reading.
            Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => continue,
            Err(_) => break,
        }
    }
    out
}

/// The marks known when the agent starts (`hello` is added as it is sent).
pub fn marks(agent_ms: u64, env: &dyn Fn(&str) -> Option<String>) -> Vec<(String, u64)> {
    let mut marks = Vec::new();
    let init = init_from_kmsg(&read_kmsg())
        .or_else(|| env("CASTRA_BOOT_INIT").and_then(|t| seconds_to_ms(&t)));
    if let Some(ms) = init {
        marks.push(("init".to_owned(), ms));
    }
    if let Some(ms) = env("CASTRA_BOOT_NET").and_then(|t| seconds_to_ms(&t)) {
        marks.push(("net".to_owned(), ms));
    }
    marks.push(("agent".to_owned(), agent_ms));
    marks
}

/// The console line the agent prints once its first session is open.
pub fn console_line(marks: &[(String, u64)]) -> String {
    let stages: Vec<String> = marks.iter().map(|(k, ms)| format!("{k} {ms} ms")).collect();
    format!(
        "boot timeline (guest uptime): kernel 0 ms, {}",
        stages.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_init_record_is_found_by_its_message() {
        let kmsg = "5,0,0,-;Linux version 6.1.192 (castra@castra)\n\
                    6,301,412345,-;Run /init as init process\n\
                    7,302,412400,-;  with arguments:\n";
        assert_eq!(init_from_kmsg(kmsg), Some(412));
        assert_eq!(
            init_from_kmsg("6,1,5,-;Freeing unused kernel memory\n"),
            None
        );
        assert_eq!(
            init_from_kmsg("garbage\n6,x,y;Run /init as init process\n"),
            None
        );
    }

    #[test]
    fn uptime_text_to_ms() {
        assert_eq!(seconds_to_ms("0.61"), Some(610));
        assert_eq!(seconds_to_ms("12.34\n"), Some(12340));
        assert_eq!(seconds_to_ms("x"), None);
        assert_eq!(seconds_to_ms("-1"), None);
    }

    #[test]
    fn marks_fall_back_to_the_init_scripts_reading() {
        let env = |k: &str| match k {
            "CASTRA_BOOT_INIT" => Some("0.40".to_owned()),
            "CASTRA_BOOT_NET" => Some("0.45".to_owned()),
            _ => None,
        };
        let m = marks(480, &env);
        // On the host /dev/kmsg may hold no "Run /init" record (or be unreadable):
        // then the script's reading is used.
        let init = m.iter().find(|(k, _)| k == "init").unwrap().1;
        assert!(init == 400 || init_from_kmsg(&read_kmsg()) == Some(init));
        assert_eq!(
            &m[1..],
            &[("net".to_owned(), 450), ("agent".to_owned(), 480)]
        );
        assert_eq!(
            console_line(&m[1..]),
            "boot timeline (guest uptime): kernel 0 ms, net 450 ms, agent 480 ms"
        );
    }
}
