//! The OEM side: a report verified, streaming, against the vendor root and the OEM's orders.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Read};

use aws_lc_rs::digest::{Context, SHA256};
use ciborium::Value;
use trustfab_ledger::{record_hash, Kind, Record};
use trustfab_pki::{HsmCertificates, HsmIdentity, Policy, Purpose};
use trustfab_types::{ProductKey, UnixTime};

use super::{
    hex, product_of, signed_message, verify_signature, ReportError, ReportSummary, Totals,
    ITEM_MAX, REPORT_VERSION,
};
use crate::package::Contents;
use crate::records::{IssuanceRecord, PackageImported};

struct Item {
    map: Vec<(u64, Value)>,
    index: u64,
}

impl Item {
    fn get(&self, k: u64) -> Option<&Value> {
        self.map.iter().find(|(key, _)| *key == k).map(|(_, v)| v)
    }

    fn bad(&self, what: impl Into<String>) -> ReportError {
        ReportError::Format {
            index: self.index,
            what: what.into(),
        }
    }

    fn uint(&self, k: u64) -> Result<u64, ReportError> {
        self.get(k)
            .and_then(Value::as_integer)
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| self.bad(format!("field {k} is not an unsigned integer")))
    }

    fn bytes(&self, k: u64) -> Result<&[u8], ReportError> {
        self.get(k)
            .and_then(Value::as_bytes)
            .map(Vec::as_slice)
            .ok_or_else(|| self.bad(format!("field {k} is not a byte string")))
    }

    fn hash(&self, k: u64) -> Result<[u8; 32], ReportError> {
        self.bytes(k)?
            .try_into()
            .map_err(|_| self.bad(format!("field {k} is not a 32-byte hash")))
    }
}

/// Reads one item, hashing its bytes; `None` at the clean end of the stream.
fn read_item<R: BufRead>(
    r: &mut R,
    digest: &mut Context,
    index: u64,
) -> Result<Option<Item>, ReportError> {
    if r.fill_buf()?.is_empty() {
        return Ok(None);
    }
    let mut tee = Tee {
        inner: r.take(ITEM_MAX),
        digest,
    };
    let v: Value = ciborium::from_reader(&mut tee).map_err(|e| ReportError::Format {
        index,
        what: format!("not a CBOR item within {ITEM_MAX} bytes ({e})"),
    })?;
    let Value::Map(m) = v else {
        return Err(ReportError::Format {
            index,
            what: "not a map".into(),
        });
    };
    let mut map = Vec::with_capacity(m.len());
    for (k, v) in m {
        let k = k
            .as_integer()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or(ReportError::Format {
                index,
                what: "a key is not an unsigned integer".into(),
            })?;
        if map.iter().any(|(x, _)| *x == k) {
            return Err(ReportError::Format {
                index,
                what: format!("key {k} appears twice"),
            });
        }
        map.push((k, v));
    }
    Ok(Some(Item { map, index }))
}

struct Tee<'a, R: Read> {
    inner: R,
    digest: &'a mut Context,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(b) = buf.get(..n) {
            self.digest.update(b);
        }
        Ok(n)
    }
}

/// Verifies a report on the OEM's side, streaming: the HSM identity chains to `vendor_root`;
/// the report is for the orders' product and root; every record links to the one before (the
/// product's own records are re-hashed); every certificate validates to the OEM root, matches
/// its issuance record and is for this product; no serial or UID twice; every imported package
/// is one of the orders; the issued total is within the orders; the HSM's signature covers it
/// all.
///
/// # Errors
/// The first [`ReportError`] found, naming the record.
pub fn verify_report<R: BufRead>(
    mut input: R,
    vendor_root: &[u8],
    orders: &[Contents],
    now: UnixTime,
) -> Result<ReportSummary, ReportError> {
    let first_order = orders
        .first()
        .ok_or_else(|| ReportError::Order("no order given".into()))?;
    let product = ProductKey::new(first_order.oem_id.clone(), first_order.product_id.clone());
    for o in orders {
        if o.oem_id != *product.oem()
            || o.product_id != *product.product()
            || o.root_cert != first_order.root_cert
        {
            return Err(ReportError::Order(
                "the orders are for different products or roots".into(),
            ));
        }
    }
    let ordered_by_oem: u64 = orders.iter().map(|o| o.count).sum();
    let order_ids: HashSet<[u8; 16]> = orders.iter().map(|o| o.package_id).collect();

    let mut digest = Context::new(&SHA256);
    let head = read_item(&mut input, &mut digest, 0)?.ok_or_else(|| ReportError::Format {
        index: 0,
        what: "empty report".into(),
    })?;
    let version = head.uint(0)?;
    if version != REPORT_VERSION {
        return Err(ReportError::Version { found: version });
    }
    let text = |i: &Item, k| {
        i.get(k)
            .and_then(Value::as_text)
            .map(str::to_owned)
            .ok_or_else(|| i.bad(format!("field {k} is not text")))
    };
    if text(&head, 1)? != product.to_string() {
        return Err(ReportError::Order(format!(
            "the report is for {}, the orders for {product}",
            text(&head, 1)?
        )));
    }
    let certs = HsmCertificates {
        identity: head.bytes(2)?.to_vec(),
        key_transport: head.bytes(3)?.to_vec(),
    };
    let identity =
        HsmIdentity::validate(&certs, vendor_root, now).map_err(ReportError::Identity)?;
    if head.bytes(5)? != first_order.root_cert.as_slice() {
        return Err(ReportError::Order(
            "the report's OEM root is not the orders' root".into(),
        ));
    }
    let root = first_order.root_cert.clone();
    let intermediates: Vec<Vec<u8>> = match head.get(6) {
        Some(Value::Bytes(b)) => vec![b.clone()],
        _ => Vec::new(),
    };

    let mut summary = ReportSummary {
        hsm_id: identity.hsm_id.clone(),
        product: product.clone(),
        records: 0,
        own_records: 0,
        certificates: 0,
        packages: 0,
        totals: Totals::default(),
        reserved: 0,
        ordered_by_oem,
        by_station: std::collections::BTreeMap::new(),
    };
    let mut prev = trustfab_ledger::GENESIS_HASH;
    let mut expected_seq = 1u64;
    let mut serials: HashSet<Vec<u8>> = HashSet::new();
    let mut uids: HashSet<Vec<u8>> = HashSet::new();
    let mut index = 1u64;
    let mut jobs = HashMap::new();
    let mut replayed = Totals::default();
    let trailer = loop {
        let before = digest.clone();
        let item =
            read_item(&mut input, &mut digest, index)?.ok_or_else(|| ReportError::Format {
                index,
                what: "the report ends without its signed trailer".into(),
            })?;
        index += 1;
        if item.get(9).is_some() {
            break (item, before);
        }
        let seq = item.uint(0)?;
        if seq != expected_seq {
            return Err(ReportError::Record {
                seq: expected_seq,
                what: format!("missing or out of order (the report has {seq} here)"),
            });
        }
        let stated_prev = item.hash(4)?;
        if stated_prev != prev {
            return Err(ReportError::Record {
                seq,
                what: "does not commit to the record before it (removed, inserted or reordered)"
                    .into(),
            });
        }
        let stated = item.hash(5)?;
        summary.records += 1;
        if item.get(2).is_some() {
            summary.own_records += 1;
            let code = u16::try_from(item.uint(1)?).map_err(|_| item.bad("kind out of range"))?;
            let body = item.bytes(2)?;
            let effects = item.bytes(3)?;
            if record_hash(&prev, seq, code, body, effects) != stated {
                return Err(ReportError::Record {
                    seq,
                    what: "its content does not match its hash (changed)".into(),
                });
            }
            let kind = Kind::from_code(code).ok_or_else(|| ReportError::Record {
                seq,
                what: format!("unknown kind {code}"),
            })?;
            let record = Record {
                seq,
                kind,
                body: body.to_vec(),
                effects: effects.to_vec(),
                prev_hash: prev,
                hash: stated,
            };
            if kind != Kind::Checkpoint && product_of(&record, &mut jobs).as_ref() != Some(&product)
            {
                return Err(ReportError::Record {
                    seq,
                    what: "included in full but not a record of this product".into(),
                });
            }
            replayed
                .apply(effects, &product)
                .map_err(|what| ReportError::Record { seq, what })?;
            match kind {
                Kind::CertificateIssued => {
                    let rec = IssuanceRecord::decode(body).map_err(|_| ReportError::Record {
                        seq,
                        what: "issuance record does not decode".into(),
                    })?;
                    let cert = item.bytes(6).map_err(|_| ReportError::Certificate {
                        seq,
                        what: "missing".into(),
                    })?;
                    check_certificate(seq, cert, &rec, &root, &intermediates, now)?;
                    if !serials.insert(rec.serial.as_be_bytes().to_vec()) {
                        return Err(ReportError::Certificate {
                            seq,
                            what: format!("serial {} appears twice", rec.serial),
                        });
                    }
                    if !uids.insert(rec.uid.as_bytes().to_vec()) {
                        return Err(ReportError::Certificate {
                            seq,
                            what: format!("device {} has a second certificate", rec.uid),
                        });
                    }
                    summary.certificates += 1;
                    *summary.by_station.entry(rec.station).or_default() += 1;
                }
                Kind::PackageImported => {
                    let id = PackageImported::decode(body)
                        .map_err(|_| ReportError::Record {
                            seq,
                            what: "package record does not decode".into(),
                        })?
                        .package_id;
                    if !order_ids.contains(&id) {
                        return Err(ReportError::Order(format!(
                            "record {seq} imports package {} which is not among the orders",
                            hex(&id)
                        )));
                    }
                    summary.packages += 1;
                }
                _ => {}
            }
        }
        prev = stated;
        expected_seq += 1;
    };
    let (t, before) = trailer;
    let head_seq = t.uint(0)?;
    let head_hash = t.hash(1)?;
    if head_seq != expected_seq - 1 || head_hash != prev {
        return Err(ReportError::Record {
            seq: expected_seq,
            what: "the trailer's head is not the last record walked (records removed at the end)"
                .into(),
        });
    }
    let totals = Totals {
        ordered: t.uint(2)?,
        issued: t.uint(3)?,
        remaining: t.uint(4)?,
    };
    let mut d = [0u8; 32];
    d.copy_from_slice(before.finish().as_ref());
    let message = signed_message(&d, head_seq, &head_hash, &totals);
    let signature = t.bytes(9)?;
    verify_signature(&identity.identity_key, &message, signature)?;
    if totals != replayed {
        return Err(ReportError::Totals(format!(
            "the HSM signed {totals:?}, the records add up to {replayed:?}"
        )));
    }
    summary.reserved = totals
        .issued
        .checked_sub(summary.certificates)
        .ok_or_else(|| {
            ReportError::Totals(format!(
                "{} certificates in the report, but only {} units spent",
                summary.certificates, totals.issued
            ))
        })?;
    if totals.ordered > ordered_by_oem || totals.issued > ordered_by_oem {
        return Err(ReportError::Totals(format!(
            "{} ordered and {} issued at the HSM, but the orders total {ordered_by_oem}",
            totals.ordered, totals.issued
        )));
    }
    if read_item(&mut input, &mut Context::new(&SHA256), index)?.is_some() {
        return Err(ReportError::Format {
            index,
            what: "data after the signed trailer".into(),
        });
    }
    summary.totals = totals;
    Ok(summary)
}

fn check_certificate(
    seq: u64,
    der: &[u8],
    rec: &IssuanceRecord,
    root: &[u8],
    intermediates: &[Vec<u8>],
    now: UnixTime,
) -> Result<(), ReportError> {
    let bad = |what: String| ReportError::Certificate { seq, what };
    trustfab_pki::validate(
        der,
        &Policy {
            root,
            intermediates,
            crls: &[],
            now,
            purpose: Purpose::ClientAuth,
        },
    )
    .map_err(|e| bad(e.to_string()))?;
    let (_, c) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
    if trustfab_types::Serial::from_be_bytes(c.raw_serial())
        .ok()
        .as_ref()
        != Some(&rec.serial)
    {
        return Err(bad("its serial is not the recorded one".into()));
    }
    if c.public_key().raw != rec.spki.as_slice() {
        return Err(bad("its public key is not the recorded one".into()));
    }
    if u64::try_from(c.validity().not_before.timestamp()).ok() != Some(rec.not_before.0) {
        return Err(bad("its notBefore is not the recorded issuance time".into()));
    }
    Ok(())
}
