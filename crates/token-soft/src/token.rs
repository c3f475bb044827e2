//! The soft token: key objects and anchors in memory behind a lock, every change sealed to the
//! file before it is acknowledged. Attributes (usage, sensitive, extractable) are enforced here,
//! as a PKCS#11 token would enforce them: only a distribution key that is extractable is ever
//! wrapped out, and only with `wrap_for` to a P-256 recipient; a MAC key (HMAC-SHA256) only MACs
//! and verifies, and never leaves.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use aws_lc_rs::agreement::{self, UnparsedPublicKey, ECDH_P256};
use aws_lc_rs::encoding::{AsDer as _, Pkcs8V1Der};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _};
use trustfab_token::{
    check_anchor, check_unwrap_in, check_wrap_out, kek_from_shared_secret, unwrap_pkcs8,
    wrap_known_for, Curve, Error, KeyHandle, KeyInfo, KeyLabel, KeySpec, KeyUsage, MacKeySpec,
    MacTag, PublicKey, Signature, Token, WrappedKey, MAC_LEN,
};
use trustfab_types::{Passphrase, SecretBytes, SecretKeyDer};
use zeroize::Zeroizing;

use crate::sealed::{Argon2Cost, Sealing};

/// The usable form of a private key. aws-lc clears the scalar when the object is freed.
enum Live {
    Sign(EcdsaKeyPair),
    Transport(agreement::PrivateKey),
    /// A distribution key has no operation of its own: it is only ever wrapped out, from its
    /// PKCS#8 form.
    Distribute,
    /// An HMAC-SHA256 key (boxed: its context is far larger than the other variants).
    Mac(Box<hmac::Key>),
}

/// A key's secret as the store seals it; zeroized on drop, never printed.
enum Secret {
    /// An EC key's PKCS#8 DER.
    Pkcs8(SecretKeyDer),
    /// A MAC key's [`MAC_LEN`] raw bytes.
    Mac(SecretBytes),
}

impl Secret {
    /// The bytes the store body holds for the key.
    fn stored(&self) -> &[u8] {
        match self {
            Self::Pkcs8(der) => der.secret_pkcs8_der(),
            Self::Mac(raw) => raw.expose_secret(),
        }
    }
}

struct Entry {
    info: KeyInfo,
    /// The public key of an EC key; a MAC key has none.
    public: Option<PublicKey>,
    secret: Secret,
    live: Live,
}

impl Entry {
    /// Loads a key from the secret the store keeps for it (PKCS#8 DER, or a MAC key's raw
    /// bytes), taking it over without a copy.
    fn load(info: KeyInfo, secret: Secret) -> Result<Self, Error> {
        match secret {
            Secret::Mac(raw) => Self::load_mac(info, raw),
            Secret::Pkcs8(der) => Self::load_ec(info, der),
        }
    }

    /// An EC key from its PKCS#8 DER.
    fn load_ec(info: KeyInfo, pkcs8: SecretKeyDer) -> Result<Self, Error> {
        let curve = info
            .curve
            .ok_or(Error::BadKey("an EC key without a curve"))?;
        let der = pkcs8.secret_pkcs8_der();
        let (live, point) = match info.usage {
            KeyUsage::Sign => {
                let pair = EcdsaKeyPair::from_pkcs8(curve.signing_alg(), der)
                    .map_err(|_| Error::BadKey("not a PKCS#8 key on the key's curve"))?;
                let point = pair.public_key().as_ref().to_vec();
                (Live::Sign(pair), point)
            }
            KeyUsage::KeyTransport => {
                let k = agreement::PrivateKey::from_private_key_der(&ECDH_P256, der)
                    .map_err(|_| Error::BadKey("not a PKCS#8 P-256 key"))?;
                let point = k
                    .compute_public_key()
                    .map_err(|_| Error::BadKey("public key"))?
                    .as_ref()
                    .to_vec();
                (Live::Transport(k), point)
            }
            KeyUsage::Distribute => {
                if curve != Curve::P256 {
                    return Err(Error::BadKey("distribution keys are P-256"));
                }
                // Parsed only to check the key and compute its public point; dropped at once.
                let pair = EcdsaKeyPair::from_pkcs8(curve.signing_alg(), der)
                    .map_err(|_| Error::BadKey("not a PKCS#8 P-256 key"))?;
                let point = pair.public_key().as_ref().to_vec();
                (Live::Distribute, point)
            }
            KeyUsage::Mac => return Err(Error::BadKey("a MAC key is not an EC key")),
        };
        let public = PublicKey::from_point(curve, &point)?;
        Ok(Self {
            info,
            public: Some(public),
            secret: Secret::Pkcs8(pkcs8),
            live,
        })
    }

    /// A MAC key: no curve, [`MAC_LEN`] bytes, sensitive and not extractable.
    fn load_mac(info: KeyInfo, raw: SecretBytes) -> Result<Self, Error> {
        if info.curve.is_some() || !info.sensitive || info.extractable {
            return Err(Error::BadKey(
                "a MAC key has no curve, is sensitive and not extractable",
            ));
        }
        if raw.expose_secret().len() != MAC_LEN {
            return Err(Error::BadKey("a MAC key is 32 bytes"));
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, raw.expose_secret());
        Ok(Self {
            info,
            public: None,
            secret: Secret::Mac(raw),
            live: Live::Mac(Box::new(key)),
        })
    }

    /// The key as a MAC key, or the refusal for any other key.
    fn mac_key(&self) -> Result<&hmac::Key, Error> {
        match &self.live {
            Live::Mac(k) => Ok(k),
            _ => Err(Error::NotPermitted { operation: "mac" }),
        }
    }
}

/// Anchors by label text: small values the store holds for the application.
type Anchors = BTreeMap<String, Vec<u8>>;

struct State {
    sealing: Sealing,
    next_id: u64,
    keys: BTreeMap<u64, Entry>,
    anchors: Anchors,
}

/// The embedded token: keys in this process, sealed in one file.
pub struct SoftToken {
    path: PathBuf,
    state: RwLock<State>,
    rng: SystemRandom,
}

impl fmt::Debug for SoftToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.read().keys.len();
        write!(
            f,
            "SoftToken({}, {n} keys, [secrets elided])",
            self.path.display()
        )
    }
}

impl SoftToken {
    /// Creates a new, empty store at `path` (which must not exist) sealed under `passphrase`.
    ///
    /// # Errors
    /// [`Error::Io`] when the file exists or cannot be written.
    pub fn create(path: &Path, passphrase: &Passphrase, cost: Argon2Cost) -> Result<Self, Error> {
        let _lock = lock_store(path)?;
        if path.exists() {
            return Err(Error::Io {
                action: "creating",
                path: path.display().to_string(),
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        let state = State {
            sealing: Sealing::new(passphrase, cost)?,
            next_id: 1,
            keys: BTreeMap::new(),
            anchors: Anchors::new(),
        };
        let token = Self {
            path: path.to_path_buf(),
            state: RwLock::new(state),
            rng: SystemRandom::new(),
        };
        token.persist(&token.read())?;
        Ok(token)
    }

    /// Opens the store at `path`.
    ///
    /// # Errors
    /// [`Error::WrongCredential`], [`Error::StoreTampered`], [`Error::StoreVersion`],
    /// [`Error::StoreFormat`], [`Error::TooLarge`] or [`Error::Io`].
    pub fn open(path: &Path, passphrase: &Passphrase) -> Result<Self, Error> {
        let (sealing, body) = Sealing::read(path, passphrase)?;
        let format = |reason| Error::StoreFormat {
            path: path.display().to_string(),
            reason,
        };
        let (next_id, records, anchors) = decode(&body).map_err(format)?;
        let keys = records
            .into_iter()
            .map(|(id, (info, pkcs8))| Ok((id, load(info, pkcs8)?)))
            .collect::<Result<_, _>>()
            .map_err(format)?;
        Ok(Self {
            path: path.to_path_buf(),
            state: RwLock::new(State {
                sealing,
                next_id,
                keys,
                anchors,
            }),
            rng: SystemRandom::new(),
        })
    }

    /// The analogue of PKCS#11 `C_GetAttributeValue(CKA_VALUE)` asked for its length: the length
    /// of the private value if the token would reveal it. It refuses, with [`Error::Sensitive`],
    /// for every key that is sensitive or not extractable, which is every key made with a default
    /// [`KeySpec`]. There is no call that returns the value itself.
    ///
    /// # Errors
    /// [`Error::Sensitive`] or [`Error::UnknownKey`].
    pub fn private_value_len(&self, key: KeyHandle) -> Result<usize, Error> {
        let state = self.read();
        let e = state.keys.get(&key.backend_id()).ok_or(Error::UnknownKey)?;
        if e.info.sensitive || !e.info.extractable {
            return Err(Error::Sensitive);
        }
        Ok(e.secret.stored().len())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic while holding the lock leaves the map consistent (inserts are single calls).
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn persist(&self, state: &State) -> Result<(), Error> {
        let body = encode(state);
        state.sealing.write(&self.path, &body)
    }

    /// Takes in the keys and anchors another process (or another handle) sealed into the file
    /// since this one read it. Keys are never removed and ids never reused, so the file's keys
    /// are a superset of the ones in memory and every handle given out stays valid. Only the new
    /// keys are loaded; the ones in memory are kept as they are. Anchors are the file's: every
    /// anchor write goes to the file under the lock, so the file's are the latest.
    fn refresh(&self, state: &mut State) -> Result<(), Error> {
        let body = state.sealing.reread(&self.path)?;
        let format = |reason| Error::StoreFormat {
            path: self.path.display().to_string(),
            reason,
        };
        let tampered = || Error::StoreTampered {
            path: self.path.display().to_string(),
        };
        let (next_id, records, anchors) = decode(&body).map_err(format)?;
        if records.len() < state.keys.len() || next_id < state.next_id {
            // A file with fewer keys than this handle holds was not written by this store's
            // rules: refuse rather than drop keys.
            return Err(tampered());
        }
        let mut fresh = Vec::new();
        for (id, (info, stored)) in records {
            match state.keys.get(&id) {
                None => fresh.push((id, load(info, stored).map_err(format)?)),
                Some(e) if e.info == info && e.secret.stored() == stored.stored() => {}
                // The same id holding another key: not a store written by these rules.
                Some(_) => return Err(tampered()),
            }
        }
        state.next_id = next_id;
        state.keys.extend(fresh);
        state.anchors = anchors;
        Ok(())
    }

    /// Adds `entry` under a fresh id and seals the store; on a write failure the key is dropped
    /// again, so memory never holds a key the file does not. The read-modify-write runs under
    /// the store's lock file, after reading the file again, so that two processes (or two
    /// handles) adding keys to one store lose neither.
    fn insert(&self, entry: Entry) -> Result<KeyHandle, Error> {
        let _lock = lock_store(&self.path)?;
        let mut state = self.write();
        self.refresh(&mut state)?;
        if state
            .keys
            .values()
            .any(|e| e.info.label == entry.info.label)
        {
            return Err(Error::LabelExists {
                label: entry.info.label.as_str().to_owned(),
            });
        }
        let id = state.next_id;
        state.next_id += 1;
        state.keys.insert(id, entry);
        if let Err(e) = self.persist(&state) {
            state.keys.remove(&id);
            return Err(e);
        }
        Ok(KeyHandle::from_backend(id))
    }

    fn info_of(spec: &KeySpec) -> KeyInfo {
        KeyInfo {
            label: spec.label.clone(),
            curve: Some(spec.curve),
            usage: spec.usage,
            sensitive: spec.sensitive,
            extractable: spec.extractable,
        }
    }

    fn label_free(&self, label: &KeyLabel) -> Result<(), Error> {
        if self.read().keys.values().any(|e| &e.info.label == label) {
            return Err(Error::LabelExists {
                label: label.as_str().to_owned(),
            });
        }
        Ok(())
    }
}

impl Token for SoftToken {
    fn generate(&self, spec: &KeySpec) -> Result<KeyHandle, Error> {
        spec.check()?;
        self.label_free(&spec.label)?;
        let pkcs8 = match spec.usage {
            KeyUsage::Sign | KeyUsage::Distribute => {
                let doc = EcdsaKeyPair::generate_pkcs8(spec.curve.signing_alg(), &self.rng)
                    .map_err(|_| Error::Crypto("key generation"))?;
                SecretKeyDer::new(doc.as_ref().to_vec())
            }
            KeyUsage::KeyTransport => {
                let k = agreement::PrivateKey::generate(&ECDH_P256)
                    .map_err(|_| Error::Crypto("key generation"))?;
                let der: Pkcs8V1Der<'static> =
                    k.as_der().map_err(|_| Error::Crypto("key serialisation"))?;
                SecretKeyDer::new(der.as_ref().to_vec())
            }
            // `spec.check` refuses a MAC usage in an EC spec.
            KeyUsage::Mac => return Err(Error::BadSpec("MAC keys are made with generate_mac")),
        };
        self.insert(Entry::load_ec(Self::info_of(spec), pkcs8)?)
    }

    fn generate_mac(&self, spec: &MacKeySpec) -> Result<KeyHandle, Error> {
        self.label_free(&spec.label)?;
        let mut raw = Zeroizing::new(vec![0u8; MAC_LEN]);
        self.rng
            .fill(&mut raw)
            .map_err(|_| Error::Crypto("key generation"))?;
        let info = KeyInfo {
            label: spec.label.clone(),
            curve: None,
            usage: KeyUsage::Mac,
            sensitive: true,
            extractable: false,
        };
        self.insert(Entry::load_mac(info, SecretBytes::new(raw.to_vec()))?)
    }

    fn find(&self, label: &KeyLabel) -> Result<Option<KeyHandle>, Error> {
        let lookup = |state: &State| {
            state
                .keys
                .iter()
                .find(|(_, e)| &e.info.label == label)
                .map(|(id, _)| KeyHandle::from_backend(*id))
        };
        if let Some(h) = lookup(&self.read()) {
            return Ok(Some(h));
        }
        // Not here: another process may have added it since this handle read the file (an
        // import by `trustfab hsm import` while a station runs).
        let mut state = self.write();
        self.refresh(&mut state)?;
        Ok(lookup(&state))
    }

    fn info(&self, key: KeyHandle) -> Result<KeyInfo, Error> {
        let state = self.read();
        let e = state.keys.get(&key.backend_id()).ok_or(Error::UnknownKey)?;
        Ok(e.info.clone())
    }

    fn public_key(&self, key: KeyHandle) -> Result<PublicKey, Error> {
        let state = self.read();
        let e = state.keys.get(&key.backend_id()).ok_or(Error::UnknownKey)?;
        e.public.clone().ok_or(Error::NotPermitted {
            operation: "public key (a MAC key has none)",
        })
    }

    fn sign(&self, key: KeyHandle, message: &[u8]) -> Result<Signature, Error> {
        let state = self.read();
        let e = state.keys.get(&key.backend_id()).ok_or(Error::UnknownKey)?;
        match &e.live {
            Live::Sign(pair) => pair
                .sign(&self.rng, message)
                .map(|s| Signature::from_der(s.as_ref().to_vec()))
                .map_err(|_| Error::Crypto("signing")),
            Live::Transport(_) | Live::Distribute | Live::Mac(_) => {
                Err(Error::NotPermitted { operation: "sign" })
            }
        }
    }

    fn unwrap_key(
        &self,
        kt: KeyHandle,
        wrapped: &WrappedKey,
        spec: &KeySpec,
    ) -> Result<KeyHandle, Error> {
        check_unwrap_in(spec, wrapped)?;
        self.label_free(&spec.label)?;
        let pkcs8 = {
            let state = self.read();
            let e = state.keys.get(&kt.backend_id()).ok_or(Error::UnknownKey)?;
            let (Live::Transport(private), Some(public)) = (&e.live, &e.public) else {
                return Err(Error::NotPermitted {
                    operation: "unwrap",
                });
            };
            let context = wrapped.kdf_context(public.point());
            let kek: Zeroizing<[u8; 32]> = agreement::agree(
                private,
                UnparsedPublicKey::new(&ECDH_P256, wrapped.ephemeral_point()),
                Error::Unwrap,
                |z| kek_from_shared_secret(z, &context).map_err(|_| Error::Unwrap),
            )?;
            unwrap_pkcs8(&kek, wrapped.ciphertext())?
        };
        let entry = Entry::load_ec(Self::info_of(spec), pkcs8).map_err(|_| Error::Unwrap)?;
        if entry.public.as_ref() != Some(wrapped.public_key()) {
            return Err(Error::Unwrap);
        }
        self.insert(entry)
    }

    fn wrap_key(
        &self,
        key: KeyHandle,
        recipient: &PublicKey,
        info: &[u8],
    ) -> Result<WrappedKey, Error> {
        let state = self.read();
        let e = state.keys.get(&key.backend_id()).ok_or(Error::UnknownKey)?;
        check_wrap_out(&e.info, recipient, info)?;
        match (&e.secret, &e.public) {
            (Secret::Pkcs8(der), Some(public)) => wrap_known_for(recipient, der, public, info),
            _ => Err(Error::NotPermitted { operation: "wrap" }),
        }
    }

    fn mac(&self, key: KeyHandle, message: &[u8]) -> Result<MacTag, Error> {
        let state = self.read();
        let e = state.keys.get(&key.backend_id()).ok_or(Error::UnknownKey)?;
        let tag = hmac::sign(e.mac_key()?, message);
        let bytes = <[u8; MAC_LEN]>::try_from(tag.as_ref())
            .map_err(|_| Error::Crypto("HMAC-SHA256 tag length"))?;
        Ok(MacTag::from_bytes(bytes))
    }

    fn verify_mac(&self, key: KeyHandle, message: &[u8], tag: &[u8]) -> Result<(), Error> {
        let state = self.read();
        let e = state.keys.get(&key.backend_id()).ok_or(Error::UnknownKey)?;
        // aws-lc-rs compares in constant time.
        hmac::verify(e.mac_key()?, message, tag).map_err(|_| Error::MacMismatch)
    }

    fn read_anchor(&self, label: &KeyLabel) -> Result<Option<Vec<u8>>, Error> {
        // The file is the truth: another handle or process may have written since. The store is
        // replaced by rename, so a read without the lock sees one whole version. Only the
        // anchors are taken from it: keys are loaded by the writers that need them, and signing
        // goes on meanwhile under the read lock.
        let body = self.read().sealing.reread(&self.path)?;
        let (_, _, anchors) = decode(&body).map_err(|reason| Error::StoreFormat {
            path: self.path.display().to_string(),
            reason,
        })?;
        Ok(anchors.get(label.as_str()).cloned())
    }

    fn write_anchor(&self, label: &KeyLabel, value: &[u8]) -> Result<(), Error> {
        check_anchor(value)?;
        // The lock file serializes every writer of the store (handles and processes alike), so
        // nothing changes the keys or the anchors between the refresh and the replace below.
        let _lock = lock_store(&self.path)?;
        self.refresh(&mut self.write())?;
        // Seal and fsync under a read lock only: signing (a reader) goes on meanwhile, instead
        // of waiting ~10 ms for the disk on every anchor write.
        let mut anchors = {
            let state = self.read();
            let mut anchors = state.anchors.clone();
            anchors.insert(label.as_str().to_owned(), value.to_vec());
            state
                .sealing
                .write(&self.path, &encode_with(&state, &anchors))?;
            anchors
        };
        // Memory takes the anchor only once the file holds it.
        let mut state = self.write();
        std::mem::swap(&mut state.anchors, &mut anchors);
        Ok(())
    }

    fn fill_random(&self, out: &mut [u8]) -> Result<(), Error> {
        self.rng.fill(out).map_err(|_| Error::Crypto("random"))
    }
}

/// Takes the store's lock file, `<store>.lock` beside it (created owner-only), exclusively,
/// waiting for another holder. The store itself is replaced by rename on every write, so the
/// lock lives in its own file. Released when the returned file is dropped.
fn lock_store(path: &Path) -> Result<std::fs::File, Error> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let io = |action, source| Error::Io {
        action,
        path: lock_path.display().to_string(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let file = opts.open(&lock_path).map_err(|e| io("opening", e))?;
    file.lock().map_err(|e| io("locking", e))?;
    Ok(file)
}

/// The store body: `next_id u64 | count u32 | count × (id u64 | label_len u8 | label | curve u8
/// | usage u8 | flags u8 (1 = sensitive, 2 = extractable) | secret_len u16 | secret)`, then, only
/// when the store holds anchors, `anchor_count u32 | anchor_count × (label_len u8 | label |
/// value_len u16 | value)`. The usage is [`KeyUsage::code`]: 1 sign, 2 key transport,
/// 3 distribution, 4 MAC; the secret is the PKCS#8 DER of an EC key, or the 32 raw bytes of a
/// MAC key, whose curve byte is 0. Usages 3 and 4 and the anchor section came without a version
/// bump: a file without them is byte-for-byte what earlier builds wrote and read, and an earlier
/// build refuses a file with them ("unknown usage", "trailing bytes") rather than misread it.
fn encode(state: &State) -> Zeroizing<Vec<u8>> {
    encode_with(state, &state.anchors)
}

/// The store body of `state` with `anchors` in place of its own.
fn encode_with(state: &State, anchors: &Anchors) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::new());
    out.extend_from_slice(&state.next_id.to_be_bytes());
    out.extend_from_slice(
        &u32::try_from(state.keys.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for (id, e) in &state.keys {
        out.extend_from_slice(&id.to_be_bytes());
        let label = e.info.label.as_str().as_bytes();
        // Labels are at most 64 bytes and PKCS#8 EC keys well under 64 KiB.
        out.push(u8::try_from(label.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(label);
        out.push(e.info.curve.map_or(0, Curve::code));
        out.push(e.info.usage.code());
        out.push(u8::from(e.info.sensitive) | (u8::from(e.info.extractable) << 1));
        let secret = e.secret.stored();
        out.extend_from_slice(
            &u16::try_from(secret.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(secret);
    }
    if !anchors.is_empty() {
        out.extend_from_slice(
            &u32::try_from(anchors.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        for (label, value) in anchors {
            // Labels are at most 64 bytes (`KeyLabel`), values at most `ANCHOR_MAX`.
            out.push(u8::try_from(label.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(label.as_bytes());
            out.extend_from_slice(&u16::try_from(value.len()).unwrap_or(u16::MAX).to_be_bytes());
            out.extend_from_slice(value);
        }
    }
    out
}

/// A stored key as the store body holds it, not yet loaded.
type Record = (KeyInfo, Secret);

/// A store body: the next key id, the keys by id (not loaded) and the anchors.
type Body = (u64, BTreeMap<u64, Record>, Anchors);

/// Loads one stored key (parses its PKCS#8, or takes a MAC key's bytes).
fn load(info: KeyInfo, stored: Secret) -> Result<Entry, &'static str> {
    Entry::load(info, stored).map_err(|_| "a stored key does not load")
}

/// Parses the store body into its keys by id, without loading them (see [`load`]), and its
/// anchors.
fn decode(body: &[u8]) -> Result<Body, &'static str> {
    struct R<'a>(&'a [u8]);
    impl<'a> R<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
            if self.0.len() < n {
                return Err("store body is truncated");
            }
            let (h, t) = self.0.split_at(n);
            self.0 = t;
            Ok(h)
        }
        fn u8(&mut self) -> Result<u8, &'static str> {
            Ok(self.take(1)?[0])
        }
    }
    let mut r = R(body);
    let mut be = [0u8; 8];
    be.copy_from_slice(r.take(8)?);
    let next_id = u64::from_be_bytes(be);
    let c = r.take(4)?;
    let count = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
    let mut keys = BTreeMap::new();
    for _ in 0..count {
        be.copy_from_slice(r.take(8)?);
        let id = u64::from_be_bytes(be);
        if id >= next_id {
            return Err("key id out of range");
        }
        let n = usize::from(r.u8()?);
        let label = std::str::from_utf8(r.take(n)?).map_err(|_| "label is not UTF-8")?;
        let label = KeyLabel::new(label).map_err(|_| "bad label")?;
        let curve_code = r.u8()?;
        let usage = KeyUsage::from_code(r.u8()?).ok_or("unknown usage")?;
        let curve = match (usage, curve_code) {
            (KeyUsage::Mac, 0) => None,
            (KeyUsage::Mac, _) => return Err("a MAC key has no curve"),
            (_, code) => Some(Curve::from_code(code).ok_or("unknown curve")?),
        };
        let flags = r.u8()?;
        if flags > 3 {
            return Err("unknown key flags");
        }
        let l = r.take(2)?;
        let len = usize::from(u16::from_be_bytes([l[0], l[1]]));
        let raw = r.take(len)?.to_vec();
        let stored = match usage {
            KeyUsage::Mac => Secret::Mac(SecretBytes::new(raw)),
            _ => Secret::Pkcs8(SecretKeyDer::new(raw)),
        };
        let info = KeyInfo {
            label,
            curve,
            usage,
            sensitive: flags & 1 != 0,
            extractable: flags & 2 != 0,
        };
        if keys.insert(id, (info, stored)).is_some() {
            return Err("duplicate key id");
        }
    }
    let mut anchors = Anchors::new();
    if !r.0.is_empty() {
        let c = r.take(4)?;
        let count = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        for _ in 0..count {
            let n = usize::from(r.u8()?);
            let label = std::str::from_utf8(r.take(n)?).map_err(|_| "label is not UTF-8")?;
            let label = KeyLabel::new(label).map_err(|_| "bad anchor label")?;
            let l = r.take(2)?;
            let len = usize::from(u16::from_be_bytes([l[0], l[1]]));
            let value = r.take(len)?.to_vec();
            check_anchor(&value).map_err(|_| "anchor over its limit")?;
            if anchors.insert(label.as_str().to_owned(), value).is_some() {
                return Err("duplicate anchor label");
            }
        }
    }
    if !r.0.is_empty() {
        return Err("trailing bytes in the store body");
    }
    Ok((next_id, keys, anchors))
}
