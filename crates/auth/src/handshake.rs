//! The protocol of `docs/auth.md` as a transport-agnostic state machine. Each state is a type and
//! each step consumes it by move, so a nonce or an ephemeral key is used once:
//!
//! ```text
//! Initiator::start ── hello_I ──────────────────▶ Responder::respond
//! Initiator::finish ◀── hello_R, answer_R ─────── (validates I, signs)
//! (validates R, checks answer_R, signs) ── answer_I ──▶ Responder::finish
//! ```
//!
//! Time and CRLs are arguments ([`Trust`]); the root is the one in the device's own storage.

use std::fmt;

use aws_lc_rs::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, ECDH_P256};
use aws_lc_rs::digest::{Context, SHA256};
use aws_lc_rs::{hkdf, hmac, rand::SystemRandom};
use rustls_pki_types::CertificateDer;
use subtle::ConstantTimeEq as _;
use trustfab_device::Device;
use trustfab_pki::{validate, Policy, Purpose};
use trustfab_types::UnixTime;
use zeroize::Zeroizing;

use crate::identity::{parse_subject, Identity, Subject};
use crate::wire::{self, Answer, Hello, Message, Role, NONCE_LEN, POINT_LEN, TAG_LEN};
use crate::Error;

/// Domain separation of the transcript hash.
const LABEL_TRANSCRIPT: &[u8] = b"trustfab-auth v1 transcript\0";
/// Domain separation of the signed answer.
const LABEL_ANSWER: &[u8] = b"trustfab-auth v1 answer\0";
/// Domain separation of the key confirmation tag.
const LABEL_CONFIRM: &[u8] = b"trustfab-auth v1 confirm\0";
/// HKDF-Expand info of each derived key (RFC 5869 §2.3).
const INFO_CONFIRM_I: &[u8] = b"trustfab-auth v1 confirm initiator";
const INFO_CONFIRM_R: &[u8] = b"trustfab-auth v1 confirm responder";
const INFO_SESSION: &[u8] = b"trustfab-auth v1 session key";

/// What a side trusts besides the root in its own storage: the time, and the OEM's CRLs.
#[derive(Clone, Copy, Debug)]
pub struct Trust<'a> {
    /// CRLs (DER) from the issuer of the peer's certificate. When given, the peer's status must
    /// be known from them and they must be current.
    pub crls: &'a [Vec<u8>],
    /// The time of validation.
    pub now: UnixTime,
}

/// The 32-byte session key both sides derive. Zeroized on drop, never printed, not `Clone`.
pub struct SessionKey(Zeroizing<[u8; 32]>);

impl SessionKey {
    /// The key bytes. Every call site is an audited exposure.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether two keys are equal, in constant time.
    pub fn ct_eq(&self, other: &Self) -> bool {
        bool::from(self.0.as_slice().ct_eq(other.0.as_slice()))
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey([secret elided])")
    }
}

/// An authenticated session: who the peer is, the transcript both sides agree on, the key.
#[derive(Debug)]
pub struct Session {
    /// Our role.
    pub role: Role,
    /// Who the peer's certificate names.
    pub peer: Subject,
    /// The peer's chain (device certificate first), validated to our root.
    pub peer_chain: Vec<Vec<u8>>,
    /// SHA-256 of the transcript: equal on both sides, a public session id.
    pub transcript: [u8; 32],
    /// The session key.
    pub key: SessionKey,
}

/// Both confirmation keys and the session key, from HKDF over the ECDH secret salted with the
/// transcript hash.
struct Keys {
    confirm_i: Zeroizing<[u8; 32]>,
    confirm_r: Zeroizing<[u8; 32]>,
    session: Zeroizing<[u8; 32]>,
}

impl Keys {
    fn confirm(&self, role: Role) -> &[u8; 32] {
        match role {
            Role::Initiator => &self.confirm_i,
            Role::Responder => &self.confirm_r,
        }
    }
}

fn transcript(hello_i: &[u8], hello_r: &[u8]) -> Result<[u8; 32], Error> {
    let mut ctx = Context::new(&SHA256);
    ctx.update(LABEL_TRANSCRIPT);
    for frame in [hello_i, hello_r] {
        let len = u32::try_from(frame.len()).map_err(|_| Error::Crypto("transcript length"))?;
        ctx.update(&len.to_be_bytes());
        ctx.update(frame);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

/// ECDH with the peer's ephemeral key, then HKDF-SHA256 (RFC 5869) with the transcript as salt.
fn agree(
    own: EphemeralPrivateKey,
    peer: &[u8; POINT_LEN],
    transcript: &[u8; 32],
) -> Result<Keys, Error> {
    let peer = UnparsedPublicKey::new(&ECDH_P256, peer);
    agreement::agree_ephemeral(own, peer, Error::Ephemeral, |shared| {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, transcript).extract(shared);
        let expand = |info: &[u8]| -> Result<Zeroizing<[u8; 32]>, Error> {
            let mut out = Zeroizing::new([0u8; 32]);
            prk.expand(&[info], hkdf::HKDF_SHA256)
                .and_then(|okm| okm.fill(out.as_mut_slice()))
                .map_err(|_| Error::Crypto("hkdf"))?;
            Ok(out)
        };
        Ok(Keys {
            confirm_i: expand(INFO_CONFIRM_I)?,
            confirm_r: expand(INFO_CONFIRM_R)?,
            session: expand(INFO_SESSION)?,
        })
    })
}

/// The key confirmation tag of `role`: HMAC-SHA256 over label ‖ role ‖ echo ‖ transcript.
fn confirm_tag(
    key: &[u8; 32],
    role: Role,
    echo: &[u8; NONCE_LEN],
    transcript: &[u8; 32],
) -> [u8; TAG_LEN] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(LABEL_CONFIRM);
    ctx.update(&[role.byte()]);
    ctx.update(echo);
    ctx.update(transcript);
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// What the device of `role` signs: label ‖ role ‖ echo ‖ transcript ‖ confirmation tag.
fn signed_bytes(
    role: Role,
    echo: &[u8; NONCE_LEN],
    transcript: &[u8; 32],
    tag: &[u8; TAG_LEN],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(LABEL_ANSWER.len() + 1 + NONCE_LEN + 32 + TAG_LEN);
    m.extend_from_slice(LABEL_ANSWER);
    m.push(role.byte());
    m.extend_from_slice(echo);
    m.extend_from_slice(transcript);
    m.extend_from_slice(tag);
    m
}

fn make_answer<D: Device>(
    id: &mut Identity<D>,
    role: Role,
    echo: &[u8; NONCE_LEN],
    transcript: &[u8; 32],
    keys: &Keys,
) -> Result<Vec<u8>, Error> {
    let confirm = confirm_tag(keys.confirm(role), role, echo, transcript);
    let signature = id.sign(&signed_bytes(role, echo, transcript, &confirm))?;
    Ok(Answer {
        role,
        echo: *echo,
        confirm,
        signature,
    }
    .encode()?)
}

fn expect_hello(frame: &[u8]) -> Result<Hello, Error> {
    match wire::decode(frame)? {
        Message::Hello(h) => Ok(h),
        other => Err(Error::Unexpected {
            expected: "hello",
            got: other.kind(),
        }),
    }
}

fn expect_answer(frame: &[u8]) -> Result<Answer, Error> {
    match wire::decode(frame)? {
        Message::Answer(a) => Ok(a),
        other => Err(Error::Unexpected {
            expected: "answer",
            got: other.kind(),
        }),
    }
}

/// Validates the peer's chain to `root` (from our own storage) with the CRLs of `trust`.
fn validate_peer(root: &[u8], chain: &[Vec<u8>], trust: &Trust<'_>) -> Result<Subject, Error> {
    let (leaf, intermediates) = chain.split_first().ok_or(Error::InvalidChain)?;
    let policy = Policy {
        root,
        intermediates,
        crls: trust.crls,
        now: trust.now,
        purpose: Purpose::ClientAuth,
    };
    validate(leaf, &policy).map_err(|e| match e {
        trustfab_pki::Error::Invalid(w) => match w {
            webpki::Error::UnknownIssuer => Error::UntrustedIssuer,
            webpki::Error::CertRevoked => Error::Revoked,
            webpki::Error::CertExpired { .. } => Error::Expired,
            webpki::Error::CertNotValidYet { .. } => Error::NotYetValid,
            _ => Error::InvalidChain,
        },
        _ => Error::InvalidChain,
    })?;
    let (subject, _) = parse_subject(leaf).ok_or(Error::InvalidChain)?;
    Ok(subject)
}

/// Checks the peer's answer in the documented order: role (reflection), echo (replay),
/// key confirmation (transcript), signature (possession of the certified key).
fn check_answer(
    answer: &Answer,
    own_role: Role,
    own_nonce: &[u8; NONCE_LEN],
    transcript: &[u8; 32],
    keys: &Keys,
    peer_cert: &[u8],
) -> Result<(), Error> {
    let peer_role = own_role.peer();
    if answer.role != peer_role {
        return Err(Error::Reflected { role: own_role });
    }
    if !bool::from(answer.echo.ct_eq(own_nonce)) {
        return Err(Error::Replayed);
    }
    let expected = confirm_tag(keys.confirm(peer_role), peer_role, own_nonce, transcript);
    if !bool::from(answer.confirm.ct_eq(&expected)) {
        return Err(Error::Transcript);
    }
    let der = CertificateDer::from(peer_cert);
    let ee = webpki::EndEntityCert::try_from(&der).map_err(|_| Error::InvalidChain)?;
    ee.verify_signature(
        webpki::aws_lc_rs::ECDSA_P256_SHA256,
        &signed_bytes(peer_role, own_nonce, transcript, &answer.confirm),
        &answer.signature,
    )
    .map_err(|_| Error::Signature)
}

/// A fresh ephemeral P-256 key pair. The ephemeral key lives in host memory, as in TLS with a
/// secure element: only the long-term identity key must stay in the device.
fn ephemeral() -> Result<(EphemeralPrivateKey, [u8; POINT_LEN]), Error> {
    let private = EphemeralPrivateKey::generate(&ECDH_P256, &SystemRandom::new())
        .map_err(|_| Error::Crypto("ephemeral key generation"))?;
    let public = private
        .compute_public_key()
        .map_err(|_| Error::Crypto("ephemeral public key"))?;
    let mut point = [0u8; POINT_LEN];
    if public.as_ref().len() != POINT_LEN {
        return Err(Error::Crypto("ephemeral public key"));
    }
    point.copy_from_slice(public.as_ref());
    Ok((private, point))
}

/// Our hello: its nonce and ephemeral key (kept to check the peer's messages) and its frame.
struct OwnHello {
    nonce: [u8; NONCE_LEN],
    ephemeral: EphemeralPrivateKey,
    point: [u8; POINT_LEN],
    frame: Vec<u8>,
}

fn own_hello<D: Device>(id: &mut Identity<D>, role: Role) -> Result<OwnHello, Error> {
    let nonce = id.random()?;
    let (ephemeral, point) = ephemeral()?;
    let frame = Hello {
        role,
        nonce,
        ephemeral: point,
        chain: id.chain().to_vec(),
    }
    .encode()?;
    Ok(OwnHello {
        nonce,
        ephemeral,
        point,
        frame,
    })
}

/// Refuses a hello that is our own sent back: our role, our nonce or our ephemeral key.
fn check_not_reflected(
    hello: &Hello,
    own_role: Role,
    own_nonce: &[u8; NONCE_LEN],
    own_point: &[u8; POINT_LEN],
) -> Result<(), Error> {
    if hello.role == own_role || hello.nonce == *own_nonce || hello.ephemeral == *own_point {
        return Err(Error::Reflected { role: own_role });
    }
    Ok(())
}

/// The side that opens the handshake, waiting for the responder's hello and answer.
pub struct Initiator {
    nonce: [u8; NONCE_LEN],
    point: [u8; POINT_LEN],
    ephemeral: EphemeralPrivateKey,
    hello: Vec<u8>,
}

impl fmt::Debug for Initiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Initiator").finish_non_exhaustive()
    }
}

impl Initiator {
    /// Opens a handshake: a fresh nonce from the device's generator, a fresh ephemeral key, and
    /// the hello frame to send.
    ///
    /// # Errors
    /// A device error, or a local certificate over the wire limit.
    pub fn start<D: Device>(id: &mut Identity<D>) -> Result<(Self, Vec<u8>), Error> {
        let own = own_hello(id, Role::Initiator)?;
        let frame = own.frame.clone();
        Ok((
            Self {
                nonce: own.nonce,
                point: own.point,
                ephemeral: own.ephemeral,
                hello: own.frame,
            },
            frame,
        ))
    }

    /// Takes the responder's hello and answer: validates its chain to the root in `id`'s
    /// storage, checks its answer, and answers its challenge. Returns the session and the answer
    /// frame to send.
    ///
    /// # Errors
    /// Any refusal of `docs/auth.md`, each its own [`Error`] variant.
    pub fn finish<D: Device>(
        self,
        id: &mut Identity<D>,
        trust: &Trust<'_>,
        hello_frame: &[u8],
        answer_frame: &[u8],
    ) -> Result<(Session, Vec<u8>), Error> {
        let hello = expect_hello(hello_frame)?;
        check_not_reflected(&hello, Role::Initiator, &self.nonce, &self.point)?;
        let peer = validate_peer(id.root(), &hello.chain, trust)?;
        let transcript = transcript(&self.hello, hello_frame)?;
        let keys = agree(self.ephemeral, &hello.ephemeral, &transcript)?;
        let answer = expect_answer(answer_frame)?;
        check_answer(
            &answer,
            Role::Initiator,
            &self.nonce,
            &transcript,
            &keys,
            &hello.chain[0],
        )?;
        let own = make_answer(id, Role::Initiator, &hello.nonce, &transcript, &keys)?;
        Ok((
            Session {
                role: Role::Initiator,
                peer,
                peer_chain: hello.chain,
                transcript,
                key: SessionKey(keys.session),
            },
            own,
        ))
    }
}

/// The side that answers, waiting for the initiator's answer.
pub struct Responder {
    nonce: [u8; NONCE_LEN],
    transcript: [u8; 32],
    keys: Keys,
    peer: Subject,
    peer_chain: Vec<Vec<u8>>,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// Takes the initiator's hello: validates its chain to the root in `id`'s storage, then
    /// returns the state and the two frames to send, our hello and our answer.
    ///
    /// # Errors
    /// Any refusal of `docs/auth.md` that applies to a hello, or a device error.
    pub fn respond<D: Device>(
        id: &mut Identity<D>,
        trust: &Trust<'_>,
        hello_frame: &[u8],
    ) -> Result<(Self, [Vec<u8>; 2]), Error> {
        let hello = expect_hello(hello_frame)?;
        if hello.role != Role::Initiator {
            return Err(Error::Reflected {
                role: Role::Responder,
            });
        }
        let peer = validate_peer(id.root(), &hello.chain, trust)?;
        let own = own_hello(id, Role::Responder)?;
        check_not_reflected(&hello, Role::Responder, &own.nonce, &own.point)?;
        let transcript = transcript(hello_frame, &own.frame)?;
        let keys = agree(own.ephemeral, &hello.ephemeral, &transcript)?;
        let answer = make_answer(id, Role::Responder, &hello.nonce, &transcript, &keys)?;
        Ok((
            Self {
                nonce: own.nonce,
                transcript,
                keys,
                peer,
                peer_chain: hello.chain,
            },
            [own.frame, answer],
        ))
    }

    /// Takes the initiator's answer and checks it; the session is authenticated both ways.
    ///
    /// # Errors
    /// [`Error::Reflected`], [`Error::Replayed`], [`Error::Transcript`], [`Error::Signature`],
    /// or a message that does not decode or is not an answer.
    pub fn finish(self, answer_frame: &[u8]) -> Result<Session, Error> {
        let answer = expect_answer(answer_frame)?;
        check_answer(
            &answer,
            Role::Responder,
            &self.nonce,
            &self.transcript,
            &self.keys,
            &self.peer_chain[0],
        )?;
        Ok(Session {
            role: Role::Responder,
            peer: self.peer,
            peer_chain: self.peer_chain,
            transcript: self.transcript,
            key: SessionKey(self.keys.session),
        })
    }
}

/// A handshake refused by one side.
#[derive(Debug, thiserror::Error)]
#[error("refused by the {by}: {error}")]
pub struct Refused {
    /// The side that refused.
    pub by: Role,
    /// Why.
    #[source]
    pub error: Error,
}

/// Runs the whole handshake between two identities in memory: `a` initiates, `b` responds.
/// Returns both sessions (initiator's first).
///
/// # Errors
/// The first refusal, with the side that refused.
pub fn mutual<A: Device, B: Device>(
    a: &mut Identity<A>,
    trust_a: &Trust<'_>,
    b: &mut Identity<B>,
    trust_b: &Trust<'_>,
) -> Result<(Session, Session), Refused> {
    let by = |by| move |error| Refused { by, error };
    let (init, hello_i) = Initiator::start(a).map_err(by(Role::Initiator))?;
    let (resp, [hello_r, answer_r]) =
        Responder::respond(b, trust_b, &hello_i).map_err(by(Role::Responder))?;
    let (session_a, answer_i) = init
        .finish(a, trust_a, &hello_r, &answer_r)
        .map_err(by(Role::Initiator))?;
    let session_b = resp.finish(&answer_i).map_err(by(Role::Responder))?;
    Ok((session_a, session_b))
}
