//! Ledger record parts read back from storage: effects (counter operations and claims) and
//! checkpoint and seal bodies. Any bytes, never a panic; a seal that parses encodes back to the
//! same bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = trustfab_ledger::decode_effects(data);
    let _ = trustfab_ledger::Checkpoint::decode(data);
    if let Ok(s) = trustfab_ledger::Seal::decode(data) {
        assert_eq!(s.encode(), data);
    }
});
