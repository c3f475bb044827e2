//! Certificates in PEM or DER as the CLI reads them, then validation: never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(der) = trustfab_pki::pem::cert_from_pem_or_der(data) {
        let policy = trustfab_pki::Policy {
            root: &der,
            intermediates: &[],
            crls: &[],
            now: trustfab_types::UnixTime(1_790_000_000),
            purpose: trustfab_pki::Purpose::ClientAuth,
        };
        let _ = trustfab_pki::validate(&der, &policy);
    }
});
