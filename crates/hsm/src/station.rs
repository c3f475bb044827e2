//! Stations as the HSM service knows them: the station CA whose key is made inside the token,
//! the certificates it issues (each recorded in the ledger with what it grants), revocation (a
//! ledger record and claim the service checks on every request), the service's own TLS key in
//! the token, and the ledger counter that holds a station's ceiling of devices.
//!
//! A station id is certified once and revoked once: both are claims, so however many operators
//! or processes race, the ledger holds one certification and one revocation per id; a revoked
//! id is never certified again (renewal is a new id). What a certificate grants is read back
//! from the certificate the TLS handshake validated, and its fingerprint must be the one the
//! ledger recorded at certification.

use std::collections::{HashMap, HashSet};
use std::sync::PoisonError;

use trustfab_formats::records::{
    self, Bytes, Digest, StationCertified, StationRevoked, CLAIM_STATION, CLAIM_STATION_REVOKED,
};
use trustfab_ledger::{Append, CounterOp, Kind};
use trustfab_pki::station::{StationCert, StationGrant, StationRequest};
use trustfab_pki::Issuer;
use trustfab_token::{Curve, KeyHandle, KeyLabel, KeySpec, KeyUsage, TokenSigner};
use trustfab_types::{Serial, StationId, UnixTime};

use crate::error::StationError;
use crate::{Hsm, IssuanceRecord};

/// Token label of the station CA key (signs station certificates and the service's TLS
/// certificate).
pub const STATION_CA_LABEL: &str = "hsm-station-ca";
/// Token label of the HSM service's TLS key (signs its handshakes).
pub const SERVICE_TLS_LABEL: &str = "hsm-service-tls";
/// Days a station CA certificate is valid.
const STATION_CA_DAYS: u32 = 3650;

/// The ledger counter of a station's ceiling of devices, `station:<id>`. Product keys never
/// hold a `:`, so it cannot name a product.
pub(crate) fn station_counter(id: &StationId) -> String {
    format!("station:{id}")
}

/// Who asks, when a request comes through the HSM service: the station its certificate names.
/// Every record the request causes names it; with a ceiling, its issuance also spends the
/// station's counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The station id.
    pub id: StationId,
    /// Whether the station has a ceiling of devices (its counter `station:<id>`).
    pub metered: bool,
}

impl Caller {
    /// The caller a validated station certificate names.
    pub fn of(cert: &StationCert) -> Self {
        Self {
            id: cert.station_id.clone(),
            metered: cert.grant.max_devices.is_some(),
        }
    }
}

/// A station as the ledger records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StationStatus {
    /// The certification record's body.
    pub certified: StationCertified,
    /// Its ledger record.
    pub seq: u64,
    /// The revocation record, when revoked.
    pub revoked_seq: Option<u64>,
    /// Devices the ceiling has left, when it has one.
    pub remaining: Option<u64>,
    /// Certificates whose issuance records name the station ([`Hsm::stations`] counts them;
    /// 0 from [`Hsm::station`]).
    pub issued: u64,
}

impl Hsm {
    fn key_or_make(&self, label: &str) -> Result<KeyHandle, StationError> {
        let label = KeyLabel::new(label)?;
        if let Some(k) = self.token.find(&label)? {
            return Ok(k);
        }
        Ok(self
            .token
            .generate(&KeySpec::new(label, Curve::P256, KeyUsage::Sign))?)
    }

    /// The station CA key (made the first time) as a signer.
    fn station_ca_signer(&self) -> Result<TokenSigner<'_>, StationError> {
        let key = self.key_or_make(STATION_CA_LABEL)?;
        Ok(TokenSigner::new(&*self.token, key)?)
    }

    /// The service's TLS key (made the first time), looked up once.
    fn service_key(&self) -> Result<KeyHandle, StationError> {
        if let Some(k) = self.service_key.get() {
            return Ok(*k);
        }
        let k = self.key_or_make(SERVICE_TLS_LABEL)?;
        Ok(*self.service_key.get_or_init(|| k))
    }

    fn random_serial(&self) -> Result<Serial, StationError> {
        let mut b = [0u8; 16];
        self.token.fill_random(&mut b)?;
        // Positive and non-zero: the top bit clear, the last bit set.
        b[0] &= 0x7f;
        b[15] |= 1;
        Serial::from_be_bytes(&b).map_err(|e| StationError::Certificate(e.to_string()))
    }

    /// The station CA certificate (DER). Its key is made inside the token the first time; a
    /// certificate stored beside the HSM (`stored`) is used when it certifies that key and its
    /// self-signature verifies, otherwise a new one is made for the same key (a station's trust
    /// anchor is the CA's name and key, so certificates issued before still validate).
    ///
    /// # Errors
    /// A token or certificate error.
    pub fn station_ca(&self, stored: Option<&[u8]>) -> Result<Vec<u8>, StationError> {
        let signer = self.station_ca_signer()?;
        if let Some(der) = stored {
            // It must certify the token's key (a name and key are what stations anchor to).
            if Issuer::new(der, &signer).is_ok() {
                return Ok(der.to_vec());
            }
        }
        let serial = self.random_serial()?;
        Ok(trustfab_pki::station::station_ca(
            &self.hsm_id,
            &serial,
            self.clock.now(),
            STATION_CA_DAYS,
            &signer,
        )?)
    }

    /// Certifies a station: checks the request's products exist here, issues its certificate
    /// from the station CA and records it, with what it grants (and the station's counter when
    /// it has a ceiling), in one ledger append sealed at its place. A station id is certified
    /// once.
    ///
    /// # Errors
    /// [`StationError::AlreadyCertified`], [`StationError::Revoked`],
    /// [`StationError::UnknownProduct`], [`StationError::EmptyGrant`], a certificate, token or
    /// ledger error. Nothing is recorded then.
    pub fn certify_station(
        &self,
        ca_cert: &[u8],
        req: &StationRequest,
        grant: &StationGrant,
        days: u32,
    ) -> Result<(Vec<u8>, u64), StationError> {
        let id = &req.station_id;
        if grant.products.is_empty() {
            return Err(StationError::EmptyGrant);
        }
        if self
            .ledger
            .verified_claim(CLAIM_STATION_REVOKED, id.as_str().as_bytes())?
        {
            return Err(StationError::Revoked {
                station: id.clone(),
            });
        }
        if let Some(seq) = self.ledger.claimed(CLAIM_STATION, id.as_str().as_bytes())? {
            return Err(StationError::AlreadyCertified {
                station: id.clone(),
                seq,
            });
        }
        for p in &grant.products {
            if self.ledger.verified_counter(&p.to_string())?.is_none() {
                return Err(StationError::UnknownProduct { product: p.clone() });
            }
        }
        let signer = self.station_ca_signer()?;
        let issuer = Issuer::new(ca_cert, &signer)?;
        let serial = self.random_serial()?;
        let now = self.clock.now();
        let cert = trustfab_pki::station::certify_station(req, grant, &serial, now, days, &issuer)?;
        let parsed = trustfab_pki::station::parse_station_cert(&cert)?;
        let body = StationCertified {
            station: id.clone(),
            serial: Bytes(serial.as_be_bytes().to_vec()),
            cert_sha256: Digest(parsed.fingerprint),
            products: grant.products.clone(),
            max_devices: grant.max_devices,
            max_per_day: grant.max_per_day,
            not_after: parsed.not_after.0,
            time: now.0,
        };
        let mut append = Append::record(Kind::StationCertified, records::encode(&body))
            .with_claim(CLAIM_STATION, id.as_str().as_bytes().to_vec());
        if let Some(max) = grant.max_devices {
            append = append.with_counter(CounterOp::Create {
                product: station_counter(id),
                count: max,
            });
        }
        let floor = self.anchor.floor()?;
        let recs = self.append_positional(&append)?.map_err(|e| match e {
            trustfab_ledger::Error::Duplicate { first_seq, .. } => StationError::AlreadyCertified {
                station: id.clone(),
                seq: first_seq,
            },
            other => StationError::Ledger(other),
        })?;
        self.anchor.advance(floor, &recs)?;
        Ok((cert, recs.first().map_or(0, |r| r.seq)))
    }

    /// Revokes a station: one ledger record and claim; the service refuses its next request.
    ///
    /// # Errors
    /// [`StationError::UnknownStation`], [`StationError::Revoked`] when it is revoked already,
    /// or a token or ledger error.
    pub fn revoke_station(&self, id: &StationId, reason: &str) -> Result<u64, StationError> {
        if !self
            .ledger
            .verified_claim(CLAIM_STATION, id.as_str().as_bytes())?
        {
            return Err(StationError::UnknownStation {
                station: id.clone(),
            });
        }
        let reason: String = reason.chars().take(256).collect();
        let body = StationRevoked {
            station: id.clone(),
            reason,
            time: self.clock.now().0,
        };
        let append = Append::record(Kind::StationRevoked, records::encode(&body))
            .with_claim(CLAIM_STATION_REVOKED, id.as_str().as_bytes().to_vec());
        let append = crate::seal::seal_free(&*self.token, self.seal_key, append)?;
        let floor = self.anchor.floor()?;
        let recs = self.ledger.append(append).map_err(|e| match e {
            trustfab_ledger::Error::Duplicate { .. } => StationError::Revoked {
                station: id.clone(),
            },
            other => StationError::Ledger(other),
        })?;
        self.anchor.advance(floor, &recs)?;
        Ok(recs.first().map_or(0, |r| r.seq))
    }

    /// Admits a request from a station whose certificate the TLS handshake validated to the
    /// station CA (not expired by the HSM's clock): the certificate must be the one the ledger recorded for its id (a station CA
    /// key used outside this HSM's ledger is refused), and the id must not be revoked (checked
    /// against the chain on every call, so a revocation holds from the next request on).
    ///
    /// # Errors
    /// [`StationError::UnknownStation`], [`StationError::OtherCertificate`],
    /// [`StationError::Revoked`], [`StationError::Expired`], or a ledger error.
    pub fn admit_station(&self, cert: &StationCert) -> Result<(), StationError> {
        let id = &cert.station_id;
        if cert.not_after.0 < self.clock.now().0 {
            return Err(StationError::Expired {
                station: id.clone(),
            });
        }
        // Revoked when the stored claim row says so (a revocation by another process is seen
        // at once) or the sealed account does as of this process's last transaction (a row
        // deleted in the store after that changes nothing): no writer round trip per request.
        let key = id.as_str().as_bytes();
        if self.ledger.claimed(CLAIM_STATION_REVOKED, key)?.is_some()
            || self.ledger.claim_in_account(CLAIM_STATION_REVOKED, key) == Some(true)
        {
            return Err(StationError::Revoked {
                station: id.clone(),
            });
        }
        let known = self
            .admitted
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&cert.fingerprint);
        if !known {
            let st = self.station(id)?;
            if st.certified.cert_sha256.0 != cert.fingerprint {
                return Err(StationError::OtherCertificate {
                    station: id.clone(),
                });
            }
            self.admitted
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(cert.fingerprint);
        }
        Ok(())
    }

    /// A station as the ledger records it.
    ///
    /// # Errors
    /// [`StationError::UnknownStation`], [`StationError::BadRecord`], or a ledger error.
    pub fn station(&self, id: &StationId) -> Result<StationStatus, StationError> {
        let key = id.as_str().as_bytes();
        let unknown = || StationError::UnknownStation {
            station: id.clone(),
        };
        if !self.ledger.verified_claim(CLAIM_STATION, key)? {
            return Err(unknown());
        }
        let seq = self
            .ledger
            .claimed(CLAIM_STATION, key)?
            .ok_or_else(unknown)?;
        let bad = || StationError::BadRecord { seq };
        let raw = self
            .ledger
            .read_raw(seq, 1)?
            .into_iter()
            .next()
            .ok_or_else(bad)?;
        let r = raw.into_record()?;
        let certified: StationCertified = records::decode(&r.body).map_err(|_| bad())?;
        if r.kind != Kind::StationCertified || certified.station != *id {
            return Err(bad());
        }
        let revoked_seq = if self.ledger.verified_claim(CLAIM_STATION_REVOKED, key)? {
            self.ledger.claimed(CLAIM_STATION_REVOKED, key)?
        } else {
            None
        };
        let remaining = match certified.max_devices {
            Some(_) => self
                .ledger
                .verified_counter(&station_counter(id))?
                .map(|c| c.remaining()),
            None => None,
        };
        Ok(StationStatus {
            certified,
            seq,
            revoked_seq,
            remaining,
            issued: 0,
        })
    }

    /// Every station the ledger has certified, in certification order, with the certificates
    /// whose issuance records name it: one walk of the chain.
    ///
    /// # Errors
    /// A ledger error or a record that does not decode.
    pub fn stations(&self) -> Result<Vec<StationStatus>, StationError> {
        let (ids, issued) = self.walk_stations(UnixTime(0))?;
        ids.iter()
            .map(|id| {
                let mut s = self.station(id)?;
                s.issued = issued.get(id).copied().unwrap_or(0);
                Ok(s)
            })
            .collect()
    }

    /// One walk of the chain: the stations certified, in order, and per station the
    /// certificates whose issuance records name it with a notBefore at `since` or later.
    fn walk_stations(
        &self,
        since: UnixTime,
    ) -> Result<(Vec<StationId>, HashMap<StationId, u64>), StationError> {
        let mut ids = Vec::new();
        let mut seen = HashSet::new();
        let mut issued: HashMap<StationId, u64> = HashMap::new();
        for rec in self.ledger.records(1) {
            let rec = rec?;
            match rec.kind {
                Kind::StationCertified => {
                    let b: StationCertified = records::decode(&rec.body)
                        .map_err(|_| StationError::BadRecord { seq: rec.seq })?;
                    if seen.insert(b.station.clone()) {
                        ids.push(b.station);
                    }
                }
                Kind::CertificateIssued => {
                    if let Ok(IssuanceRecord {
                        station: Some(st),
                        not_before,
                        ..
                    }) = IssuanceRecord::decode(&rec.body)
                    {
                        if not_before.0 >= since.0 {
                            *issued.entry(st).or_default() += 1;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok((ids, issued))
    }

    /// The HSM's clock: what its records and certificates are dated by.
    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    /// Certificates whose issuance records name station `id` and whose notBefore (the moment
    /// of issuance) is at `since` or later: one walk of the chain. The service counts a day's
    /// issuance from it for a per-day ceiling.
    ///
    /// # Errors
    /// A ledger error.
    pub fn station_issued_since(
        &self,
        id: &StationId,
        since: UnixTime,
    ) -> Result<u64, StationError> {
        let (_, issued) = self.walk_stations(since)?;
        Ok(issued.get(id).copied().unwrap_or(0))
    }

    /// The service's TLS certificate for `names` (DNS names or IP addresses), certifying its key
    /// in the token (made there the first time); issued anew by the station CA at every start of
    /// the service.
    ///
    /// # Errors
    /// A token or certificate error.
    pub fn service_tls(
        &self,
        ca_cert: &[u8],
        names: &[String],
        days: u32,
    ) -> Result<Vec<u8>, StationError> {
        let public = self.token.public_key(self.service_key()?)?;
        let signer = self.station_ca_signer()?;
        let issuer = Issuer::new(ca_cert, &signer)?;
        let serial = self.random_serial()?;
        let cert = trustfab_pki::station::service_certificate(
            names,
            &public,
            &serial,
            self.clock.now(),
            days,
            &issuer,
        )?;
        Ok(cert)
    }

    /// Signs a TLS handshake message with the service's key in the token (ECDSA P-256 with
    /// SHA-256, DER): the only thing that key does.
    ///
    /// # Errors
    /// A token error.
    pub fn sign_handshake(&self, message: &[u8]) -> Result<Vec<u8>, StationError> {
        Ok(self.token.sign(self.service_key()?, message)?.into_der())
    }
}
