//! The image layout (MCUboot `boot/bootutil/include/bootutil/image.h`, described in
//! `docs/design.md` "Image Format"): a 32-byte little-endian header padded to `ih_hdr_size`, the
//! payload, an optional protected TLV area covered by the hash and signature, then the
//! unprotected TLV area. [`Image::parse`] reads untrusted bytes into that shape without checking
//! any cryptography; [`crate::verify`] does that.

use std::fmt;
use std::str::FromStr;

use crate::error::{Area, ParseError};

/// `IMAGE_MAGIC`, the first word of every image header.
pub const IMAGE_MAGIC: u32 = 0x96f3_b83d;
/// `IMAGE_HEADER_SIZE`: the header proper; `ih_hdr_size` may pad it further.
pub const HEADER_LEN: usize = 32;
/// `IMAGE_TLV_INFO_MAGIC`: starts the unprotected TLV area.
pub const TLV_INFO_MAGIC: u16 = 0x6907;
/// `IMAGE_TLV_PROT_INFO_MAGIC`: starts the protected TLV area.
pub const TLV_PROT_INFO_MAGIC: u16 = 0x6908;
/// `struct image_tlv_info` and `struct image_tlv` are both 4 bytes.
pub const TLV_HEADER_LEN: usize = 4;
/// The largest image this crate parses or masters (16 MiB: above any MCU's flash slot).
pub const MAX_IMAGE_BYTES: usize = 16 * 1024 * 1024;

/// Header flags (`IMAGE_F_*`).
pub mod flags {
    /// `IMAGE_F_ENCRYPTED_AES128`: the payload is AES-128-CTR encrypted.
    pub const ENCRYPTED_AES128: u32 = 0x0000_0004;
    /// `IMAGE_F_ENCRYPTED_AES256`: the payload is AES-256-CTR encrypted (not supported here).
    pub const ENCRYPTED_AES256: u32 = 0x0000_0008;
}

/// TLV types (`IMAGE_TLV_*`) this crate reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum TlvKind {
    /// `IMAGE_TLV_KEYHASH` (0x01): SHA-256 of the signing key's SubjectPublicKeyInfo.
    KeyHash = 0x01,
    /// `IMAGE_TLV_PUBKEY` (0x02): the signing key's SubjectPublicKeyInfo (`MCUBOOT_HW_KEY`).
    PubKey = 0x02,
    /// `IMAGE_TLV_SHA256` (0x10): SHA-256 over header, payload and protected TLVs.
    Sha256 = 0x10,
    /// `IMAGE_TLV_ECDSA_SIG` (0x22, formerly `ECDSA256`): DER ECDSA signature.
    EcdsaSig = 0x22,
    /// `IMAGE_TLV_ENC_EC256` (0x32): ECIES-P256 wrapped AES key.
    EncEc256 = 0x32,
    /// `IMAGE_TLV_SEC_CNT` (0x50): the security counter, protected.
    SecCnt = 0x50,
}

impl TlvKind {
    /// The kind of a TLV type, if this crate knows it.
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            0x01 => Self::KeyHash,
            0x02 => Self::PubKey,
            0x10 => Self::Sha256,
            0x22 => Self::EcdsaSig,
            0x32 => Self::EncEc256,
            0x50 => Self::SecCnt,
            _ => return None,
        })
    }

    /// The area MCUboot looks for it in.
    fn area(self) -> Area {
        match self {
            Self::SecCnt => Area::Protected,
            _ => Area::Unprotected,
        }
    }

    /// Whether `len` is a length this kind allows.
    fn admits(self, len: usize) -> bool {
        match self {
            Self::KeyHash | Self::Sha256 => len == 32,
            // A P-256 SubjectPublicKeyInfo is 91 bytes; leave room for other encodings to be
            // refused by the key parser rather than here.
            Self::PubKey => (64..=128).contains(&len),
            // DER ECDSA-Sig-Value for P-256: 8 to 72 bytes.
            Self::EcdsaSig => (8..=72).contains(&len),
            // ephemeral point 65 ‖ HMAC-SHA256 32 ‖ AES-128 key 16 (`EC256_CIPHERKEY_SIZE` etc.)
            Self::EncEc256 => len == ENC_EC256_LEN,
            Self::SecCnt => len == 4,
        }
    }
}

/// Length of the `ENC_EC256` TLV: point, MAC, wrapped key.
pub const ENC_EC256_LEN: usize = 65 + 32 + 16;

/// `struct image_version`: major.minor.revision+build.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// `iv_major`.
    pub major: u8,
    /// `iv_minor`.
    pub minor: u8,
    /// `iv_revision`.
    pub revision: u16,
    /// `iv_build_num`.
    pub build: u32,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.revision)?;
        if self.build != 0 {
            write!(f, "+{}", self.build)?;
        }
        Ok(())
    }
}

/// A version string that is not `X.Y.Z[+B]` within the field sizes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("version {0:?} is not X.Y.Z[+B] (X, Y below 256, Z below 65536, B below 2^32)")]
pub struct VersionError(String);

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || VersionError(s.to_owned());
        let (xyz, build) = match s.split_once('+') {
            Some((a, b)) => (a, b.parse().map_err(|_| bad())?),
            None => (s, 0),
        };
        let mut parts = xyz.split('.');
        let (Some(x), Some(y), Some(z), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Ok(Self {
            major: x.parse().map_err(|_| bad())?,
            minor: y.parse().map_err(|_| bad())?,
            revision: z.parse().map_err(|_| bad())?,
            build,
        })
    }
}

/// `struct image_header`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// `ih_load_addr`.
    pub load_addr: u32,
    /// `ih_hdr_size`: where the payload starts.
    pub hdr_size: u16,
    /// `ih_protect_tlv_size`: the protected TLV area, info included (0 when there is none).
    pub protect_tlv_size: u16,
    /// `ih_img_size`: the payload's length.
    pub img_size: u32,
    /// `ih_flags`.
    pub flags: u32,
    /// `ih_ver`.
    pub version: Version,
}

impl Header {
    /// The 32 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        let fields: [&[u8]; 9] = [
            &IMAGE_MAGIC.to_le_bytes(),
            &self.load_addr.to_le_bytes(),
            &self.hdr_size.to_le_bytes(),
            &self.protect_tlv_size.to_le_bytes(),
            &self.img_size.to_le_bytes(),
            &self.flags.to_le_bytes(),
            &[self.version.major, self.version.minor],
            &self.version.revision.to_le_bytes(),
            &self.version.build.to_le_bytes(),
        ];
        // `_pad1` (4 bytes) stays zero.
        let mut at = 0;
        for f in fields {
            if let Some(dst) = b.get_mut(at..at + f.len()) {
                dst.copy_from_slice(f);
            }
            at += f.len();
        }
        b
    }

    /// Whether the payload is encrypted (either AES flag).
    pub fn is_encrypted(&self) -> bool {
        self.flags & (flags::ENCRYPTED_AES128 | flags::ENCRYPTED_AES256) != 0
    }
}

/// One TLV as found in an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// `it_type`.
    pub kind: u16,
    /// The value.
    pub value: &'a [u8],
    /// Offset of the TLV (its 4-byte header) in the image.
    pub offset: usize,
    /// The area it is in.
    pub area: Area,
}

/// A parsed image: the layout is well-formed; nothing cryptographic is checked yet.
#[derive(Clone, Debug)]
pub struct Image<'a> {
    header: Header,
    bytes: &'a [u8],
    /// End of the hashed region: header, payload and protected TLVs.
    hashed_end: usize,
    tlvs: Vec<Tlv<'a>>,
}

/// A little-endian cursor over the image that refuses to read past the end.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&self, at: usize, n: usize, field: &'static str) -> Result<&'a [u8], ParseError> {
        let available = self.bytes.len().saturating_sub(at);
        at.checked_add(n)
            .and_then(|end| self.bytes.get(at..end))
            .ok_or(ParseError::Truncated {
                field,
                needed: n,
                available,
            })
    }

    fn u16(&self, at: usize, field: &'static str) -> Result<u16, ParseError> {
        let b = self.take(at, 2, field)?;
        Ok(u16::from_le_bytes([
            b.first().copied().unwrap_or(0),
            b.get(1).copied().unwrap_or(0),
        ]))
    }

    fn u32(&self, at: usize, field: &'static str) -> Result<u32, ParseError> {
        let b = self.take(at, 4, field)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        Ok(u32::from_le_bytes(a))
    }
}

impl<'a> Image<'a> {
    /// Parses `bytes` as one image that ends with its last TLV.
    ///
    /// # Errors
    /// The first thing wrong with the layout, as a [`ParseError`].
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        if bytes.len() > MAX_IMAGE_BYTES {
            return Err(ParseError::TooLarge {
                len: bytes.len(),
                limit: MAX_IMAGE_BYTES,
            });
        }
        let c = Cursor { bytes };
        c.take(0, HEADER_LEN, "header")?;
        let magic = c.u32(0, "ih_magic")?;
        if magic != IMAGE_MAGIC {
            return Err(ParseError::BadMagic { found: magic });
        }
        let ver = c.take(20, 2, "ih_ver")?;
        let header = Header {
            load_addr: c.u32(4, "ih_load_addr")?,
            hdr_size: c.u16(8, "ih_hdr_size")?,
            protect_tlv_size: c.u16(10, "ih_protect_tlv_size")?,
            img_size: c.u32(12, "ih_img_size")?,
            flags: c.u32(16, "ih_flags")?,
            version: Version {
                major: ver.first().copied().unwrap_or(0),
                minor: ver.get(1).copied().unwrap_or(0),
                revision: c.u16(22, "ih_ver")?,
                build: c.u32(24, "ih_ver")?,
            },
        };
        if usize::from(header.hdr_size) < HEADER_LEN {
            return Err(ParseError::HeaderTooSmall {
                hdr_size: header.hdr_size,
            });
        }
        c.take(
            HEADER_LEN,
            usize::from(header.hdr_size) - HEADER_LEN,
            "header padding",
        )?;
        let img_size = usize::try_from(header.img_size).unwrap_or(usize::MAX);
        c.take(usize::from(header.hdr_size), img_size, "payload")?;
        let mut at = usize::from(header.hdr_size) + img_size;
        let mut tlvs = Vec::new();

        // MCUboot `bootutil_tlv_iter_begin`: the protected area is there when the header says so.
        let first_magic = c.u16(at, "TLV info")?;
        if header.protect_tlv_size != 0 || first_magic == TLV_PROT_INFO_MAGIC {
            if first_magic != TLV_PROT_INFO_MAGIC {
                return Err(ParseError::BadTlvInfoMagic {
                    area: Area::Protected,
                    found: first_magic,
                    expected: TLV_PROT_INFO_MAGIC,
                });
            }
            let total = c.u16(at + 2, "protected TLV info")?;
            if total != header.protect_tlv_size {
                return Err(ParseError::ProtectedSizeMismatch {
                    header: header.protect_tlv_size,
                    area: total,
                });
            }
            at = Self::area(&c, at, total, Area::Protected, &mut tlvs)?;
        }
        let hashed_end = at;
        let magic = c.u16(at, "TLV info")?;
        if magic != TLV_INFO_MAGIC {
            return Err(ParseError::BadTlvInfoMagic {
                area: Area::Unprotected,
                found: magic,
                expected: TLV_INFO_MAGIC,
            });
        }
        let total = c.u16(at + 2, "TLV info")?;
        at = Self::area(&c, at, total, Area::Unprotected, &mut tlvs)?;
        if at != bytes.len() {
            return Err(ParseError::TrailingBytes {
                count: bytes.len() - at,
            });
        }
        Ok(Self {
            header,
            bytes,
            hashed_end,
            tlvs,
        })
    }

    /// Reads the TLV area that starts (with its info) at `start`; returns its end.
    fn area(
        c: &Cursor<'a>,
        start: usize,
        total: u16,
        area: Area,
        tlvs: &mut Vec<Tlv<'a>>,
    ) -> Result<usize, ParseError> {
        if usize::from(total) < TLV_HEADER_LEN {
            return Err(ParseError::BadTlvTotal { area, total });
        }
        let end = start + usize::from(total);
        c.take(start, usize::from(total), "TLV area")?;
        let mut at = start + TLV_HEADER_LEN;
        while at < end {
            if at + TLV_HEADER_LEN > end {
                return Err(ParseError::TlvOverrun { area, offset: at });
            }
            let kind = c.u16(at, "TLV type")?;
            let len = c.u16(at + 2, "TLV length")?;
            let value_end = at + TLV_HEADER_LEN + usize::from(len);
            if value_end > end {
                return Err(ParseError::TlvOverrun { area, offset: at });
            }
            if let Some(k) = TlvKind::from_u16(kind) {
                if !k.admits(usize::from(len)) {
                    return Err(ParseError::BadTlvLength { kind, len });
                }
                if k.area() != area {
                    return Err(ParseError::MisplacedTlv { kind, area });
                }
                if tlvs.iter().any(|t| t.kind == kind) {
                    return Err(ParseError::DuplicateTlv { kind });
                }
            }
            tlvs.push(Tlv {
                kind,
                value: c.take(at + TLV_HEADER_LEN, usize::from(len), "TLV value")?,
                offset: at,
                area,
            });
            at = value_end;
        }
        Ok(end)
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The whole image.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The payload (encrypted, when the header says so).
    pub fn payload(&self) -> &'a [u8] {
        let start = usize::from(self.header.hdr_size);
        let len = usize::try_from(self.header.img_size).unwrap_or(0);
        self.bytes.get(start..start + len).unwrap_or_default()
    }

    /// Offset of the payload in the image.
    pub fn payload_offset(&self) -> usize {
        usize::from(self.header.hdr_size)
    }

    /// What the hash and the signature cover: header, payload, protected TLVs.
    pub fn hashed(&self) -> &'a [u8] {
        self.bytes.get(..self.hashed_end).unwrap_or_default()
    }

    /// Every TLV, protected ones first, in image order.
    pub fn tlvs(&self) -> &[Tlv<'a>] {
        &self.tlvs
    }

    /// The value of the TLV of `kind`, if present (known kinds appear once at most).
    pub fn tlv(&self, kind: TlvKind) -> Option<&'a [u8]> {
        self.tlvs
            .iter()
            .find(|t| t.kind == kind as u16)
            .map(|t| t.value)
    }

    /// The security counter TLV's value.
    pub fn security_counter(&self) -> Option<u32> {
        let v = self.tlv(TlvKind::SecCnt)?;
        Some(u32::from_le_bytes(v.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_print() {
        let v: Version = "1.2.3+4".parse().unwrap();
        assert_eq!(
            v,
            Version {
                major: 1,
                minor: 2,
                revision: 3,
                build: 4
            }
        );
        assert_eq!(v.to_string(), "1.2.3+4");
        assert_eq!("0.0.1".parse::<Version>().unwrap().to_string(), "0.0.1");
        for bad in ["1.2", "1.2.3.4", "256.0.0", "1.2.x", "1.2.3+", ""] {
            assert!(bad.parse::<Version>().is_err(), "{bad}");
        }
    }

    #[test]
    fn header_layout_matches_image_h() {
        let h = Header {
            load_addr: 0x1122_3344,
            hdr_size: 0x200,
            protect_tlv_size: 12,
            img_size: 0x1000,
            flags: flags::ENCRYPTED_AES128,
            version: Version {
                major: 1,
                minor: 2,
                revision: 0x0304,
                build: 0x0506_0708,
            },
        };
        let want = [
            0x3d, 0xb8, 0xf3, 0x96, // ih_magic
            0x44, 0x33, 0x22, 0x11, // ih_load_addr
            0x00, 0x02, // ih_hdr_size
            0x0c, 0x00, // ih_protect_tlv_size
            0x00, 0x10, 0x00, 0x00, // ih_img_size
            0x04, 0x00, 0x00, 0x00, // ih_flags
            0x01, 0x02, 0x04, 0x03, 0x08, 0x07, 0x06, 0x05, // ih_ver
            0x00, 0x00, 0x00, 0x00, // _pad1
        ];
        assert_eq!(h.to_bytes(), want);
    }
}
