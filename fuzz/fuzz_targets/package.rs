//! Provisioning packages (COSE_Sign1 over CBOR): any bytes, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = trustfab_formats::package::open(data);
});
