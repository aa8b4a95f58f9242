//! The `castra init` template loads and documents every key, and the
//! examples of docs/CONFIG.md are real loader output.

use super::*;

#[test]
fn the_init_template_loads_as_a_two_vm_demo() {
    let block = crate::config::block_for(std::path::Path::new("/home/ann/shop"));
    let p = ok(&init_template(block));
    let names: Vec<&str> = p.vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["web", "db"]);
    assert!(p.vms.iter().all(|v| v.image == ImageSpec::Default));
    assert!(p.vms.iter().all(|v| v.machine == Machine::Microvm));
    assert_eq!(p.broker.port, block.broker());
    assert!(!p.broker.allow_tokenless_handshake);
    assert_eq!(p.vms[0].forwards[0].host_port, block.port(0));
    assert_eq!(p.vms[1].forwards[0].host_port, block.port(4));
    assert!(!init_template(block).contains('@'));
    assert_eq!(p.lifecycle, Lifecycle::default());
}

#[test]
fn the_template_documents_every_key() {
    for key in [
        "name",
        "state_dir",
        "cpus",
        "memory",
        "image",
        "accel",
        "forwards",
        "count",
        "kernel",
        "initrd",
        "cmdline",
        "disk",
        "port",
        "allow_tokenless_handshake",
        "powerdown_wait",
        "sigterm_wait",
    ] {
        assert!(
            init_template(crate::config::block_for(std::path::Path::new("/p")))
                .contains(&format!("{key} =")),
            "template does not mention {key}"
        );
    }
}

/// Fenced code blocks of a markdown text: (info string, body).
fn fenced_blocks(md: &str) -> Vec<(usize, &str, String)> {
    let mut blocks = Vec::new();
    let mut lines = md.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        if let Some(lang) = line.strip_prefix("```") {
            let mut body = String::new();
            for (_, l) in lines.by_ref() {
                if l.starts_with("```") {
                    break;
                }
                body.push_str(l);
                body.push('\n');
            }
            blocks.push((i, lang, body));
        }
    }
    blocks
}

#[test]
fn docs_config_md_examples_are_real_output() {
    let doc = include_str!("../../../docs/CONFIG.md");
    let blocks = fenced_blocks(doc);
    let (_, lang, first) = &blocks[0];
    assert_eq!(*lang, "toml");
    let p = ok(first);
    let names: Vec<&str> = p.vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["web-1", "web-2", "db"]);

    let marker_lines: Vec<usize> = doc
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim() == "<!-- error-example -->")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(marker_lines.len(), 3);
    for m in marker_lines {
        let at = blocks.iter().position(|(i, _, _)| *i == m + 1).unwrap();
        let (_, lang, input) = &blocks[at];
        let (_, out_lang, expected) = &blocks[at + 1];
        assert_eq!((*lang, *out_lang), ("toml", "text"));
        assert_eq!(
            render_err(input),
            expected.trim_end(),
            "example at line {}",
            m + 1
        );
    }
}
