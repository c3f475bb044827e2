//! Every refusal of `docs/firmware.md`, asserted by variant.

use trustfab_firmware::{
    master, verify, Area, DecryptionKey, Image, MasterOptions, ParseError, Payload, TlvKind,
    TrustAnchor, VerifyError,
};
use trustfab_pki::Signer;
use trustfab_types::OsRng;

use crate::{enc_key, payload, signing_key, version};

/// Offset of the TLV of `kind` (its 4-byte header).
fn tlv_offset(img: &[u8], kind: TlvKind) -> usize {
    Image::parse(img)
        .unwrap()
        .tlvs()
        .iter()
        .find(|t| t.kind == kind as u16)
        .unwrap()
        .offset
}

#[test]
fn every_single_bit_flip_is_refused() {
    let (k, p) = signing_key();
    let (dk, dp) = enc_key();
    let keys: [&dyn DecryptionKey; 1] = [&dk];
    for encrypt in [false, true] {
        let mut opts = MasterOptions::new(version(), 3);
        opts.header_size = 32;
        opts.encrypt_to = encrypt.then_some(&dp);
        let img = master(&payload(48), &opts, &k, &OsRng).unwrap();
        verify(&img, TrustAnchor::Key(&p), Payload::Decrypt(&keys)).unwrap();
        for bit in 0..img.len() * 8 {
            let mut bad = img.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                verify(&bad, TrustAnchor::Key(&p), Payload::Decrypt(&keys)).is_err(),
                "bit {bit} (encrypted: {encrypt})"
            );
        }
    }
}

#[test]
fn a_changed_payload_byte_gives_the_hash_error() {
    let (k, p) = signing_key();
    let mut img = master(&payload(100), &MasterOptions::new(version(), 1), &k, &OsRng).unwrap();
    img[0x200 + 10] ^= 0x40;
    assert_eq!(
        verify(&img, TrustAnchor::Key(&p), Payload::AsIs),
        Err(VerifyError::HashMismatch)
    );
}

#[test]
fn a_truncated_image_is_refused_at_every_length() {
    let (k, p) = signing_key();
    let img = master(&payload(64), &MasterOptions::new(version(), 1), &k, &OsRng).unwrap();
    for len in 0..img.len() {
        let e = verify(&img[..len], TrustAnchor::Key(&p), Payload::AsIs).unwrap_err();
        assert!(matches!(e, VerifyError::Parse(_)), "{len}: {e}");
    }
    assert!(matches!(
        verify(&img[..100], TrustAnchor::Key(&p), Payload::AsIs),
        Err(VerifyError::Parse(ParseError::Truncated { .. }))
    ));
}

#[test]
fn a_bad_tlv_length_is_refused() {
    let (k, p) = signing_key();
    let mut img = master(&payload(64), &MasterOptions::new(version(), 1), &k, &OsRng).unwrap();
    let at = tlv_offset(&img, TlvKind::Sha256);
    img[at + 2] = 33;
    assert_eq!(
        verify(&img, TrustAnchor::Key(&p), Payload::AsIs),
        Err(VerifyError::Parse(ParseError::BadTlvLength {
            kind: 0x10,
            len: 33
        }))
    );
    // A length that runs past the area.
    img[at + 2] = 0xF0;
    assert_eq!(
        verify(&img, TrustAnchor::Key(&p), Payload::AsIs),
        Err(VerifyError::Parse(ParseError::TlvOverrun {
            area: Area::Unprotected,
            offset: at
        }))
    );
}

#[test]
fn layout_refusals_each_have_their_own_error() {
    let (k, _) = signing_key();
    let img = master(&payload(64), &MasterOptions::new(version(), 1), &k, &OsRng).unwrap();
    let parse = |b: &[u8]| Image::parse(b).map(|_| ()).unwrap_err();
    let mut bad = img.clone();
    bad[0] ^= 1;
    assert_eq!(parse(&bad), ParseError::BadMagic { found: 0x96f3_b83c });
    let mut bad = img.clone();
    bad.push(0xFF);
    assert_eq!(parse(&bad), ParseError::TrailingBytes { count: 1 });
    let mut bad = img.clone();
    bad[8..10].copy_from_slice(&16u16.to_le_bytes());
    assert_eq!(parse(&bad), ParseError::HeaderTooSmall { hdr_size: 16 });
    let mut bad = img.clone();
    bad[10] = 16;
    assert_eq!(
        parse(&bad),
        ParseError::ProtectedSizeMismatch {
            header: 16,
            area: 12
        }
    );
    let at = tlv_offset(&img, TlvKind::PubKey) - 4;
    let mut bad = img.clone();
    bad[at] = 0x06;
    assert_eq!(
        parse(&bad),
        ParseError::BadTlvInfoMagic {
            area: Area::Unprotected,
            found: 0x6906,
            expected: 0x6907
        }
    );
    // The SHA-256 TLV relabelled as PUBKEY: a length PUBKEY does not allow.
    let sha = tlv_offset(&img, TlvKind::Sha256);
    let mut bad = img.clone();
    bad[sha] = 0x02;
    assert_eq!(
        parse(&bad),
        ParseError::BadTlvLength {
            kind: 0x02,
            len: 32
        }
    );
    // The security counter in the unprotected area.
    let mut bad = img;
    bad[sha] = 0x50;
    bad[sha + 2] = 4;
    assert_eq!(
        parse(&bad),
        ParseError::MisplacedTlv {
            kind: 0x50,
            area: Area::Unprotected
        }
    );
    // A second KEYHASH.
    let mut opts = MasterOptions::new(version(), 1);
    opts.key_tlv = trustfab_firmware::KeyTlv::Hash;
    let hashed = master(&payload(64), &opts, &k, &OsRng).unwrap();
    let mut bad = hashed.clone();
    bad[tlv_offset(&hashed, TlvKind::Sha256)] = 0x01;
    assert_eq!(parse(&bad), ParseError::DuplicateTlv { kind: 0x01 });
    let too_big = vec![0u8; trustfab_firmware::MAX_IMAGE_BYTES + 1];
    assert!(matches!(parse(&too_big), ParseError::TooLarge { .. }));
}

#[test]
fn another_familys_image_does_not_decrypt() {
    let (k, p) = signing_key();
    let (_, family_a) = enc_key();
    let (family_b, _) = enc_key();
    let mut opts = MasterOptions::new(version(), 1);
    opts.encrypt_to = Some(&family_a);
    let img = master(&payload(100), &opts, &k, &OsRng).unwrap();
    let keys: [&dyn DecryptionKey; 1] = [&family_b];
    assert_eq!(
        verify(&img, TrustAnchor::Key(&p), Payload::Decrypt(&keys)),
        Err(VerifyError::Decrypt)
    );
    assert_eq!(
        verify(&img, TrustAnchor::Key(&p), Payload::Decrypt(&[])),
        Err(VerifyError::NoDecryptionKey)
    );
}

#[test]
fn another_keys_image_and_another_keys_signature_are_refused() {
    let (k, p) = signing_key();
    let (other, _) = signing_key();
    let theirs = master(
        &payload(100),
        &MasterOptions::new(version(), 1),
        &other,
        &OsRng,
    )
    .unwrap();
    assert_eq!(
        verify(&theirs, TrustAnchor::Key(&p), Payload::AsIs),
        Err(VerifyError::KeyNotTrusted)
    );
    let rot = trustfab_firmware::key_hash(&p);
    assert_eq!(
        verify(&theirs, TrustAnchor::KeyHash(&rot), Payload::AsIs),
        Err(VerifyError::KeyNotTrusted)
    );
    // Our image with the other key's signature over the same bytes spliced in.
    let ours = master(&payload(100), &MasterOptions::new(version(), 1), &k, &OsRng).unwrap();
    let parsed = Image::parse(&ours).unwrap();
    let sig = other.sign_der(parsed.hashed()).unwrap();
    let at = tlv_offset(&ours, TlvKind::EcdsaSig);
    let old_len = usize::from(u16::from_le_bytes([ours[at + 2], ours[at + 3]]));
    let mut forged = ours[..at].to_vec();
    forged.extend_from_slice(&0x22u16.to_le_bytes());
    forged.extend_from_slice(&u16::try_from(sig.len()).unwrap().to_le_bytes());
    forged.extend_from_slice(&sig);
    forged.extend_from_slice(&ours[at + 4 + old_len..]);
    let info = parsed.hashed().len();
    let total = u16::from_le_bytes([ours[info + 2], ours[info + 3]])
        + u16::try_from(sig.len()).unwrap()
        - u16::try_from(old_len).unwrap();
    forged[info + 2..info + 4].copy_from_slice(&total.to_le_bytes());
    assert_eq!(
        verify(&forged, TrustAnchor::Key(&p), Payload::AsIs),
        Err(VerifyError::Signature)
    );
}

#[test]
fn missing_tlvs_are_named() {
    let (k, p) = signing_key();
    let mut opts = MasterOptions::new(version(), 1);
    opts.security_counter = None;
    let img = master(&payload(10), &opts, &k, &OsRng).unwrap();
    let v = verify(&img, TrustAnchor::Key(&p), Payload::AsIs).unwrap();
    assert_eq!(v.security_counter, None);
    // Relabel the SHA-256 TLV as an unknown type: the hash is missing.
    let mut bad = img.clone();
    bad[tlv_offset(&img, TlvKind::Sha256)] = 0x7E;
    assert_eq!(
        verify(&bad, TrustAnchor::Key(&p), Payload::AsIs),
        Err(VerifyError::NoHash)
    );
    let mut bad = img.clone();
    bad[tlv_offset(&img, TlvKind::EcdsaSig)] = 0x7E;
    assert_eq!(
        verify(&bad, TrustAnchor::Key(&p), Payload::AsIs),
        Err(VerifyError::NoSignature)
    );
    let mut bad = img.clone();
    bad[tlv_offset(&img, TlvKind::PubKey)] = 0x7E;
    assert_eq!(
        verify(&bad, TrustAnchor::Key(&p), Payload::AsIs),
        Err(VerifyError::NoKey)
    );
    // An image flagged encrypted without the TLV.
    let mut bad = img;
    bad[16] = 0x04;
    let (dk, _) = enc_key();
    let keys: [&dyn DecryptionKey; 1] = [&dk];
    assert_eq!(
        verify(&bad, TrustAnchor::Key(&p), Payload::Decrypt(&keys)),
        Err(VerifyError::NoEncryptionTlv)
    );
    bad[16] = 0x08;
    assert_eq!(
        verify(&bad, TrustAnchor::Key(&p), Payload::Decrypt(&keys)),
        Err(VerifyError::UnsupportedEncryption { flags: 0x08 })
    );
}
