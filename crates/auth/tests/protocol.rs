//! The protocol of `docs/auth.md` between provisioned simulated devices: success both ways, and
//! each refusal with its own error (DESIGN.md property 7).

use std::net::{SocketAddr, TcpListener};
use std::thread::JoinHandle;

use trustfab_auth::{
    mutual, tcp, Error, Identity, Initiator, Refused, Responder, Role, Session, Slots, Trust,
};
use trustfab_device::{Device, DeviceKind, SimDevice};
use trustfab_types::UnixTime;

use crate::support::{
    acme_pair, one_day_template, open_exchange, record, template, trust, vendor, Oem, DAY, NOW,
};

fn refused(r: Result<impl std::fmt::Debug, Refused>) -> (Role, Error) {
    let e = r.unwrap_err();
    (e.by, e.error)
}

/// `id` responds, on a thread, to one connection on a free port of 127.0.0.1, trusting at
/// [`NOW`]: the address, and the thread that returns the responder's session or refusal.
fn respond_once(mut id: Identity<SimDevice>) -> (SocketAddr, JoinHandle<Result<Session, Error>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        tcp::respond(&mut stream, &mut id, &trust(NOW))
    });
    (addr, server)
}

#[test]
fn property_7_two_devices_of_one_oem_authenticate_both_ways() {
    let (_, _, mut a, mut b) = acme_pair(1001, 1002);
    let (sa, sb) = mutual(&mut a, &trust(NOW), &mut b, &trust(NOW)).unwrap();
    assert_eq!(sa.role, Role::Initiator);
    assert_eq!(sb.role, Role::Responder);
    assert_eq!(&sa.peer, b.subject());
    assert_eq!(&sb.peer, a.subject());
    assert_eq!(sa.peer.serial, "03ea"); // 1002
    assert_eq!(sa.transcript, sb.transcript);
    assert!(sa.key.ct_eq(&sb.key));
    // The other way round, and a second session: fresh nonces give a new transcript and key.
    let (s1, _) = mutual(&mut b, &trust(NOW), &mut a, &trust(NOW)).unwrap();
    let (s2, t2) = mutual(&mut b, &trust(NOW), &mut a, &trust(NOW)).unwrap();
    assert_eq!(&s1.peer, a.subject());
    assert_ne!(s1.transcript, s2.transcript);
    assert!(!s1.key.ct_eq(&s2.key));
    assert!(s2.key.ct_eq(&t2.key));
}

#[test]
fn a_secure_element_and_a_secure_mcu_authenticate_both_ways() {
    let oem = Oem::new("acme");
    let mut v = vendor();
    let mut se = oem.identity(&mut v, 1);
    let mut mcu = Identity::load(oem.provision_mcu(&mut v, 2), Slots::PROVISIONED).unwrap();
    let (s1, s2) = mutual(&mut se, &trust(NOW), &mut mcu, &trust(NOW)).unwrap();
    assert_eq!(&s1.peer, mcu.subject());
    assert!(s1.key.ct_eq(&s2.key));
    let (s1, s2) = mutual(&mut mcu, &trust(NOW), &mut se, &trust(NOW)).unwrap();
    assert_eq!(&s1.peer, se.subject());
    assert_eq!(s1.transcript, s2.transcript);
}

#[test]
fn a_device_of_another_oem_is_refused_by_both_sides() {
    let acme = Oem::new("acme");
    let globex = Oem::new("globex");
    let mut v = vendor();
    let mut a = acme.identity(&mut v, 1);
    let mut g = globex.identity(&mut v, 1);
    assert!(matches!(
        refused(mutual(&mut a, &trust(NOW), &mut g, &trust(NOW))),
        (Role::Responder, Error::UntrustedIssuer)
    ));
    assert!(matches!(
        refused(mutual(&mut g, &trust(NOW), &mut a, &trust(NOW))),
        (Role::Responder, Error::UntrustedIssuer)
    ));
    // The initiator refuses too, before it signs anything: a globex device that (wrongly)
    // trusts acme's root accepts acme's hello and answers; acme's device refuses it.
    let g2 = globex.provision_trusting(&mut v, 2, &acme.root);
    let mut g2 = Identity::load(g2, Slots::PROVISIONED).unwrap();
    assert!(matches!(
        refused(mutual(&mut a, &trust(NOW), &mut g2, &trust(NOW))),
        (Role::Initiator, Error::UntrustedIssuer)
    ));
}

#[test]
fn a_revoked_device_is_refused() {
    let (oem, _, mut a, mut b) = acme_pair(7, 8);
    let crl = [oem.crl(&[8])];
    let with_crl = Trust {
        crls: &crl,
        now: NOW,
    };
    // a holds the CRL that revokes b: a refuses b whichever side it is on.
    assert!(matches!(
        refused(mutual(&mut a, &with_crl, &mut b, &trust(NOW))),
        (Role::Initiator, Error::Revoked)
    ));
    assert!(matches!(
        refused(mutual(&mut b, &trust(NOW), &mut a, &with_crl)),
        (Role::Responder, Error::Revoked)
    ));
    // b, not revoked, is accepted under a CRL that lists another serial.
    let crl = [oem.crl(&[9])];
    let other = Trust {
        crls: &crl,
        now: NOW,
    };
    mutual(&mut a, &other, &mut b, &other).unwrap();
}

#[test]
fn an_expired_certificate_is_refused() {
    let oem = Oem::new("acme");
    let mut v = vendor();
    let mut a = oem.identity(&mut v, 1);
    let short = oem.provision_with(&mut v, &one_day_template(), 2, None);
    let mut b = Identity::load(short, Slots::PROVISIONED).unwrap();
    // Within its day it is accepted.
    mutual(&mut a, &trust(NOW), &mut b, &trust(NOW)).unwrap();
    let later = UnixTime(NOW.0 + 2 * DAY);
    assert!(matches!(
        refused(mutual(&mut a, &trust(later), &mut b, &trust(later))),
        (Role::Initiator, Error::Expired)
    ));
    assert!(matches!(
        refused(mutual(&mut b, &trust(later), &mut a, &trust(later))),
        (Role::Responder, Error::Expired)
    ));
    // Before its notBefore it is not valid yet.
    let before = UnixTime(NOW.0 - 60);
    assert!(matches!(
        refused(mutual(&mut a, &trust(before), &mut b, &trust(before))),
        (Role::Responder, Error::NotYetValid)
    ));
}

#[test]
fn a_certificate_whose_key_is_not_the_devices_is_refused() {
    let (oem, mut v, mut a, b) = acme_pair(1, 2);
    // c carries b's certificate (a clone: valid, same OEM, not revoked) but its own key.
    let c = oem.provision_with(&mut v, &template(), 3, Some(&b.chain()[0]));
    // c itself refuses to start with it ...
    let err = Identity::load(c, Slots::PROVISIONED).unwrap_err();
    assert!(matches!(err, Error::OwnKeyMismatch { slot: 0 }), "{err}");
    // ... and a device that did not check is refused by its peer, on either side.
    let c = oem.provision_with(&mut v, &template(), 4, Some(&b.chain()[0]));
    let mut c = Identity::danger_load_without_key_check(c, Slots::PROVISIONED).unwrap();
    assert!(matches!(
        refused(mutual(&mut a, &trust(NOW), &mut c, &trust(NOW))),
        (Role::Initiator, Error::Signature)
    ));
    assert!(matches!(
        refused(mutual(&mut c, &trust(NOW), &mut a, &trust(NOW))),
        (Role::Responder, Error::Signature)
    ));
}

#[test]
fn a_replayed_answer_is_refused() {
    let (_, _, mut a, mut b) = acme_pair(1, 2);
    let old = record(&mut a, &mut b);

    // The responder's recorded hello and answer, replayed to a new session of a.
    let (init, _) = Initiator::start(&mut a).unwrap();
    let err = init
        .finish(&mut a, &trust(NOW), &old.hello_r, &old.answer_r)
        .unwrap_err();
    assert!(matches!(err, Error::Replayed), "{err}");

    // The initiator's recorded answer, replayed to a new session of b: the recorded hello
    // opens it (anyone can send that), the recorded answer cannot close it.
    let (resp, _) = Responder::respond(&mut b, &trust(NOW), &old.hello_i).unwrap();
    let err = resp.finish(&old.answer_i).unwrap_err();
    assert!(matches!(err, Error::Replayed), "{err}");
}

#[test]
fn a_reflected_answer_is_refused() {
    let (_, _, mut a, mut b) = acme_pair(1, 2);

    // b's own answer sent back to b in place of the initiator's.
    let (init, resp, _, [_, answer_r]) = open_exchange(&mut a, &mut b);
    let err = resp.finish(&answer_r).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Reflected {
                role: Role::Responder
            }
        ),
        "{err}"
    );
    drop(init);

    // a's own hello sent back to a as the responder's.
    let (init, _, hello_i, [_, answer_r]) = open_exchange(&mut a, &mut b);
    let err = init
        .finish(&mut a, &trust(NOW), &hello_i, &answer_r)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Reflected {
                role: Role::Initiator
            }
        ),
        "{err}"
    );

    // b's own hello sent back to b as the initiator's: it claims the responder role.
    let (_, [hello_r, _]) = Responder::respond(&mut b, &trust(NOW), &hello_i).unwrap();
    let err = Responder::respond(&mut b, &trust(NOW), &hello_r).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Reflected {
                role: Role::Responder
            }
        ),
        "{err}"
    );
}

#[test]
fn a_tampered_transcript_is_refused() {
    let (_, _, mut a, mut b) = acme_pair(1, 2);

    // One bit of the responder's nonce changed on the way (header 4, role 1, nonce 32).
    let (init, _, _, [mut hello_r, answer_r]) = open_exchange(&mut a, &mut b);
    hello_r[4 + 1 + 5] ^= 0x01;
    let err = init
        .finish(&mut a, &trust(NOW), &hello_r, &answer_r)
        .unwrap_err();
    assert!(matches!(err, Error::Transcript), "{err}");

    // One bit of the initiator's ephemeral key changed on the way: still a point? Usually
    // not; either way the exchange is refused, never accepted.
    let (init, mut hello_i) = Initiator::start(&mut a).unwrap();
    hello_i[4 + 1 + 32 + 64] ^= 0x01;
    match Responder::respond(&mut b, &trust(NOW), &hello_i) {
        Err(e) => assert!(matches!(e, Error::Ephemeral), "{e}"),
        Ok((_, [h, ans])) => {
            let err = init.finish(&mut a, &trust(NOW), &h, &ans).unwrap_err();
            assert!(matches!(err, Error::Transcript), "{err}");
        }
    }

    // The confirmation tag changed: the transcript check refuses it.
    let (init, _, _, [hello_r, mut answer_r]) = open_exchange(&mut a, &mut b);
    answer_r[4 + 1 + 32] ^= 0x80;
    let err = init
        .finish(&mut a, &trust(NOW), &hello_r, &answer_r)
        .unwrap_err();
    assert!(matches!(err, Error::Transcript), "{err}");
}

#[test]
fn messages_out_of_order_are_refused() {
    let (_, _, mut a, mut b) = acme_pair(1, 2);
    let rec = record(&mut a, &mut b);
    let err = Responder::respond(&mut b, &trust(NOW), &rec.answer_i).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unexpected {
                expected: "hello",
                got: "answer"
            }
        ),
        "{err}"
    );
    let (init, _) = Initiator::start(&mut a).unwrap();
    let err = init
        .finish(&mut a, &trust(NOW), &rec.answer_r, &rec.answer_r)
        .unwrap_err();
    assert!(matches!(err, Error::Unexpected { .. }), "{err}");
    let err = Responder::respond(&mut b, &trust(NOW), &[1, 1, 0, 0]).unwrap_err();
    assert!(matches!(err, Error::Decode(_)), "{err}");
}

#[test]
fn the_root_must_come_from_write_protected_storage() {
    let mut v = vendor();
    // A part whose data zone is not locked: its root slot can still be rewritten.
    let mut d = v.manufacture(DeviceKind::SecureElement, NOW).unwrap();
    d.generate_key(0).unwrap();
    let err = Identity::load(d, Slots::PROVISIONED).unwrap_err();
    assert!(
        matches!(err, Error::RootNotWriteProtected { slot: 12 }),
        "{err}"
    );
    // A root slot configured always-writable is not a trust anchor either.
    let slots = Slots {
        root: 8,
        ..Slots::PROVISIONED
    };
    let oem = Oem::new("acme");
    let d = oem.provision(&mut v, 5);
    let err = Identity::load(d, slots).unwrap_err();
    assert!(
        matches!(err, Error::RootNotWriteProtected { slot: 8 }),
        "{err}"
    );
}

#[test]
fn devices_authenticate_over_tcp() {
    let (_, mut v, mut a, b) = acme_pair(1, 2);
    let b_subject = b.subject().clone();
    let (addr, server) = respond_once(b);
    let sa = tcp::connect(addr, &mut a, &trust(NOW)).unwrap();
    let sb = server.join().unwrap().unwrap();
    assert_eq!(sa.peer, b_subject);
    assert_eq!(&sb.peer, a.subject());
    assert_eq!(sa.transcript, sb.transcript);
    assert!(sa.key.ct_eq(&sb.key));

    // Another OEM's device over TCP: the responder refuses and closes; the initiator sees the
    // connection end.
    let globex = Oem::new("globex");
    let g = globex.identity(&mut v, 1);
    let (addr, server) = respond_once(g);
    assert!(matches!(
        tcp::connect(addr, &mut a, &trust(NOW)),
        Err(Error::Io(_))
    ));
    assert!(matches!(
        server.join().unwrap(),
        Err(Error::UntrustedIssuer)
    ));
}

#[test]
fn an_oversized_frame_is_refused_before_it_is_read() {
    let mut header: &[u8] = &[1, 1, 0xff, 0xff];
    let err = tcp::read_frame(&mut header).unwrap_err();
    assert!(matches!(err, Error::Decode(_)), "{err}");
}
