//! `sovra.toml` as the server parses it: TOML, then every cross-field check.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Config::load reads the file as UTF-8 first; nothing else reaches the parser.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = sovra_server::Config::parse(text);
    }
});
