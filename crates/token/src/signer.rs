//! A token key as a [`trustfab_keys::Signer`], so that certificates, CRLs, packages and images
//! are signed inside the token: the caller builds the message, the token signs it.

use trustfab_keys::{SignError, Signer};

use crate::{Curve, Error, KeyHandle, KeyUsage, Signature, Token};

/// A signing key on a token, usable wherever a [`Signer`] is wanted.
#[derive(Debug)]
pub struct TokenSigner<'a> {
    token: &'a dyn Token,
    key: KeyHandle,
    curve: Curve,
    point: Vec<u8>,
}

impl<'a> TokenSigner<'a> {
    /// Binds a signing key; its public key is read once, here.
    ///
    /// # Errors
    /// [`Error::UnknownKey`], or [`Error::NotPermitted`] when the key is not a signing key.
    pub fn new(token: &'a dyn Token, key: KeyHandle) -> Result<Self, Error> {
        let info = token.info(key)?;
        if info.usage != KeyUsage::Sign {
            return Err(Error::NotPermitted { operation: "sign" });
        }
        let public = token.public_key(key)?;
        Ok(Self {
            token,
            key,
            curve: public.curve(),
            point: public.point().to_vec(),
        })
    }

    /// The key handle.
    pub fn key(&self) -> KeyHandle {
        self.key
    }
}

impl Signer for TokenSigner<'_> {
    fn curve(&self) -> Curve {
        self.curve
    }

    fn public_point(&self) -> &[u8] {
        &self.point
    }

    fn sign_der(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        self.token
            .sign(self.key, message)
            .map(Signature::into_der)
            .map_err(|_| SignError::new("token signing failed"))
    }
}
