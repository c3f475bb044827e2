//! The wire format of the authentication protocol (`docs/auth.md`, "Format"): two message types
//! in one versioned, size-limited frame. Decoding is pure and strict: a frame decodes to exactly
//! one [`Message`] and encodes back to the same bytes, so the transcript can be computed over
//! either.

use std::fmt;

/// The only protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Frame header: version u8, type u8, body length u16 (big-endian).
pub const HEADER_LEN: usize = 4;
/// Largest frame, header included, in bytes.
pub const MAX_FRAME: usize = 16 * 1024;
/// Largest certificate in a chain, in bytes (a certificate slot of a secure MCU).
pub const MAX_CERT: usize = 4096;
/// Most certificates in a chain: the device certificate and at most two CAs below the root.
pub const MAX_CHAIN: usize = 3;
/// Length of a nonce.
pub const NONCE_LEN: usize = 32;
/// Length of an ephemeral P-256 public key (uncompressed SEC1 point).
pub const POINT_LEN: usize = 65;
/// Length of a key confirmation tag (HMAC-SHA256).
pub const TAG_LEN: usize = 32;
/// Shortest and longest DER ECDSA-P256 signature.
pub const SIG_LEN: std::ops::RangeInclusive<usize> = 8..=72;

/// Message type of a [`Hello`].
const TYPE_HELLO: u8 = 0x01;
/// Message type of an [`Answer`].
const TYPE_ANSWER: u8 = 0x02;

/// Which side of the handshake a message comes from. Carried in every message and bound into
/// every signature, so an answer cannot be reflected to its own sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The side that opens the handshake.
    Initiator,
    /// The side that answers it.
    Responder,
}

impl Role {
    /// The role's wire byte.
    pub fn byte(self) -> u8 {
        match self {
            Self::Initiator => 0x01,
            Self::Responder => 0x02,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0x01 => Some(Self::Initiator),
            0x02 => Some(Self::Responder),
            _ => None,
        }
    }

    /// The other role.
    pub fn peer(self) -> Self {
        match self {
            Self::Initiator => Self::Responder,
            Self::Responder => Self::Initiator,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Initiator => "initiator",
            Self::Responder => "responder",
        })
    }
}

/// The first message of each side: a fresh nonce, a fresh ephemeral key, the certificate chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sender's role.
    pub role: Role,
    /// A fresh nonce: the challenge the peer must answer.
    pub nonce: [u8; NONCE_LEN],
    /// A fresh ephemeral ECDH P-256 public key.
    pub ephemeral: [u8; POINT_LEN],
    /// The device certificate first, then the CAs below the root (DER); never the root.
    pub chain: Vec<Vec<u8>>,
}

/// The answer to the peer's challenge: key confirmation and a signature with the device key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The sender's role.
    pub role: Role,
    /// The peer's nonce this answers.
    pub echo: [u8; NONCE_LEN],
    /// HMAC-SHA256 under the sender's confirmation key over the transcript.
    pub confirm: [u8; TAG_LEN],
    /// DER ECDSA-P256-SHA256 signature by the sender's device key.
    pub signature: Vec<u8>,
}

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A [`Hello`].
    Hello(Hello),
    /// An [`Answer`].
    Answer(Answer),
}

impl Message {
    /// The message type's name, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello(_) => "hello",
            Self::Answer(_) => "answer",
        }
    }
}

/// Why a frame does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame is larger than [`MAX_FRAME`].
    #[error("message is {len} bytes, the limit is {limit}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The frame ends inside a field.
    #[error("message is truncated at {field}")]
    Truncated {
        /// The field.
        field: &'static str,
    },
    /// A version this build does not speak.
    #[error("message version {found} is not supported (this build speaks version {VERSION})")]
    Version {
        /// The version found.
        found: u8,
    },
    /// An unknown message type.
    #[error("unknown message type 0x{found:02x}")]
    UnknownType {
        /// The type found.
        found: u8,
    },
    /// A field holds a value the format does not allow.
    #[error("message field {field} is invalid")]
    Invalid {
        /// The field.
        field: &'static str,
    },
    /// The header's body length and the bytes given disagree.
    #[error("message body is {actual} bytes, its header says {declared}")]
    Length {
        /// The length in the header.
        declared: usize,
        /// The bytes present.
        actual: usize,
    },
    /// Bytes after the last field of the body.
    #[error("message has {extra} bytes after its last field")]
    Trailing {
        /// How many.
        extra: usize,
    },
}

/// The body length announced by a frame header, after checking its version, type and the
/// frame limit: what a stream reader reads next.
///
/// # Errors
/// An unsupported version, an unknown type, or a frame over [`MAX_FRAME`].
pub fn body_len(header: &[u8; HEADER_LEN]) -> Result<usize, DecodeError> {
    let [version, ty, hi, lo] = *header;
    if version != VERSION {
        return Err(DecodeError::Version { found: version });
    }
    if ty != TYPE_HELLO && ty != TYPE_ANSWER {
        return Err(DecodeError::UnknownType { found: ty });
    }
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if HEADER_LEN + len > MAX_FRAME {
        return Err(DecodeError::TooLarge {
            len: HEADER_LEN + len,
            limit: MAX_FRAME,
        });
    }
    Ok(len)
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated { field });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn role(&mut self) -> Result<Role, DecodeError> {
        Role::from_byte(self.u8("role")?).ok_or(DecodeError::Invalid { field: "role" })
    }
}

/// Decodes one frame. Pure: no I/O, no allocation beyond the message, no panic on any input.
///
/// # Errors
/// Any [`DecodeError`]: the frame is checked against [`MAX_FRAME`] before anything else, then
/// the version, the type, the length and every field against its own limit.
pub fn decode(frame: &[u8]) -> Result<Message, DecodeError> {
    if frame.len() > MAX_FRAME {
        return Err(DecodeError::TooLarge {
            len: frame.len(),
            limit: MAX_FRAME,
        });
    }
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(
        frame
            .get(..HEADER_LEN)
            .ok_or(DecodeError::Truncated { field: "header" })?,
    );
    let declared = body_len(&header)?;
    let body = &frame[HEADER_LEN..];
    if body.len() != declared {
        return Err(DecodeError::Length {
            declared,
            actual: body.len(),
        });
    }
    let mut r = Reader { rest: body };
    let msg = if header[1] == TYPE_HELLO {
        let role = r.role()?;
        let nonce = r.array::<NONCE_LEN>("nonce")?;
        let ephemeral = r.array::<POINT_LEN>("ephemeral")?;
        // SEC1 §2.3.3: an uncompressed point starts with 0x04.
        if ephemeral[0] != 0x04 {
            return Err(DecodeError::Invalid { field: "ephemeral" });
        }
        let count = usize::from(r.u8("chain length")?);
        if count == 0 || count > MAX_CHAIN {
            return Err(DecodeError::Invalid {
                field: "chain length",
            });
        }
        let mut chain = Vec::with_capacity(count);
        for _ in 0..count {
            let len = usize::from(r.u16("certificate length")?);
            if len == 0 || len > MAX_CERT {
                return Err(DecodeError::Invalid {
                    field: "certificate length",
                });
            }
            chain.push(r.take(len, "certificate")?.to_vec());
        }
        Message::Hello(Hello {
            role,
            nonce,
            ephemeral,
            chain,
        })
    } else {
        let role = r.role()?;
        let echo = r.array::<NONCE_LEN>("echo")?;
        let confirm = r.array::<TAG_LEN>("confirm")?;
        let len = usize::from(r.u8("signature length")?);
        if !SIG_LEN.contains(&len) {
            return Err(DecodeError::Invalid {
                field: "signature length",
            });
        }
        let signature = r.take(len, "signature")?.to_vec();
        Message::Answer(Answer {
            role,
            echo,
            confirm,
            signature,
        })
    };
    if !r.rest.is_empty() {
        return Err(DecodeError::Trailing {
            extra: r.rest.len(),
        });
    }
    Ok(msg)
}

/// Why a message cannot be encoded: a field over its limit (a caller's mistake, never input).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("message field {field} is over its limit")]
pub struct EncodeError {
    /// The field.
    pub field: &'static str,
}

fn frame(ty: u8, body: Vec<u8>) -> Result<Vec<u8>, EncodeError> {
    let len = u16::try_from(body.len())
        .ok()
        .filter(|l| HEADER_LEN + usize::from(*l) <= MAX_FRAME)
        .ok_or(EncodeError { field: "message" })?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(VERSION);
    out.push(ty);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

impl Hello {
    /// The frame.
    ///
    /// # Errors
    /// When the chain is empty, too long, or holds a certificate over [`MAX_CERT`].
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        if self.chain.is_empty() || self.chain.len() > MAX_CHAIN {
            return Err(EncodeError {
                field: "chain length",
            });
        }
        let mut body = Vec::new();
        body.push(self.role.byte());
        body.extend_from_slice(&self.nonce);
        body.extend_from_slice(&self.ephemeral);
        body.push(u8::try_from(self.chain.len()).map_err(|_| EncodeError {
            field: "chain length",
        })?);
        for cert in &self.chain {
            let len = u16::try_from(cert.len())
                .ok()
                .filter(|l| *l > 0 && usize::from(*l) <= MAX_CERT)
                .ok_or(EncodeError {
                    field: "certificate",
                })?;
            body.extend_from_slice(&len.to_be_bytes());
            body.extend_from_slice(cert);
        }
        frame(TYPE_HELLO, body)
    }
}

impl Answer {
    /// The frame.
    ///
    /// # Errors
    /// When the signature's length is outside [`SIG_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let len = u8::try_from(self.signature.len())
            .ok()
            .filter(|l| SIG_LEN.contains(&usize::from(*l)))
            .ok_or(EncodeError { field: "signature" })?;
        let mut body = Vec::with_capacity(1 + NONCE_LEN + TAG_LEN + 1 + self.signature.len());
        body.push(self.role.byte());
        body.extend_from_slice(&self.echo);
        body.extend_from_slice(&self.confirm);
        body.push(len);
        body.extend_from_slice(&self.signature);
        frame(TYPE_ANSWER, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        let mut ephemeral = [7u8; POINT_LEN];
        ephemeral[0] = 4;
        Hello {
            role: Role::Initiator,
            nonce: [1; NONCE_LEN],
            ephemeral,
            chain: vec![vec![0x30; 300], vec![0x30; 200]],
        }
    }

    fn answer() -> Answer {
        Answer {
            role: Role::Responder,
            echo: [2; NONCE_LEN],
            confirm: [3; TAG_LEN],
            signature: vec![0x30; 71],
        }
    }

    #[test]
    fn messages_round_trip_byte_for_byte() {
        for m in [Message::Hello(hello()), Message::Answer(answer())] {
            let bytes = match &m {
                Message::Hello(h) => h.encode().unwrap(),
                Message::Answer(a) => a.encode().unwrap(),
            };
            assert_eq!(decode(&bytes).unwrap(), m);
        }
    }

    #[test]
    fn answer_layout_is_the_documented_one() {
        let bytes = answer().encode().unwrap();
        // version 1, type 2, body length 1 + 32 + 32 + 1 + 71 = 137 = 0x0089
        assert_eq!(&bytes[..4], &[0x01, 0x02, 0x00, 0x89]);
        assert_eq!(bytes[4], 0x02); // role: responder
        assert_eq!(&bytes[5..37], &[2; 32]);
        assert_eq!(&bytes[37..69], &[3; 32]);
        assert_eq!(bytes[69], 71);
        assert_eq!(bytes.len(), 4 + 137);
    }

    #[test]
    fn every_refusal_has_its_own_error() {
        let good = hello().encode().unwrap();
        let mut v = good.clone();
        v[0] = 2;
        assert_eq!(decode(&v), Err(DecodeError::Version { found: 2 }));
        let mut v = good.clone();
        v[1] = 9;
        assert_eq!(decode(&v), Err(DecodeError::UnknownType { found: 9 }));
        assert_eq!(
            decode(&good[..good.len() - 1]),
            Err(DecodeError::Length {
                declared: good.len() - 4,
                actual: good.len() - 5
            })
        );
        assert_eq!(
            decode(&good[..3]),
            Err(DecodeError::Truncated { field: "header" })
        );
        let mut v = good.clone();
        v[4] = 3;
        assert_eq!(decode(&v), Err(DecodeError::Invalid { field: "role" }));
        let mut v = good.clone();
        v[4 + 1 + 32] = 2;
        assert_eq!(decode(&v), Err(DecodeError::Invalid { field: "ephemeral" }));
        let mut v = good.clone();
        v[4 + 1 + 32 + 65] = 4;
        assert_eq!(
            decode(&v),
            Err(DecodeError::Invalid {
                field: "chain length"
            })
        );
        // One certificate fewer announced: the second one is left over.
        let mut v = good;
        v[4 + 1 + 32 + 65] = 1;
        assert_eq!(decode(&v), Err(DecodeError::Trailing { extra: 202 }));
        let big = vec![0u8; MAX_FRAME + 1];
        assert_eq!(
            decode(&big),
            Err(DecodeError::TooLarge {
                len: MAX_FRAME + 1,
                limit: MAX_FRAME
            })
        );
        let header = [1, 1, 0xff, 0xff];
        assert!(matches!(
            body_len(&header),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn no_prefix_of_a_message_decodes() {
        let good = answer().encode().unwrap();
        for n in 0..good.len() {
            assert!(decode(&good[..n]).is_err(), "prefix of {n} bytes decoded");
        }
    }
}
