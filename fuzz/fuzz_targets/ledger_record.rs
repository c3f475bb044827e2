//! Ledger record parts read back from storage: effects (counter operations and claims) and
//! checkpoint bodies. Any bytes, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = trustfab_ledger::decode_effects(data);
    let _ = trustfab_ledger::Checkpoint::decode(data);
});
