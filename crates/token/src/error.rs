//! The one error type of the token boundary. Failures that would be an oracle (a wrapped key that
//! does not unwrap) carry no detail; PKCS#11 failures keep the function and the CKR code.

/// What went wrong at the token boundary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The handle names no key of this token (or a key of another kind).
    #[error("no such key on this token")]
    UnknownKey,
    /// A key with this label is already on the token.
    #[error("a key labelled {label:?} already exists")]
    LabelExists {
        /// The label asked for.
        label: String,
    },
    /// A label that the token cannot store.
    #[error("key label {label:?} is refused: {reason}")]
    BadLabel {
        /// The label asked for.
        label: String,
        /// Why.
        reason: &'static str,
    },
    /// The key's attributes do not permit the operation (a signing key used to unwrap, say).
    #[error("key does not permit {operation}")]
    NotPermitted {
        /// The operation refused.
        operation: &'static str,
    },
    /// The key spec asks for something this operation cannot give.
    #[error("key spec refused: {0}")]
    BadSpec(&'static str),
    /// The token refuses to reveal a private value (CKA_SENSITIVE or not CKA_EXTRACTABLE).
    #[error("the token refuses to reveal a sensitive or non-extractable key")]
    Sensitive,
    /// The wrapped key does not unwrap under this key-transport key. Deliberately without detail.
    #[error("wrapped key does not unwrap")]
    Unwrap,
    /// A wrapped-key blob that does not parse.
    #[error("wrapped key is malformed: {0}")]
    WrappedFormat(&'static str),
    /// A wrapped-key blob of an unknown format version.
    #[error("wrapped key format version {found} is not supported (supported: {supported})")]
    WrappedVersion {
        /// The version in the blob.
        found: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// An input larger than its limit.
    #[error("{what} is {len} bytes, the limit is {limit}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A public key or private key that is not a valid key of the expected curve.
    #[error("bad key: {0}")]
    BadKey(&'static str),
    /// The passphrase or PIN was refused.
    #[error("wrong passphrase or PIN")]
    WrongCredential,
    /// The token store does not open: its contents were changed (authentication tag mismatch).
    #[error("token store {path} was modified or is corrupt")]
    StoreTampered {
        /// The store file.
        path: String,
    },
    /// A token store of an unknown format version.
    #[error("token store {path} has format version {found}; this build reads version {supported}")]
    StoreVersion {
        /// The store file.
        path: String,
        /// The version in the file.
        found: u16,
        /// The version this build reads.
        supported: u16,
    },
    /// A token store that is not one (bad magic, truncated, bad parameters).
    #[error("token store {path} is not a trustfab token store: {reason}")]
    StoreFormat {
        /// The store file.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// File I/O of a token store failed.
    #[error("{action} token store {path}")]
    Io {
        /// What was being done ("reading", "writing", ...).
        action: &'static str,
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A PKCS#11 function failed; `rv` is the CKR code.
    #[error("PKCS#11 {function} returned {rv_name} (0x{rv:08x})")]
    Pkcs11 {
        /// The PKCS#11 function, e.g. `C_Sign`.
        function: String,
        /// The CK_RV value.
        rv: u64,
        /// The CKR name, e.g. `AttributeSensitive`.
        rv_name: String,
    },
    /// The PKCS#11 module could not be loaded or used outside a function call.
    #[error("PKCS#11 module: {0}")]
    Module(String),
    /// No token with this label is present.
    #[error("no PKCS#11 token labelled {0:?}")]
    NoToken(String),
    /// An object on the token that trustfab made but that is not as trustfab makes it (an
    /// anchor object without its generation, say).
    #[error("token object is malformed: {0}")]
    BadObject(&'static str),
    /// A MAC tag that does not verify for this key and message (or is not a tag at all).
    #[error("MAC does not verify")]
    MacMismatch,
    /// A cryptographic primitive failed where it should not (random source, key generation).
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),
}

impl From<trustfab_keys::Error> for Error {
    fn from(e: trustfab_keys::Error) -> Self {
        match e {
            trustfab_keys::Error::BadPublicKey(reason) => Self::BadKey(reason),
            trustfab_keys::Error::TooLarge { what, len, limit } => {
                Self::TooLarge { what, len, limit }
            }
            trustfab_keys::Error::BadSignature => Self::Crypto("signature does not verify"),
            _ => Self::Crypto("key operation failed"),
        }
    }
}
