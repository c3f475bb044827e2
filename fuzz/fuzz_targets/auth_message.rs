//! Authentication protocol frames: any bytes, never a panic; what decodes re-encodes to itself.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(m) = trustfab_auth::wire::decode(data) {
        let again = match &m {
            trustfab_auth::wire::Message::Hello(h) => h.encode(),
            trustfab_auth::wire::Message::Answer(a) => a.encode(),
        };
        assert_eq!(again.as_deref(), Ok(data));
    }
});
