//! Encrypted PKCS#8 key files: any text, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let (Ok(text), Ok(pass)) = (
        std::str::from_utf8(data),
        trustfab_types::Passphrase::new("fuzz".into()),
    ) {
        let _ = trustfab_pki::SoftKey::from_encrypted_pem(text, &pass);
    }
});
