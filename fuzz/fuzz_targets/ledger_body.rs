//! Ledger record bodies as every reader decodes them (`trustfab_formats::records`): the HSM's
//! integer-keyed bodies and the job and device bodies. Any bytes, never a panic.
#![no_main]

use trustfab_formats::records::{
    self, CreditBack, DeviceFailed, DeviceGood, IssuanceRecord, JobClosed, JobCreated,
    PackageImported, ProductDef,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(d) = ProductDef::decode(data) {
        assert_eq!(ProductDef::decode(&d.encode()).ok(), Some(d));
    }
    if let Ok(p) = PackageImported::decode(data) {
        assert_eq!(PackageImported::decode(&p.encode()).ok(), Some(p));
    }
    if let Ok(r) = IssuanceRecord::decode(data) {
        assert_eq!(IssuanceRecord::decode(&r.encode()).ok(), Some(r));
    }
    let _ = records::decode::<JobCreated>(data);
    let _ = records::decode::<CreditBack>(data);
    let _ = records::decode::<DeviceGood>(data);
    let _ = records::decode::<DeviceFailed>(data);
    let _ = records::decode::<JobClosed>(data);
});
