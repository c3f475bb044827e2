//! Device and silicon vendor files: any bytes, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = trustfab_device::file::decode(data);
    let _ = trustfab_device::file::decode_vendor(data);
});
