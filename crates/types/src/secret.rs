//! Secret wrappers: zeroized on drop, never printed, not `Clone`, not `Serialize`. Every read of
//! the secret is a call named `expose_secret` or `secret_*`, so every exposure can be found by grep.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::limits;

/// A passphrase that protects a key file. Comes from a prompt, an environment variable or a
/// file, never from the command line.
pub struct Passphrase(SecretString);

impl Passphrase {
    /// A passphrase from text; trailing newline characters (from a file or a prompt) are removed.
    ///
    /// # Errors
    /// Returns the reason when the passphrase is empty or longer than
    /// [`limits::PASSPHRASE_BYTES`].
    pub fn new(text: String) -> Result<Self, &'static str> {
        let mut text = Zeroizing::new(text);
        while text.ends_with('\n') || text.ends_with('\r') {
            text.pop();
        }
        if text.is_empty() {
            return Err("passphrase is empty");
        }
        if text.len() > limits::PASSPHRASE_BYTES {
            return Err("passphrase is longer than 1024 bytes");
        }
        Ok(Self(SecretString::from(text.as_str())))
    }

    /// The passphrase bytes. Every call site is an audited exposure.
    pub fn expose_secret(&self) -> &[u8] {
        self.0.expose_secret().as_bytes()
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase([secret elided])")
    }
}

/// PKCS#8 DER of a private key. Zeroized on drop, never printed, not `Clone`.
pub struct SecretKeyDer(Zeroizing<Vec<u8>>);

impl SecretKeyDer {
    /// Takes ownership of PKCS#8 DER bytes.
    pub fn new(der: Vec<u8>) -> Self {
        Self(Zeroizing::new(der))
    }

    /// The secret bytes. Every call site is an audited exposure.
    pub fn secret_pkcs8_der(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretKeyDer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKeyDer([secret elided])")
    }
}

/// Secret bytes of any other kind (a shared secret, a symmetric key). Zeroized on drop.
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of the bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The secret bytes. Every call site is an audited exposure.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes({} bytes, [secret elided])", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_secret() {
        let p = Passphrase::new("hunter2-correct-horse\n".into()).unwrap();
        assert_eq!(p.expose_secret(), b"hunter2-correct-horse");
        assert!(!format!("{p:?}").contains("hunter2"));
        let k = SecretKeyDer::new(b"very secret key bytes".to_vec());
        assert!(!format!("{k:?}").contains("secret key"));
        let s = SecretBytes::new(vec![0x41; 8]);
        assert!(!format!("{s:?}").contains("AAAA"));
    }

    #[test]
    fn passphrase_refuses_empty() {
        assert!(Passphrase::new("\n".into()).is_err());
        assert!(Passphrase::new("x".repeat(1025)).is_err());
    }
}
