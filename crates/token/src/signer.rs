//! A token key as a [`trustfab_pki::Signer`], so that certificates and CRLs are signed inside the
//! token: rcgen builds the TBSCertificate, the token signs it.

use trustfab_pki::Signer;

use crate::{Curve, Error, KeyHandle, Token};

/// A signing key on a token, usable wherever the PKI wants a [`Signer`].
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
        if info.usage != crate::KeyUsage::Sign {
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
    fn curve(&self) -> trustfab_pki::Curve {
        match self.curve {
            Curve::P256 => trustfab_pki::Curve::P256,
            Curve::P384 => trustfab_pki::Curve::P384,
        }
    }

    fn public_point(&self) -> &[u8] {
        &self.point
    }

    fn sign_der(&self, message: &[u8]) -> Result<Vec<u8>, trustfab_pki::Error> {
        self.token
            .sign(self.key, message)
            .map(crate::Signature::into_der)
            .map_err(|_| trustfab_pki::Error::Crypto("token signing failed"))
    }
}
