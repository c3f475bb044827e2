//! Wrapped keys (the OEM's blob for a token) and the recipient side of the format: any bytes,
//! never a panic; what decodes re-encodes to itself, and unwrapping it with a fixed recipient key
//! (a throwaway P-256 key, fuzz/fixtures/recipient.p8.der) gives the key it declares or an error.
#![no_main]

static RECIPIENT: &[u8] = include_bytes!("../fixtures/recipient.p8.der");

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(w) = trustfab_token::WrappedKey::from_bytes(data) else {
        return;
    };
    let again = w.to_bytes();
    assert_eq!(again, data);
    assert!(trustfab_token::WrappedKey::from_bytes(&again).is_ok_and(|back| back == w));
    let recipient = trustfab_types::SecretKeyDer::new(RECIPIENT.to_vec());
    if let Ok(key) = trustfab_token::unwrap_with(&recipient, &w) {
        let declared = trustfab_token::pkcs8_public_key(&key);
        assert!(declared.is_ok_and(|p| &p == w.public_key()));
    }
});
