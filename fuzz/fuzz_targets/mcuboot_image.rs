//! MCUboot images: any bytes, never a panic, in the parser and in verification.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if trustfab_firmware::Image::parse(data).is_ok() {
        let _ = trustfab_firmware::verify(
            data,
            trustfab_firmware::TrustAnchor::KeyHash(&[0; 32]),
            trustfab_firmware::Payload::AsIs,
        );
    }
});
