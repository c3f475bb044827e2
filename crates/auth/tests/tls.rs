//! Mutual TLS with device-held keys: rustls with a `SigningKey` that asks the device to sign,
//! against the real openssl s_server / s_client and against a rustls OEM server, over real
//! sockets on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use trustfab_auth::tls::{self, OemClientVerifier, TlsIdentity};
use trustfab_auth::{Identity, Slots};
use trustfab_device::{Device, Fault, SiliconVendor, SimDevice, Socket, Trigger};
use trustfab_pki::{pem, Curve, PublicKey, Signer, SoftKey, Template};
use trustfab_test_support::openssl_tls::{s_client, SServer};
use trustfab_test_support::Scratch;
use trustfab_types::DeviceUid;

use crate::support::{server_capable_template, vendor, Oem, DEVICE_EKU};

const SERVER_NAME: &str = "update.acme.example";

const SERVER_TEMPLATE: &str = r#"version = 1
[subject]
organization = "Acme IoT"
common_name = "update.acme.example"
[subject_alt_name]
dns = ["update.acme.example"]
[validity]
days = 3650
[extensions]
key_usage = ["digital_signature"]
extended_key_usage = ["server_auth", "client_auth"]
basic_constraints = { ca = false }
[serial]
scheme = "random"
bits = 64
"#;

/// The OEM update server's identity: an ordinary key pair, certified by the OEM's CA.
struct ServerIdentity {
    chain: Vec<Vec<u8>>,
    key: SoftKey,
}

impl ServerIdentity {
    fn new(oem: &Oem) -> Self {
        let key = SoftKey::generate(Curve::P256).unwrap();
        let pk = PublicKey::from_point(Curve::P256, key.public_point()).unwrap();
        let template = Template::from_toml(SERVER_TEMPLATE).unwrap();
        let uid = DeviceUid::new(b"update-1").unwrap();
        let cert = oem.issue(&template, &uid, 77, &pk);
        Self {
            chain: vec![cert, oem.ca.clone()],
            key,
        }
    }

    fn rustls_chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect()
    }

    fn rustls_key(&self) -> PrivateKeyDer<'static> {
        let der = self.key.secret_pkcs8_der().unwrap();
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.secret_pkcs8_der().to_vec()))
    }

    /// Writes `name.pem` (certificate), `name-chain.pem` (device CA) and `name.key` (PKCS#8)
    /// for openssl.
    fn write(&self, s: &Scratch, name: &str) -> [PathBuf; 3] {
        let der = self.key.secret_pkcs8_der().unwrap();
        [
            s.write(&format!("{name}.pem"), pem::cert_pem(&self.chain[0])),
            s.write(&format!("{name}-chain.pem"), pem::cert_pem(&self.chain[1])),
            s.write(
                &format!("{name}.key"),
                pem::encode("PRIVATE KEY", der.secret_pkcs8_der()),
            ),
        ]
    }
}

fn tls_identity<D: Device + 'static>(d: D) -> TlsIdentity<D> {
    TlsIdentity::new(Identity::load(d, Slots::PROVISIONED).unwrap()).unwrap()
}

/// What the openssl tests share: acme and globex, a vendor, and in a scratch directory acme's
/// root and acme's update server (certificate, chain, key) as PEM files.
struct OpensslSite {
    acme: Oem,
    globex: Oem,
    v: SiliconVendor,
    s: Scratch,
    root: PathBuf,
    server: [PathBuf; 3],
}

impl OpensslSite {
    fn new() -> Self {
        let acme = Oem::new("acme");
        let s = Scratch::new();
        let root = s.write("root.pem", pem::cert_pem(&acme.root));
        let server = ServerIdentity::new(&acme).write(&s, "server");
        Self {
            globex: Oem::new("globex"),
            v: vendor(),
            acme,
            s,
            root,
            server,
        }
    }
}

/// A device client: connects, sends `request`, returns what came back or the first error.
fn device_get<D: Device + 'static>(
    id: &TlsIdentity<D>,
    port: u16,
    request: &[u8],
) -> Result<String, String> {
    let config = Arc::new(id.client_config().unwrap());
    let name = ServerName::try_from(SERVER_NAME).unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(request).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) => Ok(String::from_utf8_lossy(&out).into_owned()),
        // s_server -www may close without close_notify once it has answered.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn openssl_s_server_accepts_a_device_client_and_refuses_another_oems() {
    let OpensslSite {
        acme,
        globex,
        mut v,
        s: _scratch,
        root,
        server: [srv_cert, srv_chain, srv_key],
    } = OpensslSite::new();

    let device = tls_identity(acme.provision(&mut v, 1));
    let server = SServer::start(&srv_cert, &srv_chain, &srv_key, &root);
    let page = device_get(&device, server.port(), b"GET / HTTP/1.0\r\n\r\n");
    let log = server.finish();
    let page = page.unwrap_or_else(|e| panic!("device client refused: {e}\n{log}"));
    assert!(page.starts_with("HTTP/1.0 200 ok"), "{page}\n{log}");
    assert!(!log.contains("error"), "{log}");

    // A globex device (which, wrongly, trusts acme's root, so that it goes on) is refused by
    // openssl: its chain does not lead to acme's root.
    let intruder = tls_identity(globex.provision_trusting(&mut v, 2, &acme.root));
    let server = SServer::start(&srv_cert, &srv_chain, &srv_key, &root);
    let result = device_get(&intruder, server.port(), b"GET / HTTP/1.0\r\n\r\n");
    let log = server.finish();
    match result {
        Ok(page) => assert!(
            !page.contains("200 ok"),
            "openssl served an intruder: {page}"
        ),
        Err(e) => assert!(!e.is_empty()),
    }
    assert!(
        log.contains("unable to get local issuer certificate") || log.contains("verify error"),
        "{log}"
    );
}

/// A TLS server under `config` for one connection, on a free port of 127.0.0.1: reads what the
/// client sends (a read error told by `read_error`), writes `answer(client subject, what it
/// read)`, closes. Returns the port, and the thread that returns the subject of the client
/// certificate or the error.
fn serve_once(
    config: rustls::ServerConfig,
    read_error: fn(std::io::Error) -> String,
    answer: fn(&str, &[u8]) -> Vec<u8>,
) -> (u16, JoinHandle<Result<String, String>>) {
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (sock, _) = listener.accept().map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let mut buf = [0u8; 64];
        let n = tls.read(&mut buf).map_err(read_error)?;
        let peer = tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| {
                x509_parser::parse_x509_certificate(c)
                    .ok()
                    .map(|(_, x)| x.subject().to_string())
            })
            .ok_or("no client certificate")?;
        tls.write_all(&answer(&peer, &buf[..n]))
            .map_err(|e| e.to_string())?;
        tls.conn.send_close_notify();
        tls.flush().map_err(|e| e.to_string())?;
        Ok(peer)
    });
    (port, handle)
}

/// The device `d` as a TLS server for one connection, accepting client certificates under the
/// root in its own storage: reads what the client sends, answers with the subject of the client
/// certificate, closes. Returns that subject or the error.
fn device_server(d: SimDevice) -> (u16, JoinHandle<Result<String, String>>) {
    let id = tls_identity(d);
    let verifier = Arc::new(OemClientVerifier::new(id.root(), vec![], None).unwrap());
    serve_once(
        id.server_config(verifier).unwrap(),
        |e| e.to_string(),
        |peer, said| {
            format!(
                "hello {peer}, you said {:?}\n",
                String::from_utf8_lossy(said)
            )
            .into_bytes()
        },
    )
}

#[test]
fn openssl_s_client_accepts_a_device_server_signing_inside_the_device() {
    let OpensslSite {
        acme,
        globex,
        mut v,
        s,
        root,
        server: [srv_cert, srv_chain, srv_key],
    } = OpensslSite::new();

    let (port, server) =
        device_server(acme.provision_with(&mut v, &server_capable_template(), 5, None));
    let out = s_client(port, &root, &srv_cert, &srv_chain, &srv_key, b"ping\n");
    let peer = server.join().unwrap();
    assert!(
        out.output.contains("Verify return code: 0 (ok)"),
        "{}",
        out.output
    );
    assert!(out.output.contains("hello "), "{}", out.output);
    assert_eq!(peer.unwrap(), "O=Acme IoT, CN=update.acme.example");

    // The device server refuses a client certificate from another OEM.
    let [other_cert, other_chain, other_key] = ServerIdentity::new(&globex).write(&s, "other");
    let (port, server) =
        device_server(acme.provision_with(&mut v, &server_capable_template(), 6, None));
    let out = s_client(
        port,
        &root,
        &other_cert,
        &other_chain,
        &other_key,
        b"ping\n",
    );
    let err = server.join().unwrap().unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(!out.output.contains("hello "), "{}", out.output);
}

/// The OEM update server in rustls for one connection; returns the client's subject or error.
fn oem_server(
    server: &ServerIdentity,
    verifier: OemClientVerifier,
) -> (u16, JoinHandle<Result<String, String>>) {
    let config = tls::server_config(
        server.rustls_chain(),
        server.rustls_key(),
        Arc::new(verifier),
    )
    .unwrap();
    serve_once(config, |e| format!("{e:?}"), |_, _| b"ok\n".to_vec())
}

/// acme, a vendor, and acme's update server.
fn acme_update_server() -> (Oem, SiliconVendor, ServerIdentity) {
    let acme = Oem::new("acme");
    let srv = ServerIdentity::new(&acme);
    (acme, vendor(), srv)
}

/// The OEM server's verifier: client certificates under `oem`'s root with the device EKU, not
/// revoked by `crls`.
fn device_eku_verifier(oem: &Oem, crls: Vec<Vec<u8>>) -> OemClientVerifier {
    OemClientVerifier::new(&oem.root, crls, Some(DEVICE_EKU)).unwrap()
}

#[test]
fn the_oem_server_requires_the_device_eku_and_honours_the_crl() {
    let (acme, mut v, srv) = acme_update_server();
    let eku = || device_eku_verifier(&acme, vec![]);

    let device = tls_identity(acme.provision(&mut v, 10));
    let (port, server) = oem_server(&srv, eku());
    assert_eq!(device_get(&device, port, b"hi").unwrap(), "ok\n");
    assert!(server.join().unwrap().unwrap().contains("thermostat"));

    // A certificate of the same OEM without the device EKU (clientAuth only) is refused.
    let no_eku = Template::from_toml(
        &trustfab_pki::template::EXAMPLE_TEMPLATE.replace(r#", "1.3.6.1.4.1.55555.1.1""#, ""),
    )
    .unwrap();
    let plain = tls_identity(acme.provision_with(&mut v, &no_eku, 11, None));
    let (port, server) = oem_server(&srv, eku());
    assert!(device_get(&plain, port, b"hi").is_err());
    let err = server.join().unwrap().unwrap_err();
    assert!(err.contains("InvalidPurpose"), "{err}");

    // A revoked device is refused under the OEM's CRL.
    let revoked = tls_identity(acme.provision(&mut v, 12));
    let verifier = device_eku_verifier(&acme, vec![acme.crl(&[12])]);
    let (port, server) = oem_server(&srv, verifier);
    assert!(device_get(&revoked, port, b"hi").is_err());
    let err = server.join().unwrap().unwrap_err();
    assert!(err.contains("Revoked"), "{err}");
}

#[test]
fn the_tls_handshake_is_signed_inside_the_device() {
    let (acme, mut v, srv) = acme_update_server();
    let verifier = || device_eku_verifier(&acme, vec![]);

    // Through a programmer's socket, every command is counted: one handshake, one signature.
    let socket = Socket::with_device(acme.provision(&mut v, 20), 1);
    let id = tls_identity(socket);
    let ops = || id.device().lock().unwrap().operations();
    let before = ops();
    let (port, server) = oem_server(&srv, verifier());
    assert_eq!(device_get(&id, port, b"hi").unwrap(), "ok\n");
    server.join().unwrap().unwrap();
    assert_eq!(
        ops() - before,
        1,
        "the handshake must be signed by the device, once"
    );

    // The same part losing contact at that command: no signature, no handshake.
    let socket = Socket::with_device(acme.provision(&mut v, 21), 1)
        .fault(Fault::NoContact, Trigger::AtOperation(before + 1));
    let id = tls_identity(socket);
    let (port, server) = oem_server(&srv, verifier());
    let err = device_get(&id, port, b"hi").unwrap_err();
    assert!(err.contains("no contact"), "{err}");
    assert!(server.join().unwrap().is_err());
}
