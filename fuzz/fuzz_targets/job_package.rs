//! Job packages (a CBOR envelope, the HSM identity's signature, then the spec): any bytes, never
//! a panic. The trusted point is that of a fixed throwaway signer (fuzz/fixtures/job-signer.p8.der)
//! that sealed the seeds, so inputs near a seed get past the signature into the spec decoder.
#![no_main]

use std::sync::OnceLock;

use trustfab_pki::Signer as _;

static SIGNER: &[u8] = include_bytes!("../fixtures/job-signer.p8.der");

fn point() -> &'static [u8] {
    static POINT: OnceLock<Vec<u8>> = OnceLock::new();
    POINT.get_or_init(|| {
        let der = trustfab_types::SecretKeyDer::new(SIGNER.to_vec());
        trustfab_pki::SoftKey::from_pkcs8(trustfab_pki::Curve::P256, &der)
            .expect("fuzz/fixtures/job-signer.p8.der is a P-256 PKCS#8 key")
            .public_point()
            .to_vec()
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(job) = trustfab_formats::JobPackage::open(data, point()) {
        assert_eq!(job.as_bytes(), data);
    }
});
