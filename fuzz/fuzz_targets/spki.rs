//! Device public keys (SubjectPublicKeyInfo DER, and PEM): any bytes, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = trustfab_pki::PublicKey::from_spki_der(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = trustfab_pki::public_key_from_pem(text);
    }
});
