//! Replica expansion (names numbered from one, host ports shifted) and
//! forwards that share a port without conflicting.

use super::*;

#[test]
fn replicas_are_numbered_from_one_and_shift_host_ports() {
    let p = ok(r#"
[[vms]]
name = "web"
count = 3
memory = "512M"
forwards = ["8080:80", "udp:127.0.0.2:5353:53"]

[[vms]]
name = "solo"
count = 1
forwards = ["9000:80"]

[[vms]]
name = "db"
forwards = ["8083:5432"]
"#);
    let summary: Vec<String> = p
        .vms
        .iter()
        .map(|v| {
            let fw: Vec<String> = v.forwards.iter().map(|f| f.to_string()).collect();
            format!("{} {} [{}]", v.name, v.memory, fw.join(", "))
        })
        .collect();
    insta::assert_snapshot!(summary.join("\n"), @r"
    web-1 512M [127.0.0.1:8080->80/tcp, 127.0.0.2:5353->53/udp]
    web-2 512M [127.0.0.1:8081->80/tcp, 127.0.0.2:5354->53/udp]
    web-3 512M [127.0.0.1:8082->80/tcp, 127.0.0.2:5355->53/udp]
    solo-1 256M [127.0.0.1:9000->80/tcp]
    db 256M [127.0.0.1:8083->5432/tcp]
    ");
}

#[test]
fn forwards_on_other_addresses_or_protocols_do_not_conflict() {
    let p = ok(r#"
[[vms]]
name = "a"
forwards = ["127.0.0.1:8080:80", "udp:8081:53"]

[[vms]]
name = "b"
forwards = ["127.0.0.2:8080:80", "8081:53", "127.0.0.3:8080:80"]
"#);
    assert_eq!(p.vms.len(), 2);
}
