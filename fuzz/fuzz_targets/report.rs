//! Production reports as the OEM reads them: any bytes, never a panic. The order and the vendor
//! root are the demo's (fuzz/seeds/report), so inputs near the seed reach deep into the checks.
#![no_main]

static ORDER: &[u8] = include_bytes!("../seeds/report/demo.order");
static VENDOR_ROOT: &str = include_str!("../seeds/report/vendor-root.pem");

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (Ok(order), Ok(root)) = (
        trustfab_formats::package::open(ORDER),
        trustfab_pki::pem::decode_one(VENDOR_ROOT, "CERTIFICATE"),
    ) else {
        return;
    };
    let _ = trustfab_formats::report::verify_report(
        data,
        &root,
        &[order.into_contents()],
        trustfab_types::UnixTime(1_790_000_000),
    );
});
