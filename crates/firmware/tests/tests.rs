#![allow(clippy::unwrap_used)]
//! The integration tests of trustfab-firmware. Where new tests go:
//!
//! - `refusals`: every documented refusal of `docs/firmware.md`, by variant;
//! - `interop`: MCUboot's `imgtool` on our images and our verifier on imgtool's;
//! - `fuzz_seeds`: the committed fuzz seeds, replayed.

use trustfab_firmware::{
    decrypt, key_hash, master, verify, verify_sealed, DecryptionKey, Image, KeyTlv, LoadedKey,
    MasterOptions, Payload, SoftDecryptionKey, TlvKind, TrustAnchor, VerifyError, Version,
};
use trustfab_pki::{Curve, PublicKey, Signer, SoftKey};
use trustfab_types::OsRng;

mod interop;
mod refusals;

fn signing_key() -> (SoftKey, PublicKey) {
    let k = SoftKey::generate(Curve::P256).unwrap();
    let p = PublicKey::from_point(Curve::P256, k.public_point()).unwrap();
    (k, p)
}

fn enc_key() -> (SoftDecryptionKey, PublicKey) {
    let k = SoftDecryptionKey::generate(&OsRng).unwrap();
    let p = PublicKey::from_point(Curve::P256, &k.public_point().unwrap()).unwrap();
    (k, p)
}

fn payload(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from((i * 31 + 7) % 251).unwrap())
        .collect()
}

fn version() -> Version {
    "1.2.3+4".parse().unwrap()
}

#[test]
fn a_signed_image_verifies_against_its_key_and_its_key_hash() {
    let (k, p) = signing_key();
    let img = master(
        &payload(1000),
        &MasterOptions::new(version(), 7),
        &k,
        &OsRng,
    )
    .unwrap();
    let v = verify(&img, TrustAnchor::Key(&p), Payload::AsIs).unwrap();
    assert_eq!(v.security_counter, Some(7));
    assert_eq!(v.header.version, version());
    let rot = key_hash(&p);
    verify(&img, TrustAnchor::KeyHash(&rot), Payload::AsIs).unwrap();
}

#[test]
fn an_encrypted_image_verifies_only_after_decryption_with_its_key() {
    let (k, p) = signing_key();
    let (dk, dp) = enc_key();
    let mut opts = MasterOptions::new(version(), 1);
    opts.encrypt_to = Some(&dp);
    let plain = payload(5000);
    let img = master(&plain, &opts, &k, &OsRng).unwrap();
    // The payload is not in the image in clear.
    assert!(!img.windows(64).any(|w| w == &plain[..64]));
    let keys: [&dyn DecryptionKey; 1] = [&dk];
    verify(&img, TrustAnchor::Key(&p), Payload::Decrypt(&keys)).unwrap();
    assert_eq!(
        verify(&img, TrustAnchor::Key(&p), Payload::AsIs),
        Err(VerifyError::HashMismatch)
    );
    let clear = decrypt(&img, &keys).unwrap();
    assert!(clear.windows(plain.len()).any(|w| w == plain));
    verify(&clear, TrustAnchor::Key(&p), Payload::AsIs).unwrap();
    // Decrypting twice encrypts again: the swap's move back to the secondary slot.
    assert_eq!(decrypt(&clear, &keys).unwrap(), img);
    // The family scalar round-trips through the form a secret slot holds.
    let again =
        SoftDecryptionKey::from_scalar(dk.secret_scalar().unwrap().expose_secret()).unwrap();
    let keys: [&dyn DecryptionKey; 1] = [&again];
    verify(&img, TrustAnchor::Key(&p), Payload::Decrypt(&keys)).unwrap();
}

/// What a programming center can check of an encrypted image without its key: the signing key
/// and the signature over the hash TLV; a changed signature or another signer is refused, a
/// changed ciphertext is not detectable there (the device's decrypting boot refuses it).
#[test]
fn a_sealed_image_is_checked_as_far_as_the_ciphertext_allows() {
    let (k, p) = signing_key();
    let (dk, dp) = enc_key();
    let mut opts = MasterOptions::new(version(), 3);
    opts.encrypt_to = Some(&dp);
    let img = master(&payload(3000), &opts, &k, &OsRng).unwrap();
    let rot = key_hash(&p);
    let keys: [&dyn DecryptionKey; 1] = [&dk];
    let full = verify(&img, TrustAnchor::KeyHash(&rot), Payload::Decrypt(&keys)).unwrap();
    let sealed = verify_sealed(&img, TrustAnchor::KeyHash(&rot)).unwrap();
    assert_eq!(sealed, full);
    let (_, other) = signing_key();
    assert_eq!(
        verify_sealed(&img, TrustAnchor::KeyHash(&key_hash(&other))),
        Err(VerifyError::KeyNotTrusted)
    );
    // A changed byte in the signature or in the hash TLV it covers is refused.
    for kind in [TlvKind::EcdsaSig, TlvKind::Sha256] {
        let value = Image::parse(&img).unwrap().tlv(kind).unwrap().to_vec();
        let at = img.windows(value.len()).position(|w| w == value).unwrap();
        let mut changed = img.clone();
        changed[at + value.len() - 1] ^= 1;
        assert_eq!(
            verify_sealed(&changed, TrustAnchor::KeyHash(&rot)),
            Err(VerifyError::Signature),
            "{kind:?}"
        );
    }
    // A plaintext image is verified in full.
    let plain = master(&payload(100), &MasterOptions::new(version(), 1), &k, &OsRng).unwrap();
    let mut changed = plain;
    changed[40] ^= 1;
    assert_eq!(
        verify_sealed(&changed, TrustAnchor::KeyHash(&rot)),
        Err(VerifyError::HashMismatch)
    );
}

/// A loaded key answers as its key does, for the image it last agreed on and for any other.
#[test]
fn a_loaded_key_agrees_as_its_key_for_every_peer() {
    let (dk, _) = enc_key();
    let (_, p1) = enc_key();
    let (_, p2) = enc_key();
    let loaded = LoadedKey::new(
        SoftDecryptionKey::from_scalar(dk.secret_scalar().unwrap().expose_secret()).unwrap(),
    );
    for peer in [&p1, &p1, &p2, &p1] {
        assert_eq!(
            *loaded.agree(peer.point()).unwrap(),
            *dk.agree(peer.point()).unwrap()
        );
    }
    assert!(loaded.agree(&[4u8; 65]).is_err());
    assert_eq!(format!("{loaded:?}"), "LoadedKey([secret elided])");
}

#[test]
fn the_key_hash_form_names_the_key_by_hash() {
    let (k, p) = signing_key();
    let mut opts = MasterOptions::new(version(), 1);
    opts.key_tlv = KeyTlv::Hash;
    let img = master(&payload(100), &opts, &k, &OsRng).unwrap();
    verify(&img, TrustAnchor::Key(&p), Payload::AsIs).unwrap();
    let rot = key_hash(&p);
    assert_eq!(
        verify(&img, TrustAnchor::KeyHash(&rot), Payload::AsIs),
        Err(VerifyError::PublicKeyMissing)
    );
}

mod fuzz_seeds {
    use std::path::PathBuf;

    use trustfab_firmware::Image;

    #[test]
    fn mcuboot_image_seeds_parse() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/mcuboot_image");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            Image::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
        assert!(n > 0, "no seeds in {}", dir.display());
    }
}
