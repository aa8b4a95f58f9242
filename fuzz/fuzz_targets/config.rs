//! Fuzz target: the castra.toml loader (`load_str`, pure). Any text either
//! loads or gives an error whose rendering names the file; nothing panics.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = castra::config::load_str(text, Path::new("/p/castra.toml")) {
        let shown = format!("{e}");
        assert!(!shown.is_empty());
        let _ = format!("{e:?}");
    }
});
