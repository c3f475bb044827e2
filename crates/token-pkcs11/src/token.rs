//! The PKCS#11 token: opening and login, key generation, signing, import by unwrap inside the
//! token, handing a distribution key out by wrap inside the token, HMAC-SHA256 keys
//! (CKM_GENERIC_SECRET_KEY_GEN, CKM_SHA256_HMAC), anchors as CKO_DATA objects, and the mapping
//! of cryptoki errors (function + CKR) into the boundary's error.

use std::collections::HashMap;
use std::fmt;
use std::os::raw::c_ulong;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError, RwLock};

use aws_lc_rs::signature::UnparsedPublicKey;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, Rv, RvError};
use cryptoki::mechanism::ekdf::AesCbcDeriveParams;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{
    Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use trustfab_token::{
    check_anchor, check_unwrap_in, check_wrap_out, wrapped_header, Curve, Error, KeyHandle,
    KeyInfo, KeyLabel, KeySpec, KeyUsage, MacKeySpec, MacTag, PublicKey, Signature, Token,
    WrappedKey, MAC_LEN,
};
use trustfab_types::Passphrase;
use zeroize::Zeroizing;

use crate::pool::{Pool, Pooled};

/// CKA_APPLICATION of every anchor object: it tells trustfab's CKO_DATA objects from others.
const ANCHOR_APPLICATION: &[u8] = b"trustfab anchor";
/// Times a token object's creation is tried again after CKR_GENERAL_ERROR.
const CREATE_ATTEMPTS: u32 = 8;

/// The environment variable naming the PKCS#11 module to load.
pub const MODULE_ENV: &str = "TRUSTFAB_PKCS11_MODULE";

/// The PKCS#11 module: `TRUSTFAB_PKCS11_MODULE` if set, else the first SoftHSM2 module found in
/// the places distributions install it.
///
/// # Errors
/// [`Error::Module`] when the variable is unset and no SoftHSM2 module is installed.
pub fn module_path() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os(MODULE_ENV) {
        return Ok(PathBuf::from(p));
    }
    let multiarch = format!(
        "/usr/lib/{}-linux-gnu/softhsm/libsofthsm2.so",
        std::env::consts::ARCH
    );
    let candidates = [
        "/usr/lib/softhsm/libsofthsm2.so",
        multiarch.as_str(),
        "/usr/lib64/pkcs11/libsofthsm2.so",
        "/usr/lib/pkcs11/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
        "/opt/homebrew/lib/softhsm/libsofthsm2.so",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Module(format!(
                "no PKCS#11 module: set {MODULE_ENV} or install SoftHSM2 (Debian: softhsm2)"
            ))
        })
}

/// How to reach a token.
pub struct Pkcs11Config {
    /// The PKCS#11 module (shared library).
    pub module: PathBuf,
    /// The token label (CKA_LABEL of the token, as `softhsm2-util --init-token --label` sets it).
    pub token_label: String,
    /// The user PIN.
    pub pin: Passphrase,
    /// The most sessions open at once (parallel operations); at least 1.
    pub sessions: usize,
}

impl fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("pin", &"[secret elided]")
            .field("sessions", &self.sessions)
            .finish()
    }
}

/// The CKR code of a cryptoki error value.
// CK_ULONG is 32 bits on some platforms: the conversions are not useless there.
#[allow(clippy::useless_conversion)]
fn ckr_code(rv: RvError) -> u64 {
    match rv {
        RvError::VendorDefined(c) | RvError::UnknownErrorCode(c) => u64::from(c),
        _ => (0..0x200)
            .chain([0x8000_0000])
            .find(|c: &c_ulong| matches!(Rv::from(*c), Rv::Error(e) if e == rv))
            .map_or(u64::MAX, u64::from),
    }
}

fn p11(e: CkError) -> Error {
    match e {
        CkError::Pkcs11(rv, function) => Error::Pkcs11 {
            function: format!("C_{function:?}"),
            rv: ckr_code(rv),
            rv_name: format!("{rv:?}"),
        },
        other => Error::Module(other.to_string()),
    }
}

/// The signing mechanism the token offers.
#[derive(Clone, Copy, Debug)]
enum SignMode {
    /// CKM_ECDSA over a digest computed here.
    Prehashed,
    /// CKM_ECDSA_SHA256 / CKM_ECDSA_SHA384 over the message.
    TokenHashes,
}

/// What the token knows about a key object, read once.
#[derive(Clone)]
struct Known {
    object: ObjectHandle,
    info: KeyInfo,
    /// The public key of an EC key; a MAC key has none.
    public: Option<PublicKey>,
}

impl Known {
    /// The public key, which a key of every usage but MAC has.
    fn public(&self) -> Result<&PublicKey, Error> {
        self.public.as_ref().ok_or(Error::NotPermitted {
            operation: "public key (a MAC key has none)",
        })
    }

    /// The object, if this is a MAC key.
    fn mac_object(&self) -> Result<ObjectHandle, Error> {
        if self.info.usage != KeyUsage::Mac {
            return Err(Error::NotPermitted { operation: "mac" });
        }
        Ok(self.object)
    }
}

/// A key store inside a PKCS#11 token.
pub struct Pkcs11Token {
    ctx: Pkcs11,
    /// The module this token's context came from (see [`MODULES`]).
    module: PathBuf,
    slot: Slot,
    label: String,
    pool: Pool,
    mode: SignMode,
    /// Handles this instance issued. A handle not in here is refused: cryptoki object handles
    /// cannot be forged from numbers without `unsafe`, and need not be.
    known: RwLock<HashMap<u64, Known>>,
}

impl fmt::Debug for Pkcs11Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Token")
            .field("token", &self.label)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Drop for Pkcs11Token {
    fn drop(&mut self) {
        self.pool.close_all();
        release(&self.module);
    }
}

/// A PKCS#11 module loaded and initialized in this process. `C_Initialize` is per process
/// (PKCS#11 v2.40 §5.4): a second one fails with `CKR_CRYPTOKI_ALREADY_INITIALIZED`, and
/// `C_Finalize` ends every handle's use of the module. So every [`Pkcs11Token`] of one module
/// shares one initialized context, and the last one to close finalizes it.
struct Module {
    path: PathBuf,
    ctx: Pkcs11,
    users: usize,
    /// Login is per process too (`CKR_USER_ALREADY_LOGGED_IN` does not check the PIN): the
    /// SHA-256 of the PIN each token label was logged in with, so that a second handle opened
    /// with another PIN is refused as the first would have been.
    logins: Vec<(String, [u8; 32])>,
}

static MODULES: Mutex<Vec<Module>> = Mutex::new(Vec::new());

/// Serializes this process's making of token objects (anchor writes, key generation,
/// unwrapping), across every handle of every token: two threads (or two handles of one token)
/// never make the same generation of one anchor, and SoftHSM2 never sees two token objects
/// created at once from two sessions (it answers CKR_GENERAL_ERROR to that now and then).
/// Anchor writes are one per ledger batch, so one lock for all of them costs nothing worth a
/// finer one.
static TOKEN_OBJECTS: Mutex<()> = Mutex::new(());

/// Makes a token object with `make`, again after CKR_GENERAL_ERROR (which SoftHSM2 also answers
/// now and then while other sessions use the token; the object is then not made).
fn creating<T>(mut make: impl FnMut() -> Result<T, CkError>) -> Result<T, Error> {
    let mut attempt = 0u32;
    loop {
        match make() {
            Err(CkError::Pkcs11(RvError::GeneralError, _)) if attempt < CREATE_ATTEMPTS => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(u64::from(attempt)));
            }
            other => return other.map_err(p11),
        }
    }
}

fn modules() -> std::sync::MutexGuard<'static, Vec<Module>> {
    MODULES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The initialized context of `path`, loading and initializing the module on first use.
fn acquire(path: &std::path::Path) -> Result<Pkcs11, Error> {
    let mut all = modules();
    if let Some(m) = all.iter_mut().find(|m| m.path == path) {
        m.users += 1;
        return Ok(m.ctx.clone());
    }
    let ctx =
        Pkcs11::new(path).map_err(|e| Error::Module(format!("loading {}: {e}", path.display())))?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(p11)?;
    all.push(Module {
        path: path.to_owned(),
        ctx: ctx.clone(),
        users: 1,
        logins: Vec::new(),
    });
    Ok(ctx)
}

/// One user of `path` is done; the last finalizes the module (so that it can be initialized
/// again, for a reopen).
fn release(path: &std::path::Path) {
    let mut all = modules();
    let Some(i) = all.iter().position(|m| m.path == path) else {
        return;
    };
    all[i].users = all[i].users.saturating_sub(1);
    if all[i].users == 0 {
        let m = all.swap_remove(i);
        // An error here has no one left to report to.
        let _ = m.ctx.finalize();
    }
}

/// Records the PIN `label` was logged in with, or checks a second login's PIN against it.
fn check_login(
    module: &std::path::Path,
    label: &str,
    pin: &[u8],
    fresh: bool,
) -> Result<(), Error> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, pin);
    let mut all = modules();
    // Every open token holds its module (acquire before login): a module missing here is a
    // bug, refused rather than passed without a PIN check.
    let Some(m) = all.iter_mut().find(|m| m.path == module) else {
        return Err(Error::Module(format!(
            "{} is not initialized in this process",
            module.display()
        )));
    };
    match m.logins.iter().find(|(l, _)| l == label) {
        Some((_, known)) if !fresh => {
            aws_lc_rs::constant_time::verify_slices_are_equal(known, digest.as_ref())
                .map_err(|_| Error::WrongCredential)
        }
        _ => {
            m.logins.retain(|(l, _)| l != label);
            let mut d = [0u8; 32];
            d.copy_from_slice(digest.as_ref());
            m.logins.push((label.to_owned(), d));
            Ok(())
        }
    }
}

impl Pkcs11Token {
    /// Loads the module, finds the token by label and logs in as the user.
    ///
    /// # Errors
    /// [`Error::Module`] when the module does not load, [`Error::NoToken`],
    /// [`Error::WrongCredential`] for a wrong PIN, or [`Error::Pkcs11`].
    ///
    /// Several tokens of one module may be open in one process at once (they share the
    /// module's initialized context); opening the same token again checks the PIN against the
    /// one it was logged in with.
    pub fn open(config: &Pkcs11Config) -> Result<Self, Error> {
        let ctx = acquire(&config.module)?;
        Self::open_initialized(ctx, config).inspect_err(|_| release(&config.module))
    }

    fn open_initialized(ctx: Pkcs11, config: &Pkcs11Config) -> Result<Self, Error> {
        let mut slot = None;
        for s in ctx.get_slots_with_token().map_err(p11)? {
            if ctx.get_token_info(s).map_err(p11)?.label() == config.token_label {
                slot = Some(s);
                break;
            }
        }
        let slot = slot.ok_or_else(|| Error::NoToken(config.token_label.clone()))?;
        let mechs = ctx.get_mechanism_list(slot).map_err(p11)?;
        let mode = if mechs.contains(&MechanismType::ECDSA) {
            SignMode::Prehashed
        } else {
            SignMode::TokenHashes
        };
        let session = ctx.open_rw_session(slot).map_err(p11)?;
        let pin =
            std::str::from_utf8(config.pin.expose_secret()).map_err(|_| Error::WrongCredential)?;
        let pin = AuthPin::new(Zeroizing::new(pin.to_owned()).as_str().into());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) => check_login(
                &config.module,
                &config.token_label,
                config.pin.expose_secret(),
                true,
            )?,
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => check_login(
                &config.module,
                &config.token_label,
                config.pin.expose_secret(),
                false,
            )?,
            Err(CkError::Pkcs11(
                RvError::PinIncorrect | RvError::PinLenRange | RvError::PinInvalid,
                _,
            )) => return Err(Error::WrongCredential),
            Err(e) => return Err(p11(e)),
        }
        Ok(Self {
            ctx,
            module: config.module.clone(),
            slot,
            label: config.token_label.clone(),
            pool: Pool::new(session, config.sessions),
            mode,
            known: RwLock::new(HashMap::new()),
        })
    }

    fn session(&self) -> Result<Pooled<'_>, Error> {
        self.pool
            .get(|| self.ctx.open_rw_session(self.slot).map_err(p11))
    }

    fn known(&self, key: KeyHandle) -> Result<Known, Error> {
        self.known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key.backend_id())
            .cloned()
            .ok_or(Error::UnknownKey)
    }

    /// Reads a private key object's attributes and its public key, and remembers the handle.
    fn learn(&self, s: &Session, object: ObjectHandle) -> Result<KeyHandle, Error> {
        let attrs = s
            .get_attributes(
                object,
                &[
                    AttributeType::Class,
                    AttributeType::KeyType,
                    AttributeType::EcParams,
                    AttributeType::Label,
                    AttributeType::Id,
                    AttributeType::Sign,
                    AttributeType::Derive,
                    AttributeType::Decrypt,
                    AttributeType::Unwrap,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                ],
            )
            .map_err(p11)?;
        let (mut class, mut kt, mut curve, mut label, mut id) = (None, None, None, None, None);
        let (mut sign, mut derive, mut sensitive, mut extractable) = (false, false, false, true);
        // Unknown means possible: a key is a distribution key only if it provably does nothing.
        let (mut decrypt, mut unwrap) = (true, true);
        for a in attrs {
            match a {
                Attribute::Class(c) => class = Some(c),
                Attribute::KeyType(k) => kt = Some(k),
                Attribute::EcParams(p) => curve = Curve::from_ec_params_der(&p),
                Attribute::Label(l) => label = String::from_utf8(l).ok(),
                Attribute::Id(i) => id = Some(i),
                Attribute::Sign(b) => sign = b,
                Attribute::Derive(b) => derive = b,
                Attribute::Decrypt(b) => decrypt = b,
                Attribute::Unwrap(b) => unwrap = b,
                Attribute::Sensitive(b) => sensitive = b,
                Attribute::Extractable(b) => extractable = b,
                _ => {}
            }
        }
        if class != Some(ObjectClass::PRIVATE_KEY) || kt != Some(KeyType::EC) {
            return Err(Error::UnknownKey);
        }
        let curve = curve.ok_or(Error::BadKey("key is not on P-256 or P-384"))?;
        let label = KeyLabel::new(&label.unwrap_or_default())?;
        let usage = match (sign, derive) {
            (true, false) => KeyUsage::Sign,
            (false, true) => KeyUsage::KeyTransport,
            // A distribution key: no usage at all, sensitive, P-256 (what `unwrap_key` and
            // `generate` make); any other key without a usage is not one of ours.
            (false, false) if !decrypt && !unwrap && sensitive && curve == Curve::P256 => {
                KeyUsage::Distribute
            }
            _ => {
                return Err(Error::BadKey(
                    "key is neither only CKA_SIGN, only CKA_DERIVE, nor a distribution key",
                ))
            }
        };
        let id = id.ok_or(Error::BadKey("key has no CKA_ID"))?;
        let public = Self::read_public(s, &id, curve)?;
        let info = KeyInfo {
            label,
            curve: Some(curve),
            usage,
            sensitive,
            extractable,
        };
        Ok(self.remember(Known {
            object,
            info,
            public: Some(public),
        }))
    }

    /// Reads a MAC key object's attributes and remembers the handle. Only a secret key that is
    /// generic (or HMAC-SHA256), sensitive, not extractable, with CKA_SIGN and CKA_VERIFY and
    /// no other usage is one.
    fn learn_mac(&self, s: &Session, object: ObjectHandle) -> Result<KeyHandle, Error> {
        let attrs = s
            .get_attributes(
                object,
                &[
                    AttributeType::Class,
                    AttributeType::KeyType,
                    AttributeType::Label,
                    AttributeType::ValueLen,
                    AttributeType::Sign,
                    AttributeType::Verify,
                    AttributeType::Encrypt,
                    AttributeType::Decrypt,
                    AttributeType::Wrap,
                    AttributeType::Unwrap,
                    AttributeType::Derive,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                ],
            )
            .map_err(p11)?;
        let (mut class, mut kt, mut label, mut len) = (None, None, None, None);
        let (mut sign, mut verify, mut sensitive, mut extractable) = (false, false, false, true);
        // Unknown means possible.
        let mut other_usage = false;
        for a in attrs {
            match a {
                Attribute::Class(c) => class = Some(c),
                Attribute::KeyType(k) => kt = Some(k),
                Attribute::Label(l) => label = String::from_utf8(l).ok(),
                Attribute::ValueLen(n) => len = Some(n),
                Attribute::Sign(b) => sign = b,
                Attribute::Verify(b) => verify = b,
                Attribute::Encrypt(b)
                | Attribute::Decrypt(b)
                | Attribute::Wrap(b)
                | Attribute::Unwrap(b)
                | Attribute::Derive(b) => other_usage |= b,
                Attribute::Sensitive(b) => sensitive = b,
                Attribute::Extractable(b) => extractable = b,
                _ => {}
            }
        }
        if class != Some(ObjectClass::SECRET_KEY)
            || !matches!(kt, Some(KeyType::GENERIC_SECRET | KeyType::SHA256_HMAC))
        {
            return Err(Error::UnknownKey);
        }
        let len_ok = len.is_some_and(|n| u64::from(n) == MAC_LEN as u64);
        if !(sign && verify && !other_usage && sensitive && !extractable && len_ok) {
            return Err(Error::BadKey(
                "secret key is not a 32-byte, sensitive, non-extractable sign/verify-only MAC key",
            ));
        }
        let info = KeyInfo {
            label: KeyLabel::new(&label.unwrap_or_default())?,
            curve: None,
            usage: KeyUsage::Mac,
            sensitive,
            extractable,
        };
        Ok(self.remember(Known {
            object,
            info,
            public: None,
        }))
    }

    fn remember(&self, known: Known) -> KeyHandle {
        #[allow(clippy::useless_conversion)] // CK_OBJECT_HANDLE is 32 bits on some platforms
        let handle = KeyHandle::from_backend(u64::from(known.object.handle()));
        self.known
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(handle.backend_id(), known);
        handle
    }

    /// The public key object with CKA_ID `id`; CKA_EC_POINT is a DER OCTET STRING around the
    /// SEC1 point (PKCS#11 2.40), though some tokens give the bare point.
    fn read_public(s: &Session, id: &[u8], curve: Curve) -> Result<PublicKey, Error> {
        let objs = s
            .find_objects(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::Id(id.to_vec()),
            ])
            .map_err(p11)?;
        let obj = *objs
            .first()
            .ok_or(Error::BadKey("key has no public key object"))?;
        Self::ec_point(s, obj, curve)
    }

    /// CKA_EC_POINT of the public key object `obj`, unwrapped from its DER OCTET STRING.
    fn ec_point(s: &Session, obj: ObjectHandle, curve: Curve) -> Result<PublicKey, Error> {
        let point = s
            .get_attributes(obj, &[AttributeType::EcPoint])
            .map_err(p11)?
            .into_iter()
            .find_map(|a| match a {
                Attribute::EcPoint(p) => Some(p),
                _ => None,
            })
            .ok_or(Error::BadKey("public key has no CKA_EC_POINT"))?;
        let n = curve.point_len();
        let raw = match point.as_slice() {
            [0x04, len, rest @ ..] if usize::from(*len) == n && rest.len() == n => rest,
            [0x04, 0x81, len, rest @ ..] if usize::from(*len) == n && rest.len() == n => rest,
            p if p.len() == n => p,
            _ => return Err(Error::BadKey("CKA_EC_POINT is not a point of the curve")),
        };
        Ok(PublicKey::from_point(curve, raw)?)
    }

    /// The key object labelled `label`: a private key, else a secret (MAC) key, with its class.
    fn find_object(
        s: &Session,
        label: &KeyLabel,
    ) -> Result<Option<(ObjectHandle, ObjectClass)>, Error> {
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::SECRET_KEY] {
            let objs = s
                .find_objects(&[
                    Attribute::Class(class),
                    Attribute::Label(label.as_str().as_bytes().to_vec()),
                ])
                .map_err(p11)?;
            if let Some(o) = objs.first() {
                return Ok(Some((*o, class)));
            }
        }
        Ok(None)
    }

    /// The anchor objects labelled `label`, each with its generation and value, newest first.
    /// Usually one; two after a write that stopped between making the new object and destroying
    /// the old one.
    fn anchor_objects(s: &Session, label: &KeyLabel) -> Result<Vec<AnchorObject>, Error> {
        let objects = s
            .find_objects(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Application(ANCHOR_APPLICATION.to_vec()),
                Attribute::Label(label.as_str().as_bytes().to_vec()),
            ])
            .map_err(p11)?;
        let mut found = Vec::with_capacity(objects.len());
        for object in objects {
            let stored = s
                .get_attributes(object, &[AttributeType::Value])
                .map_err(p11)?
                .into_iter()
                .find_map(|a| match a {
                    Attribute::Value(v) => Some(v),
                    _ => None,
                })
                .unwrap_or_default();
            let (generation, value) = stored
                .split_first_chunk::<8>()
                .ok_or(Error::BadObject("anchor object without its generation"))?;
            check_anchor(value)?;
            found.push(AnchorObject {
                object,
                generation: u64::from_be_bytes(*generation),
                value: value.to_vec(),
            });
        }
        // Newest generation first. Two objects of one generation are two processes that wrote at
        // once: the greater value in byte order is taken (for a value that encodes a counter
        // big-endian after a fixed prefix, as the HSM's ledger anchor does, the more advanced
        // one), and the next write removes both.
        found.sort_by(|a, b| {
            b.generation
                .cmp(&a.generation)
                .then_with(|| b.value.cmp(&a.value))
        });
        Ok(found)
    }

    fn label_free(s: &Session, label: &KeyLabel) -> Result<(), Error> {
        if Self::find_object(s, label)?.is_some() {
            return Err(Error::LabelExists {
                label: label.as_str().to_owned(),
            });
        }
        Ok(())
    }

    fn raw_sign(
        &self,
        s: &Session,
        object: ObjectHandle,
        curve: Curve,
        msg: &[u8],
    ) -> Result<Signature, Error> {
        let raw = match (self.mode, curve) {
            (SignMode::Prehashed, _) => {
                s.sign(&Mechanism::Ecdsa, object, curve.digest(msg).as_ref())
            }
            (SignMode::TokenHashes, Curve::P256) => s.sign(&Mechanism::EcdsaSha256, object, msg),
            (SignMode::TokenHashes, Curve::P384) => s.sign(&Mechanism::EcdsaSha384, object, msg),
        }
        .map_err(|e| match e {
            CkError::Pkcs11(RvError::KeyFunctionNotPermitted, _) => {
                Error::NotPermitted { operation: "sign" }
            }
            CkError::Pkcs11(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid, _) => {
                Error::UnknownKey
            }
            e => p11(e),
        })?;
        Signature::from_p1363(curve, &raw)
    }

    /// Asks the token for CKA_VALUE of `key` (its length only): `Ok(len)` if the token would
    /// reveal the private value, otherwise the token's refusal, `CKR_ATTRIBUTE_SENSITIVE` for a
    /// sensitive or non-extractable key. Nothing ever returns the value itself.
    ///
    /// # Errors
    /// The refusal as [`Error::Pkcs11`], or [`Error::UnknownKey`].
    pub fn private_value_len(&self, key: KeyHandle) -> Result<usize, Error> {
        let k = self.known(key)?;
        let s = self.session()?;
        let info = s
            .get_attribute_info(k.object, &[AttributeType::Value])
            .map_err(p11)?;
        match info.first() {
            Some(AttributeInfo::Available(n)) => Ok(*n),
            Some(AttributeInfo::Sensitive) => Err(Error::Pkcs11 {
                function: "C_GetAttributeValue".into(),
                rv: ckr_code(RvError::AttributeSensitive),
                rv_name: format!("{:?}", RvError::AttributeSensitive),
            }),
            _ => Err(Error::Sensitive),
        }
    }

    /// Asks the token to wrap `key` out under a fresh session AES key (C_WrapKey with
    /// CKM_AES_KEY_WRAP_PAD): `Ok(len)` if the token would let the key leave, wrapped, otherwise
    /// its refusal, `CKR_KEY_UNEXTRACTABLE` for a non-extractable key. The wrapping key is
    /// sensitive and destroyed at once, so even a success reveals nothing but a length.
    ///
    /// # Errors
    /// The refusal as [`Error::Pkcs11`], or [`Error::UnknownKey`].
    pub fn wrap_out_len(&self, key: KeyHandle) -> Result<usize, Error> {
        let k = self.known(key)?;
        let s = self.session()?;
        let wrapping = s
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::ValueLen(32.into()),
                    Attribute::Token(false),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Wrap(true),
                ],
            )
            .map_err(p11)?;
        let r = s
            .wrap_key(&Mechanism::AesKeyWrapPad, wrapping, k.object)
            .map(|v| v.len())
            .map_err(p11);
        let _ = s.destroy_object(wrapping);
        r
    }

    /// The number of objects a session of this token sees, token objects and this process's
    /// session objects alike: a check that an operation left no session objects behind.
    ///
    /// # Errors
    /// [`Error::Pkcs11`].
    pub fn object_count(&self) -> Result<usize, Error> {
        Ok(self.session()?.find_objects(&[]).map_err(p11)?.len())
    }

    /// Imports inside the token; the session objects made on the way are destroyed on every path.
    ///
    /// The unwrapped key must be the key the blob declares, which the token shows by signing a
    /// fresh challenge. A signing key signs itself (and is destroyed again if it fails); a
    /// distribution key may not sign, so a session copy that may (unwrapped from the same
    /// ciphertext under the same KEK: the same key) signs once and is destroyed, before the
    /// distribution key itself is made.
    fn unwrap_in(
        &self,
        s: &Session,
        kt: &Known,
        wrapped: &WrappedKey,
        spec: &KeySpec,
    ) -> Result<ObjectHandle, Error> {
        let mut scratch = Scratch::new(s);
        let context = wrapped.kdf_context(kt.public()?.point());
        let kek = derive_kek(
            s,
            kt.object,
            wrapped.ephemeral_point(),
            &context,
            Attribute::Unwrap(true),
            |_| Error::Unwrap,
        )?;
        let kek = scratch.keep(kek);
        let unwrap = |template: &[Attribute]| {
            s.unwrap_key(
                &Mechanism::AesKeyWrapPad,
                kek,
                wrapped.ciphertext(),
                template,
            )
            .map_err(|_| Error::Unwrap)
        };
        let proved = match spec.usage {
            KeyUsage::Sign => false,
            _ => {
                let copy = unwrap(&[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::KeyType(KeyType::EC),
                    Attribute::Token(false),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Sign(true),
                    Attribute::Derive(false),
                    Attribute::Decrypt(false),
                    Attribute::Unwrap(false),
                    Attribute::SignRecover(false),
                ])?;
                let copy = scratch.keep(copy);
                self.prove(s, copy, spec.curve, wrapped.public_key())?;
                true
            }
        };
        let mut id = vec![0u8; 16];
        s.generate_random_slice(&mut id).map_err(p11)?;
        let key = unwrap(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::EC),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(spec.sensitive),
            Attribute::Extractable(spec.extractable),
            // Every usage attribute said explicitly: SoftHSM2 defaults CKA_SIGN, CKA_DECRYPT and
            // CKA_UNWRAP to true when the template is silent.
            Attribute::Sign(spec.usage == KeyUsage::Sign),
            Attribute::Derive(false),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::SignRecover(false),
            Attribute::Label(spec.label.as_str().as_bytes().to_vec()),
            Attribute::Id(id.clone()),
        ])?;
        drop(scratch);
        let public = wrapped.public_key();
        let check = (|| {
            if !proved {
                self.prove(s, key, spec.curve, public)?;
            }
            s.create_object(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Verify(spec.usage == KeyUsage::Sign),
                Attribute::Encrypt(false),
                Attribute::Wrap(false),
                Attribute::Derive(false),
                Attribute::EcParams(spec.curve.ec_params_der().to_vec()),
                Attribute::EcPoint(octet_string(public.point())),
                Attribute::Label(spec.label.as_str().as_bytes().to_vec()),
                Attribute::Id(id.clone()),
            ])
            .map_err(p11)
        })();
        if let Err(e) = check {
            let _ = s.destroy_object(key);
            return Err(e);
        }
        Ok(key)
    }

    /// Shows that `key` is the private half of `public`: it signs a fresh challenge, verified
    /// here. Any failure is [`Error::Unwrap`], without detail.
    fn prove(
        &self,
        s: &Session,
        key: ObjectHandle,
        curve: Curve,
        public: &PublicKey,
    ) -> Result<(), Error> {
        let mut challenge = [0u8; 32];
        s.generate_random_slice(&mut challenge).map_err(p11)?;
        let sig = self
            .raw_sign(s, key, curve, &challenge)
            .map_err(|_| Error::Unwrap)?;
        UnparsedPublicKey::new(curve.verify_alg(), public.point())
            .verify(&challenge, sig.der())
            .map_err(|_| Error::Unwrap)
    }

    /// Wraps the distribution key `k` for `recipient` inside the token: a session ephemeral
    /// P-256 key pair, Z = ECDH(ephemeral, recipient), KEK = AES-CBC(Z, 0, context), then
    /// C_WrapKey(CKM_AES_KEY_WRAP_PAD, KEK, key). The session objects are destroyed on every path.
    fn wrap_out(
        &self,
        s: &Session,
        k: &Known,
        recipient: &PublicKey,
        info: &[u8],
    ) -> Result<WrappedKey, Error> {
        let mut scratch = Scratch::new(s);
        let (eph_public, eph_private) = s
            .generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &[
                    Attribute::Token(false),
                    Attribute::Private(false),
                    Attribute::Verify(false),
                    Attribute::Encrypt(false),
                    Attribute::Wrap(false),
                    Attribute::Derive(false),
                    Attribute::EcParams(Curve::P256.ec_params_der().to_vec()),
                ],
                &[
                    Attribute::Token(false),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Derive(true),
                    Attribute::Sign(false),
                    Attribute::Decrypt(false),
                    Attribute::Unwrap(false),
                    Attribute::SignRecover(false),
                ],
            )
            .map_err(p11)?;
        scratch.keep(eph_public);
        let eph_private = scratch.keep(eph_private);
        let ephemeral = Self::ec_point(s, eph_public, Curve::P256)?;
        let header = wrapped_header(ephemeral.point(), k.public()?.clone(), info)?;
        let context = header.kdf_context(recipient.point());
        let kek = derive_kek(
            s,
            eph_private,
            recipient.point(),
            &context,
            Attribute::Wrap(true),
            p11,
        )?;
        let kek = scratch.keep(kek);
        let ciphertext = s
            .wrap_key(&Mechanism::AesKeyWrapPad, kek, k.object)
            .map_err(|e| match e {
                CkError::Pkcs11(
                    RvError::KeyUnextractable
                    | RvError::KeyNotWrappable
                    | RvError::KeyFunctionNotPermitted,
                    _,
                ) => Error::NotPermitted { operation: "wrap" },
                CkError::Pkcs11(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid, _) => {
                    Error::UnknownKey
                }
                e => p11(e),
            })?;
        drop(scratch);
        header.with_ciphertext(ciphertext)
    }
}

/// Session objects made for one operation (an ephemeral key, Z, a KEK, a check copy), destroyed
/// when it ends, on every path, newest first. A destroy that fails has no one to report to; the
/// objects are session objects, so closing the session ends them anyway.
struct Scratch<'s> {
    s: &'s Session,
    objects: Vec<ObjectHandle>,
}

impl<'s> Scratch<'s> {
    fn new(s: &'s Session) -> Self {
        Self {
            s,
            objects: Vec::new(),
        }
    }

    fn keep(&mut self, object: ObjectHandle) -> ObjectHandle {
        self.objects.push(object);
        object
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        while let Some(o) = self.objects.pop() {
            let _ = self.s.destroy_object(o);
        }
    }
}

/// The template of a derived session secret: a 32-byte AES key, not on the token, sensitive, not
/// extractable, with the one usage `usage`.
fn session_secret(usage: Attribute) -> [Attribute; 7] {
    [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(false),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        usage,
    ]
}

/// The KDF of the wrap construction inside the token: Z = ECDH(`base`, `peer_point`) with
/// CKM_ECDH1_DERIVE and CKD_NULL, then KEK = CKM_AES_CBC_ENCRYPT_DATA(Z, iv 0, `context`) with the
/// one usage `usage` (CKA_UNWRAP or CKA_WRAP). Z is destroyed at once; the caller destroys the
/// KEK. `ecdh_error` maps a failed ECDH (an unwrap says nothing more than [`Error::Unwrap`]).
fn derive_kek(
    s: &Session,
    base: ObjectHandle,
    peer_point: &[u8],
    context: &[u8; 32],
    usage: Attribute,
    ecdh_error: impl FnOnce(CkError) -> Error,
) -> Result<ObjectHandle, Error> {
    let z = s
        .derive_key(
            &Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), peer_point)),
            base,
            &session_secret(Attribute::Derive(true)),
        )
        .map_err(ecdh_error)?;
    let kek = s.derive_key(
        &Mechanism::AesCbcEncryptData(AesCbcDeriveParams::new([0; 16], context)),
        z,
        &session_secret(usage),
    );
    let _ = s.destroy_object(z);
    kek.map_err(p11)
}

/// One anchor object as read from the token.
struct AnchorObject {
    object: ObjectHandle,
    generation: u64,
    value: Vec<u8>,
}

/// The boundary's error for a failed C_Sign / C_Verify with a MAC key.
fn mac_error(e: CkError) -> Error {
    match e {
        CkError::Pkcs11(RvError::KeyFunctionNotPermitted | RvError::KeyTypeInconsistent, _) => {
            Error::NotPermitted { operation: "mac" }
        }
        CkError::Pkcs11(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid, _) => {
            Error::UnknownKey
        }
        e => p11(e),
    }
}

/// DER OCTET STRING around a short value (an EC point, under 128 bytes).
fn octet_string(v: &[u8]) -> Vec<u8> {
    let mut out = vec![0x04, u8::try_from(v.len()).unwrap_or(0x7f)];
    out.extend_from_slice(v);
    out
}

impl Token for Pkcs11Token {
    fn sessions(&self) -> Option<trustfab_token::Sessions> {
        let (open, in_use, max) = self.pool.usage();
        Some(trustfab_token::Sessions { open, in_use, max })
    }

    fn generate(&self, spec: &KeySpec) -> Result<KeyHandle, Error> {
        spec.check()?;
        let _objects = TOKEN_OBJECTS.lock().unwrap_or_else(PoisonError::into_inner);
        let s = self.session()?;
        Self::label_free(&s, &spec.label)?;
        let mut id = vec![0u8; 16];
        s.generate_random_slice(&mut id).map_err(p11)?;
        let label = spec.label.as_str().as_bytes().to_vec();
        let sign = spec.usage == KeyUsage::Sign;
        let public = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(sign),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::Derive(false),
            Attribute::EcParams(spec.curve.ec_params_der().to_vec()),
            Attribute::Label(label.clone()),
            Attribute::Id(id.clone()),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(spec.sensitive),
            Attribute::Extractable(spec.extractable),
            Attribute::Sign(sign),
            Attribute::Derive(spec.usage == KeyUsage::KeyTransport),
            // Tokens default these to true (SoftHSM2 does): one usage per key, said explicitly.
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::SignRecover(false),
            Attribute::Label(label),
            Attribute::Id(id),
        ];
        let (_, object) =
            creating(|| s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private))?;
        self.learn(&s, object)
    }

    fn generate_mac(&self, spec: &MacKeySpec) -> Result<KeyHandle, Error> {
        let _objects = TOKEN_OBJECTS.lock().unwrap_or_else(PoisonError::into_inner);
        let s = self.session()?;
        Self::label_free(&s, &spec.label)?;
        let mut id = vec![0u8; 16];
        s.generate_random_slice(&mut id).map_err(p11)?;
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::ValueLen(32.into()), // MAC_LEN
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            // The one usage, and every other said false: tokens default some to true.
            Attribute::Sign(true),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Decrypt(false),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::Label(spec.label.as_str().as_bytes().to_vec()),
            Attribute::Id(id),
        ];
        let object = creating(|| s.generate_key(&Mechanism::GenericSecretKeyGen, &template))?;
        self.learn_mac(&s, object)
    }

    fn find(&self, label: &KeyLabel) -> Result<Option<KeyHandle>, Error> {
        let s = self.session()?;
        match Self::find_object(&s, label)? {
            Some((o, ObjectClass::SECRET_KEY)) => self.learn_mac(&s, o).map(Some),
            Some((o, _)) => self.learn(&s, o).map(Some),
            None => Ok(None),
        }
    }

    fn info(&self, key: KeyHandle) -> Result<KeyInfo, Error> {
        Ok(self.known(key)?.info)
    }

    fn public_key(&self, key: KeyHandle) -> Result<PublicKey, Error> {
        self.known(key)?.public().cloned()
    }

    fn sign(&self, key: KeyHandle, message: &[u8]) -> Result<Signature, Error> {
        let k = self.known(key)?;
        if k.info.usage != KeyUsage::Sign {
            return Err(Error::NotPermitted { operation: "sign" });
        }
        let curve = k
            .info
            .curve
            .ok_or(Error::NotPermitted { operation: "sign" })?;
        let s = self.session()?;
        self.raw_sign(&s, k.object, curve, message)
    }

    fn unwrap_key(
        &self,
        kt: KeyHandle,
        wrapped: &WrappedKey,
        spec: &KeySpec,
    ) -> Result<KeyHandle, Error> {
        check_unwrap_in(spec, wrapped)?;
        let _objects = TOKEN_OBJECTS.lock().unwrap_or_else(PoisonError::into_inner);
        let kt = self.known(kt)?;
        if kt.info.usage != KeyUsage::KeyTransport {
            return Err(Error::NotPermitted {
                operation: "unwrap",
            });
        }
        let s = self.session()?;
        Self::label_free(&s, &spec.label)?;
        let key = self.unwrap_in(&s, &kt, wrapped, spec)?;
        self.learn(&s, key)
    }

    fn wrap_key(
        &self,
        key: KeyHandle,
        recipient: &PublicKey,
        info: &[u8],
    ) -> Result<WrappedKey, Error> {
        let k = self.known(key)?;
        check_wrap_out(&k.info, recipient, info)?;
        let s = self.session()?;
        self.wrap_out(&s, &k, recipient, info)
    }

    fn mac(&self, key: KeyHandle, message: &[u8]) -> Result<MacTag, Error> {
        let object = self.known(key)?.mac_object()?;
        let tag = self
            .session()?
            .sign(&Mechanism::Sha256Hmac, object, message)
            .map_err(mac_error)?;
        let bytes = <[u8; MAC_LEN]>::try_from(tag.as_slice())
            .map_err(|_| Error::Crypto("token returned an HMAC-SHA256 tag of the wrong length"))?;
        Ok(MacTag::from_bytes(bytes))
    }

    fn verify_mac(&self, key: KeyHandle, message: &[u8], tag: &[u8]) -> Result<(), Error> {
        let object = self.known(key)?.mac_object()?;
        if tag.len() != MAC_LEN {
            return Err(Error::MacMismatch);
        }
        // C_Verify compares inside the token.
        self.session()?
            .verify(&Mechanism::Sha256Hmac, object, message, tag)
            .map_err(|e| match e {
                CkError::Pkcs11(RvError::SignatureInvalid | RvError::SignatureLenRange, _) => {
                    Error::MacMismatch
                }
                e => mac_error(e),
            })
    }

    fn read_anchor(&self, label: &KeyLabel) -> Result<Option<Vec<u8>>, Error> {
        let s = self.session()?;
        Ok(Self::anchor_objects(&s, label)?
            .into_iter()
            .next()
            .map(|a| a.value))
    }

    /// SoftHSM 2.6 refuses C_SetAttributeValue of a data object's CKA_VALUE
    /// (CKR_ATTRIBUTE_READ_ONLY), so a write never changes an object: it creates the next
    /// generation, a new object whose CKA_VALUE is `generation u64 | value`, and then destroys
    /// the older ones. The new value is what a reader sees from the moment C_CreateObject
    /// returns (the newest generation wins); a write that stops before the destroy leaves an
    /// older object that the next write removes.
    fn write_anchor(&self, label: &KeyLabel, value: &[u8]) -> Result<(), Error> {
        check_anchor(value)?;
        let _one_writer = TOKEN_OBJECTS.lock().unwrap_or_else(PoisonError::into_inner);
        let s = self.session()?;
        let older = Self::anchor_objects(&s, label)?;
        let generation = match older.first() {
            Some(newest) => newest
                .generation
                .checked_add(1)
                .ok_or(Error::BadObject("anchor generation exhausted"))?,
            None => 1,
        };
        let mut stored = Vec::with_capacity(8 + value.len());
        stored.extend_from_slice(&generation.to_be_bytes());
        stored.extend_from_slice(value);
        let template = [
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Modifiable(false),
            Attribute::Application(ANCHOR_APPLICATION.to_vec()),
            Attribute::Label(label.as_str().as_bytes().to_vec()),
            Attribute::Value(stored),
        ];
        creating(|| s.create_object(&template))?;
        // The new generation is written: an older one that fails to go is read past (the newest
        // generation wins) and removed by the next write.
        for old in older {
            let _ = s.destroy_object(old.object);
        }
        Ok(())
    }

    fn fill_random(&self, out: &mut [u8]) -> Result<(), Error> {
        self.session()?.generate_random_slice(out).map_err(p11)
    }
}
