//! The flow on one device, steps 1 to 7 (8, the firmware step, is [`crate::firmware`]): read
//! the UID, generate the key inside the device (attested when the job says so), have the HSM
//! issue its certificate, write the certificates and the root into write-protected slots, lock,
//! and verify by read-back, chain validation and challenge-response. A device put back resumes
//! at the step an earlier attempt reached.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Sender};

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use trustfab_device::{Device, Error as DeviceError, Refusal, SlotKind, Zone};
use trustfab_formats::records::{Bytes, DeviceGood, Digest};
use trustfab_formats::LockPolicy;
use trustfab_hsm::{DeviceKey, Issued};
use trustfab_pki::{validate, Policy, PublicKey, Purpose};
use trustfab_types::{DeviceUid, Serial};

use crate::firmware::{program_firmware, sha256};
use crate::lifecycle::device_kind;
use crate::state::{guard, IssueReply, IssueRequest, Outcome, Shared};

/// The per-device steps, numbered as in DESIGN.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    /// 1: read the device UID.
    ReadUid = 1,
    /// 2: generate the identity key pair inside the device (attested when required).
    KeyGen = 2,
    /// 3: the HSM issues the certificate.
    Issue = 3,
    /// 4: write the device certificate (and the device CA).
    WriteCert = 4,
    /// 5: write the root CA certificate.
    WriteRoot = 5,
    /// 6: lock.
    Lock = 6,
    /// 7: verify: read back, chain to the root, challenge-response.
    Verify = 7,
    /// Between 5 and 6 on a job with firmware: family key, root-of-trust fuse, image, boot.
    Firmware = 8,
}

impl Step {
    /// The step's name in records and reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::ReadUid => "read-uid",
            Self::KeyGen => "keygen",
            Self::Issue => "issue",
            Self::WriteCert => "write-cert",
            Self::WriteRoot => "write-root",
            Self::Lock => "lock",
            Self::Verify => "verify",
            Self::Firmware => "firmware",
        }
    }

    pub(crate) fn number(self) -> u8 {
        self as u8
    }
}

/// Steps 1 to 7 on one device; resumes at the step an earlier attempt reached.
pub(crate) fn provision<D: Device>(
    sh: &Shared<'_>,
    dev: &mut D,
    issue_tx: &Sender<IssueRequest>,
) -> Outcome {
    let spec = sh.spec;
    let fail = |uid: Option<&DeviceUid>, step, e: &DeviceError, serial: Option<&Serial>| {
        Outcome::failed(uid, step, serial, e)
    };
    let refuse = |uid: &DeviceUid, step, reason: String, serial: Option<&Serial>| {
        Outcome::refused(uid, step, serial, reason)
    };

    // 1: UID.
    let uid = match dev.uid() {
        Ok(u) => u,
        Err(e) => return fail(None, Step::ReadUid, &e, None),
    };
    if guard(&sh.good).contains(uid.as_bytes()) {
        return Outcome::AlreadyGood;
    }
    let want_kind = device_kind(spec.device_kind);
    if dev.kind() != want_kind {
        return refuse(
            &uid,
            Step::ReadUid,
            format!("the part is a {}, the job is for {want_kind}", dev.kind()),
            None,
        );
    }
    // A part whose key slot holds no key cannot use a certificate the HSM may have recorded
    // for it (its key is gone), so the HSM is not asked: the issuance's UID claim refuses it if
    // one exists. Any other answer (a key, a lost reply) and the HSM is asked.
    let blank = matches!(
        dev.public_key(spec.slots.key),
        Err(DeviceError::Refused {
            refusal: Refusal::NoKey,
            ..
        })
    );
    let recorded = if blank {
        None
    } else {
        match sh.hsm.certificate_for(sh.reservation, &uid) {
            Ok(r) => r,
            Err(e) => return refuse(&uid, Step::Issue, format!("HSM: {e}"), None),
        }
    };
    let recorded_serial = recorded.as_ref().map(|i| i.serial.clone());
    let locks = match dev.lock_state() {
        Ok(l) => l,
        Err(e) => return fail(Some(&uid), Step::KeyGen, &e, recorded_serial.as_ref()),
    };

    // 2 and 3: key and certificate, or the ones an earlier attempt made.
    let (issued, resumed) = if let Some(issued) = recorded {
        if issued.job.as_ref() != Some(&spec.job_id) {
            return Outcome::Elsewhere {
                uid,
                job: issued.job,
            };
        }
        let serial = issued.serial.clone();
        let Some(cert_key) = cert_public_key(&issued.cert) else {
            return refuse(
                &uid,
                Step::Issue,
                "the recorded certificate does not parse".into(),
                Some(&serial),
            );
        };
        match dev.public_key(spec.slots.key) {
            Ok(k) if k == cert_key => {}
            Ok(_) => {
                return refuse(
                    &uid,
                    Step::KeyGen,
                    "the device key is not the key of its issued certificate".into(),
                    Some(&serial),
                )
            }
            Err(e) => return fail(Some(&uid), Step::KeyGen, &e, Some(&serial)),
        }
        (issued, true)
    } else {
        if locks.data {
            // Locked without a certificate of this product: a part of another product (or
            // another HSM) holds one, a part locked blank holds none. Either way it is not ours.
            let holds_cert = dev
                .read_slot(spec.slots.device_cert)
                .is_ok_and(|c| cert_public_key(&c).is_some());
            let reason = if holds_cert {
                format!(
                    "the part is locked with a certificate that is not of product {}",
                    spec.product
                )
            } else {
                "the part is locked and has no certificate".to_owned()
            };
            return refuse(&uid, Step::KeyGen, reason, None);
        }
        if !sh.acquire() {
            if sh.opts.stop.load(Ordering::Relaxed) {
                return Outcome::Stopped;
            }
            return Outcome::NotNeeded;
        }
        match keygen_and_issue(sh, dev, &uid, issue_tx) {
            Ok(i) => {
                sh.release(!i.reissued);
                (i, false)
            }
            Err(o) => {
                // A full reservation gives no unit back to start another device with.
                sh.release(matches!(o, Outcome::NotNeeded));
                return o;
            }
        }
    };
    let serial = Some(&issued.serial);

    // 4 and 5: write the certificates (a locked device had them written before).
    let mut writes = vec![(
        Step::WriteCert,
        spec.slots.device_cert,
        issued.cert.as_slice(),
    )];
    if let (Some(slot), Some(ca)) = (spec.slots.device_ca, sh.intermediates.first()) {
        writes.push((Step::WriteCert, slot, ca.as_slice()));
    }
    writes.push((Step::WriteRoot, spec.slots.root, sh.root.as_slice()));
    if !locks.data {
        for (step, slot, der) in &writes {
            if let Err(e) = dev.write_slot(*slot, der) {
                return fail(Some(&uid), *step, &e, serial);
            }
        }
    }

    // Firmware (a locked device had it programmed before).
    if let (Some(fw), false) = (&spec.firmware, locks.data) {
        if let Err(o) = program_firmware(sh, dev, &uid, fw, serial) {
            return *o;
        }
    }

    // 6: lock.
    if !locks.data {
        if spec.lock == LockPolicy::SlotsAndData {
            let slots = match dev.slots() {
                Ok(s) => s,
                Err(e) => return fail(Some(&uid), Step::Lock, &e, serial),
            };
            let mut ours: Vec<u8> = writes.iter().map(|w| w.1).collect();
            ours.push(spec.slots.key);
            for s in slots {
                if ours.contains(&s.id) && s.config.lockable && !s.locked {
                    if let Err(e) = dev.lock(Zone::Slot(s.id)) {
                        return fail(Some(&uid), Step::Lock, &e, serial);
                    }
                }
            }
        }
        // A secure MCU leaves its vendor with its configuration open (lifecycle open); the
        // configuration lock moves it to provisioned, the data lock to locked.
        if !locks.config {
            if let Err(e) = dev.lock(Zone::Config) {
                return fail(Some(&uid), Step::Lock, &e, serial);
            }
        }
        if let Err(e) = dev.lock(Zone::Data) {
            return fail(Some(&uid), Step::Lock, &e, serial);
        }
    }

    // 7: verify.
    let cert = match verify(sh, dev, &uid, &issued, &writes, serial) {
        Ok(c) => c,
        Err(o) => return o,
    };
    Outcome::Good(Box::new(DeviceGood {
        job: spec.job_id.clone(),
        uid: Bytes(uid.as_bytes().to_vec()),
        serial: Bytes(issued.serial.as_be_bytes().to_vec()),
        cert_sha256: Digest(sha256(&cert)),
        resumed,
        // The HSM names the station that asked (the service's caller), not the station.
        station: None,
    }))
}

fn keygen_and_issue<D: Device>(
    sh: &Shared<'_>,
    dev: &mut D,
    uid: &DeviceUid,
    issue_tx: &Sender<IssueRequest>,
) -> Result<Issued, Outcome> {
    let spec = sh.spec;
    let fail = |step, e: &DeviceError| Outcome::failed(Some(uid), step, None, e);
    let refuse = |step, reason: String| Outcome::refused(uid, step, None, reason);
    let public_key = match &spec.attestation_root {
        Some(vendor_root) => {
            let mut nonce = [0u8; 32];
            aws_lc_rs::rand::fill(&mut nonce)
                .map_err(|_| refuse(Step::KeyGen, "the random generator failed".into()))?;
            let att = dev
                .generate_key_attested(spec.slots.key, &nonce)
                .map_err(|e| fail(Step::KeyGen, &e))?;
            let cert = dev
                .attestation_certificate()
                .map_err(|e| fail(Step::KeyGen, &e))?;
            if &att.uid != uid {
                return Err(refuse(
                    Step::KeyGen,
                    format!("attestation is from device {}", att.uid),
                ));
            }
            att.verify(&cert, &vendor_root.0, &nonce, sh.opts.clock.now())
                .map_err(|e| refuse(Step::KeyGen, format!("key attestation refused: {e}")))?;
            att.public_key
        }
        None => dev
            .generate_key(spec.slots.key)
            .map_err(|e| fail(Step::KeyGen, &e))?,
    };
    let (tx, rx) = mpsc::channel();
    issue_tx
        .send(IssueRequest {
            key: DeviceKey {
                uid: uid.clone(),
                public_key,
            },
            reply: tx,
        })
        .map_err(|_| refuse(Step::Issue, "the HSM feeder stopped".into()))?;
    match rx.recv() {
        Ok(IssueReply::Issued(i)) => Ok(i),
        Ok(IssueReply::Full) => Err(Outcome::NotNeeded),
        Ok(IssueReply::Refused(reason)) => Err(refuse(Step::Issue, reason)),
        Err(_) => Err(refuse(Step::Issue, "the HSM feeder stopped".into())),
    }
}

fn cert_public_key(der: &[u8]) -> Option<PublicKey> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    PublicKey::from_spki_der(c.public_key().raw).ok()
}

fn verify<D: Device>(
    sh: &Shared<'_>,
    dev: &mut D,
    uid: &DeviceUid,
    issued: &Issued,
    writes: &[(Step, u8, &[u8])],
    serial: Option<&Serial>,
) -> Result<Vec<u8>, Outcome> {
    let spec = sh.spec;
    let fail = |e: &DeviceError| Outcome::failed(Some(uid), Step::Verify, serial, e);
    let refuse = |reason: String| Outcome::refused(uid, Step::Verify, serial, reason);
    let locks = dev.lock_state().map_err(|e| fail(&e))?;
    if !locks.data {
        return Err(refuse("the device reports its data zone unlocked".into()));
    }
    let mut cert = issued.cert.clone();
    for (_, slot, der) in writes {
        let back = dev.read_slot(*slot).map_err(|e| fail(&e))?;
        if back == *der {
            continue;
        }
        // A certificate written in an earlier attempt and rebuilt now has the same TBS (the HSM
        // records everything it is built from) but another ECDSA signature.
        if *slot == spec.slots.device_cert && same_tbs(&back, der) {
            cert = back;
            continue;
        }
        return Err(refuse(format!("slot {slot} reads back different content")));
    }
    let slots = dev.slots().map_err(|e| fail(&e))?;
    let key_slot = slots.iter().find(|s| s.id == spec.slots.key);
    if !key_slot.is_some_and(|s| s.config.kind == SlotKind::PrivateKey && s.filled) {
        return Err(refuse(format!(
            "slot {} holds no private key",
            spec.slots.key
        )));
    }
    validate(
        &cert,
        &Policy {
            root: &sh.root,
            intermediates: &sh.intermediates,
            crls: &[],
            now: sh.opts.clock.now(),
            purpose: Purpose::ClientAuth,
        },
    )
    .map_err(|e| {
        refuse(format!(
            "the certificate does not validate to the OEM root: {e}"
        ))
    })?;
    let cert_key = cert_public_key(&cert)
        .ok_or_else(|| refuse("the certificate's key does not parse".into()))?;
    let mut challenge = [0u8; 32];
    aws_lc_rs::rand::fill(&mut challenge)
        .map_err(|_| refuse("the random generator failed".into()))?;
    let sig = dev
        .sign_challenge(spec.slots.key, &challenge)
        .map_err(|e| fail(&e))?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, cert_key.point())
        .verify(&challenge, &sig)
        .map_err(|_| {
            refuse("the challenge answer does not verify under the certificate key".into())
        })?;
    Ok(cert)
}

fn same_tbs(a: &[u8], b: &[u8]) -> bool {
    match (
        x509_parser::parse_x509_certificate(a),
        x509_parser::parse_x509_certificate(b),
    ) {
        (Ok((_, x)), Ok((_, y))) => x.tbs_certificate.as_ref() == y.tbs_certificate.as_ref(),
        _ => false,
    }
}
