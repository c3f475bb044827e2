//! HSM certification requests and identity bundles (PEM): any text, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = trustfab_pki::HsmRequest::from_pem(text);
        let _ = trustfab_pki::HsmCertificates::from_pem(text);
    }
});
