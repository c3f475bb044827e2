//! The device certificate template parser: any bytes, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = trustfab_pki::Template::from_toml(text);
    }
});
