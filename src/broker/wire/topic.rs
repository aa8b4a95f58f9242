//! Bus topics (protocol v1, step 7): `broadcast`, `vm:<name>` and free-form
//! names. Owns the validity rule and who may subscribe to what; routing
//! (which sessions get a message) is the hub's job.

use super::reason::Reason;

/// The topic every interested guest and host consumer subscribes to.
pub const BROADCAST: &str = "broadcast";
/// Longest topic, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;
/// Most subscriptions one session may hold.
pub const MAX_SUBSCRIPTIONS: usize = 64;

/// A topic is 1..=256 bytes of UTF-8 without control characters.
pub fn check(topic: &str) -> Result<(), Reason> {
    if topic.is_empty() || topic.len() > MAX_TOPIC_LEN || topic.chars().any(char::is_control) {
        return Err(Reason::InvalidTopic);
    }
    Ok(())
}

/// Whether a session of VM `vm` may subscribe to `topic`: any valid topic
/// except another VM's `vm:<name>`, which only that VM's sessions receive.
pub fn check_subscribe(topic: &str, vm: &str) -> Result<(), Reason> {
    check(topic)?;
    match topic.strip_prefix("vm:") {
        Some(name) if name != vm => Err(Reason::ForbiddenTopic),
        Some(_) | None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_rules() {
        let long = "x".repeat(MAX_TOPIC_LEN + 1);
        let cases = [
            ("broadcast", Ok(()), Ok(())),
            ("vm:web", Ok(()), Ok(())),
            ("vm:db", Ok(()), Err(Reason::ForbiddenTopic)),
            ("jobs/build.done", Ok(()), Ok(())),
            ("", Err(Reason::InvalidTopic), Err(Reason::InvalidTopic)),
            ("a\nb", Err(Reason::InvalidTopic), Err(Reason::InvalidTopic)),
            (
                long.as_str(),
                Err(Reason::InvalidTopic),
                Err(Reason::InvalidTopic),
            ),
        ];
        for (topic, publish, subscribe) in cases {
            assert_eq!(check(topic), publish, "{topic:?}");
            assert_eq!(check_subscribe(topic, "web"), subscribe, "{topic:?}");
        }
        assert_eq!(check(&"é".repeat(128)), Ok(()));
    }
}
