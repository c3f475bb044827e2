//! MCUboot's `imgtool`, for real, in both directions.

use trustfab_firmware::{
    decrypt, key_hash, master, verify, DecryptionKey, Image, KeyTlv, MasterOptions, Payload,
    SoftDecryptionKey, TlvKind, TrustAnchor, VerifyError,
};
use trustfab_pki::PublicKey;
use trustfab_test_support::{imgtool, Scratch};
use trustfab_types::OsRng;

use crate::{enc_key, payload, signing_key, version};

fn public_pem(key: &PublicKey) -> String {
    pem::encode(&pem::Pem::new("PUBLIC KEY", key.to_spki_der()))
}

fn private_der(path: &std::path::Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    pem::parse(text).unwrap().into_contents()
}

#[test]
fn imgtool_verifies_our_signed_images() {
    let s = Scratch::new();
    let (k, p) = signing_key();
    let pub_pem = s.write("pub.pem", public_pem(&p));
    for key_tlv in [KeyTlv::Hash, KeyTlv::Full] {
        let mut opts = MasterOptions::new(version(), 9);
        opts.key_tlv = key_tlv;
        let img = master(&payload(20_000), &opts, &k, &OsRng).unwrap();
        let path = s.write("ours.bin", &img);
        let out = imgtool::verify(&pub_pem, &path);
        assert!(out.ok, "{key_tlv:?}: {}", out.output);
        let info = imgtool::dumpinfo(&path);
        assert!(info.ok, "{}", info.output);
        // A flipped payload bit: imgtool refuses too.
        let mut bad = img.clone();
        bad[0x300] ^= 1;
        let out = imgtool::verify(&pub_pem, &s.write("bad.bin", &bad));
        assert!(
            !out.ok && out.output.contains("invalid hash"),
            "{}",
            out.output
        );
    }
    // Another key: imgtool finds no signature for it.
    let (_, other) = signing_key();
    let other_pem = s.write("other.pem", public_pem(&other));
    let img = master(&payload(100), &MasterOptions::new(version(), 1), &k, &OsRng).unwrap();
    let out = imgtool::verify(&other_pem, &s.write("ours.bin", &img));
    assert!(!out.ok, "{}", out.output);
}

#[test]
fn imgtool_verifies_our_encrypted_images_once_we_decrypt_them() {
    let s = Scratch::new();
    let (k, p) = signing_key();
    let (dk, dp) = enc_key();
    let pub_pem = s.write("pub.pem", public_pem(&p));
    let mut opts = MasterOptions::new(version(), 2);
    opts.encrypt_to = Some(&dp);
    let img = master(&payload(30_000), &opts, &k, &OsRng).unwrap();
    // The hash covers the plaintext: imgtool cannot verify the encrypted image.
    let out = imgtool::verify(&pub_pem, &s.write("enc.bin", &img));
    assert!(!out.ok, "{}", out.output);
    let keys: [&dyn DecryptionKey; 1] = [&dk];
    let clear = decrypt(&img, &keys).unwrap();
    let out = imgtool::verify(&pub_pem, &s.write("clear.bin", &clear));
    assert!(out.ok, "{}", out.output);
}

#[test]
fn we_verify_imgtools_signed_images() {
    let s = Scratch::new();
    let key = s.path().join("k.pem");
    assert!(imgtool::keygen(&key).ok);
    let out = imgtool::getpub_pem(&key);
    assert!(out.ok, "{}", out.output);
    let public = trustfab_pki::public_key_from_pem(&out.output).unwrap();
    let input = s.write("app.bin", payload(10_000));
    // imgtool's default: KEYHASH.
    let signed = s.path().join("signed.bin");
    let out = imgtool::sign(&key, "1.2.3+4", 5, &[], &input, &signed);
    assert!(out.ok, "{}", out.output);
    let img = std::fs::read(&signed).unwrap();
    let v = verify(&img, TrustAnchor::Key(&public), Payload::AsIs).unwrap();
    assert_eq!(v.security_counter, Some(5));
    assert_eq!(v.header.version, version());
    assert!(Image::parse(&img).unwrap().tlv(TlvKind::KeyHash).is_some());
    // The full key, as a device with only the key hash in its fuses needs.
    let out = imgtool::sign(
        &key,
        "1.2.3",
        6,
        &["--public-key-format", "full"],
        &input,
        &signed,
    );
    assert!(out.ok, "{}", out.output);
    let img = std::fs::read(&signed).unwrap();
    let rot = key_hash(&public);
    let v = verify(&img, TrustAnchor::KeyHash(&rot), Payload::AsIs).unwrap();
    assert_eq!(v.security_counter, Some(6));
    let (_, other) = signing_key();
    assert_eq!(
        verify(&img, TrustAnchor::Key(&other), Payload::AsIs),
        Err(VerifyError::KeyNotTrusted)
    );
}

#[test]
fn we_decrypt_and_verify_imgtools_encrypted_images() {
    let s = Scratch::new();
    let key = s.path().join("k.pem");
    let enc = s.path().join("enc.pem");
    assert!(imgtool::keygen(&key).ok && imgtool::keygen(&enc).ok);
    let public = trustfab_pki::public_key_from_pem(&imgtool::getpub_pem(&key).output).unwrap();
    let enc_pub = s.write("enc-pub.pem", imgtool::getpub_pem(&enc).output);
    let input = s.write("app.bin", payload(10_000));
    let signed = s.path().join("signed.bin");
    let enc_arg = enc_pub.to_str().unwrap();
    let out = imgtool::sign(
        &key,
        "2.0.0",
        3,
        &["--public-key-format", "full", "--encrypt", enc_arg],
        &input,
        &signed,
    );
    assert!(out.ok, "{}", out.output);
    let img = std::fs::read(&signed).unwrap();
    let dk = SoftDecryptionKey::from_der(&private_der(&enc)).unwrap();
    let keys: [&dyn DecryptionKey; 1] = [&dk];
    let rot = key_hash(&public);
    let v = verify(&img, TrustAnchor::KeyHash(&rot), Payload::Decrypt(&keys)).unwrap();
    assert_eq!(v.security_counter, Some(3));
    let clear = decrypt(&img, &keys).unwrap();
    assert!(clear.windows(10_000).any(|w| w == payload(10_000)));
    // Another family's key does not open it.
    let (wrong, _) = enc_key();
    let keys: [&dyn DecryptionKey; 1] = [&wrong];
    assert_eq!(
        verify(&img, TrustAnchor::KeyHash(&rot), Payload::Decrypt(&keys)),
        Err(VerifyError::Decrypt)
    );
}
