//! `trustfab device auth|listen|connect|tls-connect` and `trustfab server tls-listen`, run for
//! real between processes on 127.0.0.1. The device files are provisioned here through the device
//! interface, as a station does (key inside, certificate from the OEM's template, certificates
//! into write-protected slots, lock).

// Fixtures outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use trustfab_device::{file, Device, DeviceKind, SiliconVendor, Zone};
use trustfab_pki::template::EXAMPLE_TEMPLATE;
use trustfab_pki::{
    issue_device, pem, Curve, DeviceRequest, Issuer, PublicKey, RenderInputs, Signer, SoftKey,
    Template,
};
use trustfab_test_support::openssl_tls::free_port;
use trustfab_test_support::{site, Scratch};
use trustfab_types::{
    Clock as _, DeviceUid, OsRng, Passphrase, ProductId, Serial, SystemClock, UnixTime,
};

mod common;
use common::{tf, PASS};

/// An OEM (root and device CA, valid around the real time the commands validate at) that
/// issues certificates and provisions device files.
struct Oem(site::Oem);

impl Oem {
    fn new(name: &str) -> Self {
        Self(site::Oem::new(name, SystemClock.now()))
    }

    fn issue(&self, template: &str, uid: &DeviceUid, serial: u64, pk: &PublicKey) -> Vec<u8> {
        let template = Template::from_toml(template).unwrap();
        let product = ProductId::new("thermostat").unwrap();
        let serial = Serial::from_u64(serial).unwrap();
        let req = DeviceRequest {
            inputs: RenderInputs {
                oem: &self.0.id,
                product: &product,
                uid,
                serial: &serial,
            },
            public_key: pk,
            now: UnixTime(SystemClock.now().0 - 60),
        };
        issue_device(
            &template,
            &req,
            &Issuer::new(&self.0.ca, &self.0.ca_key).unwrap(),
        )
        .unwrap()
    }

    /// A provisioned device file.
    fn device(&self, v: &mut SiliconVendor, dir: &Path, name: &str, serial: u64) -> PathBuf {
        let mut d = v
            .manufacture(DeviceKind::SecureElement, UnixTime(0))
            .unwrap();
        let pk = d.generate_key(0).unwrap();
        let uid = d.uid().unwrap();
        d.write_slot(10, &self.issue(EXAMPLE_TEMPLATE, &uid, serial, &pk))
            .unwrap();
        d.write_slot(11, &self.0.ca).unwrap();
        d.write_slot(12, &self.0.root).unwrap();
        d.lock(Zone::Data).unwrap();
        let path = dir.join(name);
        file::save(&d, &path).unwrap();
        path
    }
}

fn run(dir: &Path, args: &[&str]) -> Output {
    tf().run(dir, args)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Starts a listening command; returns once it printed "listening on".
fn spawn_listening(dir: &Path, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = tf()
        .command(dir, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(first.starts_with("listening on"), "{first}");
    (child, rx)
}

/// Waits (bounded) for a listener to finish; returns its exit status and remaining output.
fn finish(mut child: Child, rx: &mpsc::Receiver<String>) -> (bool, String) {
    let mut out = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
        out.push_str(&l);
        out.push('\n');
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err).ok();
    }
    out.push_str(&err);
    (status.is_some_and(|s| s.success()), out)
}

#[test]
fn device_auth_between_two_files_and_another_oems_is_refused() {
    let s = Scratch::new();
    let acme = Oem::new("acme");
    let globex = Oem::new("globex");
    let mut v = SiliconVendor::new(UnixTime(0), &OsRng).unwrap();
    let d1 = acme.device(&mut v, s.path(), "d1.dev", 1);
    let d2 = acme.device(&mut v, s.path(), "d2.dev", 2);
    let g = globex.device(&mut v, s.path(), "g.dev", 1);

    let o = run(s.path(), &["device", "auth", "d1.dev", "d2.dev"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert_eq!(out.matches(" authenticated ").count(), 4, "{out}");
    assert!(out.contains("mutual authentication both ways: ok"), "{out}");
    let _ = (d1, d2, g);

    let o = run(s.path(), &["device", "auth", "d1.dev", "g.dev"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("peer certificate is not issued under this device's OEM root"),
        "{}",
        text(&o)
    );
}

#[test]
fn device_listen_and_connect_between_processes() {
    let s = Scratch::new();
    let acme = Oem::new("acme");
    let mut v = SiliconVendor::new(UnixTime(0), &OsRng).unwrap();
    acme.device(&mut v, s.path(), "d1.dev", 1);
    acme.device(&mut v, s.path(), "d2.dev", 2);
    let addr = format!("127.0.0.1:{}", free_port());
    let (child, rx) = spawn_listening(s.path(), &["device", "listen", "d2.dev", "--addr", &addr]);
    let o = run(s.path(), &["device", "connect", "d1.dev", "--addr", &addr]);
    let (ok, listened) = finish(child, &rx);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).starts_with("authenticated C=US, O=Acme IoT"),
        "{}",
        text(&o)
    );
    assert!(ok, "{listened}");
    assert!(listened.contains("authenticated 127.0.0.1:"), "{listened}");
    // Both print the same session id.
    let id = |t: &str| t.split("session ").nth(1).map(|x| x.trim().to_owned());
    assert_eq!(id(&text(&o)), id(&listened));
}

const SERVER_TEMPLATE: &str = r#"version = 1
[subject]
organization = "Acme IoT"
common_name = "update.acme.example"
[subject_alt_name]
dns = ["update.acme.example"]
[validity]
days = 30
[extensions]
key_usage = ["digital_signature"]
extended_key_usage = ["server_auth", "client_auth"]
basic_constraints = { ca = false }
[serial]
scheme = "random"
bits = 64
"#;

#[test]
fn device_tls_connect_to_the_oem_server() {
    let s = Scratch::new();
    let acme = Oem::new("acme");
    let globex = Oem::new("globex");
    let mut v = SiliconVendor::new(UnixTime(0), &OsRng).unwrap();
    acme.device(&mut v, s.path(), "d1.dev", 1);
    globex.device(&mut v, s.path(), "g.dev", 1);
    let key = SoftKey::generate(Curve::P256).unwrap();
    let pk = PublicKey::from_point(Curve::P256, key.public_point()).unwrap();
    let cert = acme.issue(SERVER_TEMPLATE, &DeviceUid::new(b"srv").unwrap(), 99, &pk);
    s.write(
        "server.pem",
        format!("{}{}", pem::cert_pem(&cert), pem::cert_pem(&acme.0.ca)),
    );
    let pass = Passphrase::new(PASS.into()).unwrap();
    s.write(
        "server.key",
        key.to_encrypted_pem(&pass, &OsRng).unwrap().as_bytes(),
    );
    s.write("root.pem", pem::cert_pem(&acme.0.root));

    for (dev, accepted) in [("d1.dev", true), ("g.dev", false)] {
        let addr = format!("127.0.0.1:{}", free_port());
        let (child, rx) = spawn_listening(
            s.path(),
            &[
                "server",
                "tls-listen",
                "--cert",
                "server.pem",
                "--key",
                "server.key",
                "--root",
                "root.pem",
                "--device-eku",
                "1.3.6.1.4.1.55555.1.1",
                "--addr",
                &addr,
            ],
        );
        let o = run(
            s.path(),
            &[
                "device",
                "tls-connect",
                dev,
                "--addr",
                &addr,
                "--server-name",
                "update.acme.example",
            ],
        );
        let (ok, served) = finish(child, &rx);
        if accepted {
            assert!(o.status.success(), "{}\n{served}", text(&o));
            assert!(text(&o).contains("tls ok"), "{}", text(&o));
            assert!(text(&o).contains("hello C=US, O=Acme IoT"), "{}", text(&o));
            assert!(ok, "{served}");
            assert!(served.contains("authenticated device"), "{served}");
        } else {
            // globex's device does not trust acme's server either: both sides refuse.
            assert!(!o.status.success(), "{}", text(&o));
            assert!(!ok, "{served}");
            assert!(served.contains("refused"), "{served}");
        }
    }
}
