//! Mastering: the OEM's firmware made into a signed (and optionally encrypted) MCUboot image,
//! laid out as `imgtool sign` lays it out (`docs/imgtool.md`): header padded to `ih_hdr_size`,
//! payload, protected security counter, then KEYHASH or PUBKEY, SHA256, ECDSA_SIG and ENC_EC256.

use aws_lc_rs::digest::{digest, SHA256};
use trustfab_keys::{Curve, PublicKey, Signer};
use trustfab_types::Rng;

use crate::crypto::{aes_ctr, image_key, wrap_key};
use crate::error::MasterError;
use crate::format::{
    flags, Header, TlvKind, Version, HEADER_LEN, MAX_IMAGE_BYTES, TLV_HEADER_LEN, TLV_INFO_MAGIC,
    TLV_PROT_INFO_MAGIC,
};
use crate::verify::key_hash;

/// How the image names its signing key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyTlv {
    /// `KEYHASH`: SHA-256 of the key; the bootloader holds the key itself (imgtool's default).
    Hash,
    /// `PUBKEY`: the whole key, for bootloaders that hold only its hash in fuses
    /// (`MCUBOOT_HW_KEY`; imgtool `--public-key-format full`). What trustfab's MCUs need.
    #[default]
    Full,
}

/// What to master.
#[derive(Clone, Debug)]
pub struct MasterOptions<'a> {
    /// `ih_ver`.
    pub version: Version,
    /// The security counter (`IMAGE_TLV_SEC_CNT`, protected); `None` writes no protected area.
    pub security_counter: Option<u32>,
    /// `ih_hdr_size`: the header padded with zeros (imgtool `-H 0x200 --pad-header`).
    pub header_size: u16,
    /// `ih_load_addr`.
    pub load_addr: u32,
    /// How the signing key is named.
    pub key_tlv: KeyTlv,
    /// Encrypt the payload to this P-256 key (a device family's, or one device's).
    pub encrypt_to: Option<&'a PublicKey>,
}

impl MasterOptions<'_> {
    /// Version and security counter, with MCUboot's usual 0x200-byte header, the full public
    /// key, no encryption.
    pub fn new(version: Version, security_counter: u32) -> Self {
        Self {
            version,
            security_counter: Some(security_counter),
            header_size: 0x200,
            load_addr: 0,
            key_tlv: KeyTlv::Full,
            encrypt_to: None,
        }
    }
}

fn push_tlv(out: &mut Vec<u8>, kind: TlvKind, value: &[u8]) -> Result<(), MasterError> {
    let len = u16::try_from(value.len()).map_err(|_| MasterError::Crypto)?;
    out.extend_from_slice(&(kind as u16).to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(value);
    Ok(())
}

/// Masters `payload` into an image signed by `signer` (a P-256 key: software or HSM-held).
///
/// The hash and the signature cover the header, the *plaintext* payload and the protected TLVs;
/// the payload is encrypted after signing, as MCUboot requires (`encrypted_images.md`).
///
/// # Errors
/// A payload over the limit, a header below 32 bytes, a key that is not P-256, or a failure of
/// the signer or the random source.
pub fn master(
    payload: &[u8],
    options: &MasterOptions<'_>,
    signer: &dyn Signer,
    rng: &dyn Rng,
) -> Result<Vec<u8>, MasterError> {
    let too_large = || MasterError::TooLarge {
        len: payload.len(),
        limit: MAX_IMAGE_BYTES,
    };
    if payload.len() > MAX_IMAGE_BYTES - usize::from(options.header_size) - 1024 {
        return Err(too_large());
    }
    if usize::from(options.header_size) < HEADER_LEN {
        return Err(MasterError::HeaderTooSmall(options.header_size));
    }
    if signer.curve() != Curve::P256 {
        return Err(MasterError::NotP256("signing"));
    }
    if options.encrypt_to.is_some_and(|k| k.curve() != Curve::P256) {
        return Err(MasterError::NotP256("encryption"));
    }
    let signing_key = PublicKey::from_point(Curve::P256, signer.public_point())
        .map_err(|_| MasterError::NotP256("signing"))?;

    let mut protected = Vec::new();
    if let Some(counter) = options.security_counter {
        protected.extend_from_slice(&TLV_PROT_INFO_MAGIC.to_le_bytes());
        protected.extend_from_slice(&[0, 0]);
        push_tlv(&mut protected, TlvKind::SecCnt, &counter.to_le_bytes())?;
        let total = u16::try_from(protected.len()).map_err(|_| MasterError::Crypto)?;
        protected.splice(2..4, total.to_le_bytes());
    }
    let header = Header {
        load_addr: options.load_addr,
        hdr_size: options.header_size,
        protect_tlv_size: u16::try_from(protected.len()).map_err(|_| MasterError::Crypto)?,
        img_size: u32::try_from(payload.len()).map_err(|_| too_large())?,
        flags: if options.encrypt_to.is_some() {
            flags::ENCRYPTED_AES128
        } else {
            0
        },
        version: options.version,
    };
    let mut image = Vec::with_capacity(usize::from(options.header_size) + payload.len() + 512);
    image.extend_from_slice(&header.to_bytes());
    image.resize(usize::from(options.header_size), 0);
    image.extend_from_slice(payload);
    image.extend_from_slice(&protected);

    let hash = digest(&SHA256, &image);
    let signature = signer.sign_der(&image).map_err(MasterError::Sign)?;

    let mut tlvs = Vec::new();
    tlvs.extend_from_slice(&TLV_INFO_MAGIC.to_le_bytes());
    tlvs.extend_from_slice(&[0, 0]);
    match options.key_tlv {
        KeyTlv::Hash => push_tlv(&mut tlvs, TlvKind::KeyHash, &key_hash(&signing_key))?,
        KeyTlv::Full => push_tlv(&mut tlvs, TlvKind::PubKey, &signing_key.to_spki_der())?,
    }
    push_tlv(&mut tlvs, TlvKind::Sha256, hash.as_ref())?;
    push_tlv(&mut tlvs, TlvKind::EcdsaSig, &signature)?;
    if let Some(recipient) = options.encrypt_to {
        let key = image_key(rng)?;
        push_tlv(
            &mut tlvs,
            TlvKind::EncEc256,
            &wrap_key(&key, recipient.point(), rng)?,
        )?;
        let start = usize::from(options.header_size);
        let body = image
            .get_mut(start..start + payload.len())
            .ok_or(MasterError::Crypto)?;
        aes_ctr(key.as_ref(), body).map_err(|()| MasterError::Crypto)?;
    }
    let total = u16::try_from(tlvs.len()).map_err(|_| MasterError::Crypto)?;
    tlvs.splice(2..4, total.to_le_bytes());
    debug_assert!(tlvs.len() >= TLV_HEADER_LEN);
    image.extend_from_slice(&tlvs);
    Ok(image)
}
