//! The HSM as a network service under load and under faults, with the real binary: one `hsm
//! serve` process on loopback and eight `job run --hsm` station processes of 64 sockets each,
//! each with its own certificate, offered more parts than the product's count, on SQLite and on
//! PostgreSQL; then the service SIGKILLed at random moments while the stations run, and
//! restarted each time. In every case the product ends with exactly its count issued, no UID
//! has two certificates, and the ledger and the OEM's check of the report agree.

// Fixtures outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

mod common;
use common::{number_after, ok, products, tf, verified_report, wait_done};

const STATIONS: usize = 8;
const SOCKETS: &str = "64";

/// A programming centre in `dir` (on `ledger_url` when given; on the SoftHSM2 token when
/// `pkcs11`) with `acme/thermo` of `count`, and `STATIONS` stations certified for it (`st0` …
/// `st7`).
fn centre_on(dir: &Path, count: u64, ledger_url: Option<&str>, pkcs11: bool) {
    let mut init = vec!["--hsm-id", "hsm-s"];
    if pkcs11 {
        init.extend([
            "--backend",
            "pkcs11",
            "--token-label",
            trustfab_test_support::softhsm::TOKEN_LABEL,
        ]);
    }
    if let Some(url) = ledger_url {
        init.extend(["--ledger-url", url]);
    }
    tf().programming_centre(dir, &init);
    tf().import_product(dir, "thermo", count, "p.pkg");
    for i in 0..STATIONS {
        let st = format!("st{i}");
        let id = format!("line-1.station-{i}");
        ok(dir, &["station", "init", "--dir", &st, "--station-id", &id]);
        let csr = format!("{st}/station.csr");
        ok(
            dir,
            &[
                "hsm",
                "certify-station",
                "--request",
                &csr,
                "--product",
                "acme/thermo",
                "--out",
                &st,
            ],
        );
    }
}

fn centre(dir: &Path, count: u64, ledger_url: Option<&str>) {
    centre_on(dir, count, ledger_url, false);
}

/// `hsm serve` on `listen`; returns the child (the caller kills and waits for it) and the
/// address it listens on.
#[allow(clippy::zombie_processes)]
fn serve(dir: &Path, listen: &str) -> (Child, String) {
    serve_with(dir, listen, &[])
}

/// [`serve`] with more flags.
#[allow(clippy::zombie_processes)]
fn serve_with(dir: &Path, listen: &str, more: &[&str]) -> (Child, String) {
    let mut args = vec!["hsm", "serve", "--listen", listen];
    args.extend_from_slice(more);
    let mut c = tf()
        .command(dir, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(c.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        if err.read_line(&mut line).unwrap() == 0 {
            c.kill().ok();
            c.wait().ok();
            panic!("hsm serve ended before listening");
        }
        if let Some(addr) = line.trim().split("https://").nth(1) {
            let addr = addr.to_owned();
            // Keep draining its standard error so that it never blocks on a full pipe.
            std::thread::spawn(move || {
                let mut sink = String::new();
                while err.read_line(&mut sink).is_ok_and(|n| n > 0) {
                    sink.clear();
                }
            });
            return (c, addr);
        }
    }
}

fn remote<'a>(url: &'a str, station: &'a str) -> [&'a str; 4] {
    ["--hsm", url, "--station", station]
}

fn spawn_station(dir: &Path, url: &str, station: &str, simulate: u64) -> Child {
    spawn_station_on(dir, "job-a.bin", url, station, simulate)
}

fn spawn_station_on(dir: &Path, job: &str, url: &str, station: &str, simulate: u64) -> Child {
    let n = simulate.to_string();
    let mut args = vec![
        "job",
        "run",
        job,
        "--simulate",
        &n,
        "--sockets",
        SOCKETS,
        "--json",
    ];
    args.extend(remote(url, station));
    tf().command(dir, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The ledger verifies (chain, checkpoints, counters, claims: a UID is claimed once) and the
/// product has issued at most `count`; returns what it has issued.
fn invariants(dir: &Path, count: u64) -> u64 {
    assert!(ok(dir, &["ledger", "verify"]).contains("ledger verified"));
    let (ordered, issued, remaining) = products(dir);
    assert_eq!(ordered, count);
    assert_eq!(ordered, issued + remaining);
    assert!(issued <= count);
    issued
}

/// The OEM's check of the signed report: exactly `count` certificates, none twice, within
/// the order.
fn audit(dir: &Path, count: u64) {
    audit_issued(dir, count, count);
}

/// [`audit`] for a product of `count` that has issued `issued`.
fn audit_issued(dir: &Path, count: u64, issued: u64) {
    let v = verified_report(dir);
    assert_eq!(number_after(&v, "certificates"), issued, "{v}");
    assert_eq!(products(dir), (count, issued, count - issued));
    // The report splits by station: every certificate was asked for by one of them.
    let by_station: Vec<u64> = v
        .lines()
        .filter_map(|l| l.trim().strip_prefix("by station"))
        .map(|l| {
            assert!(
                l.contains("line-1.station-"),
                "a certificate of no station: {l}"
            );
            number_after(l, ": ")
        })
        .collect();
    assert!(!by_station.is_empty(), "{v}");
    assert_eq!(by_station.iter().sum::<u64>(), issued, "{v}");
}

/// The stations `hsm stations` lists as active (it lists every certified one).
fn active_stations(dir: &Path) -> u64 {
    let out = ok(dir, &["hsm", "stations"]);
    assert_eq!(out.lines().count(), STATIONS + 1, "{out}");
    out.lines().filter(|l| l.contains("active")).count() as u64
}

fn eight_stations(ledger_url: Option<&str>) {
    let t = tempfile::tempdir().unwrap();
    eight_stations_in(t.path(), ledger_url, false);
}

fn eight_stations_in(d: &Path, ledger_url: Option<&str>, pkcs11: bool) {
    let count = 1024;
    centre_on(d, count, ledger_url, pkcs11);
    let (mut service, addr) = serve(d, "127.0.0.1:0");
    let url = format!("https://{addr}");
    create_remote(d, &url, "job-a", count);
    // Each station is offered the whole count: eight times more parts than certificates.
    let runs: Vec<_> = (0..STATIONS)
        .map(|i| spawn_station(d, &url, &format!("st{i}"), count))
        .collect();
    for r in runs {
        wait_done(r);
    }
    close_complete(d, &url, "job-a.bin", count, ("st3", "st5"));
    service.kill().ok();
    service.wait().ok();
    assert_eq!(invariants(d, count), count);
    audit(d, count);
    assert_eq!(active_stations(d), STATIONS as u64);
}

/// Eight station processes of 64 sockets each against one service on loopback, each offered
/// the product's whole count: the product ends with exactly its count.
#[test]
fn eight_stations_of_64_sockets_issue_exactly_the_count() {
    eight_stations(None);
}

#[test]
fn eight_stations_of_64_sockets_issue_exactly_the_count_on_postgres() {
    let db = trustfab_test_support::pg::FreshDatabase::new();
    eight_stations(Some(db.url()));
}

/// The same on SoftHSM2 through PKCS#11: the station CA, the service's TLS key, the product
/// key and the anchor in the token, a pool of its sessions in the service.
#[test]
fn eight_stations_of_64_sockets_issue_exactly_the_count_on_softhsm2() {
    let t = tempfile::tempdir().unwrap();
    let _softhsm = trustfab_test_support::softhsm::SoftHsm2::new(t.path());
    common::use_passphrase(trustfab_test_support::softhsm::PIN);
    eight_stations_in(t.path(), None, true);
}

/// A small deterministic generator for the kill moments (no dependency for one test).
struct Moments(u64);

impl Moments {
    fn next_ms(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo)
    }
}

/// Creates job `job` of `quantity` through the service as station `st0`.
fn create_remote(dir: &Path, url: &str, job: &str, quantity: u64) {
    let q = quantity.to_string();
    let out = format!("{job}.bin");
    let create = [
        "job",
        "create",
        "--product",
        "acme/thermo",
        "--quantity",
        &q,
        "--job-id",
        job,
        "--out",
        &out,
    ];
    as_station(dir, url, "st0", &create);
}

/// `trustfab ARGS --hsm URL --station STATION`, asserted to succeed.
fn as_station(dir: &Path, url: &str, station: &str, args: &[&str]) -> String {
    let mut args = args.to_vec();
    args.extend(remote(url, station));
    ok(dir, &args)
}

/// The job in `file` has `quantity` certificates (as station `by.0` reads its status), and
/// station `by.1` closes it.
fn close_complete(dir: &Path, url: &str, file: &str, quantity: u64, by: (&str, &str)) {
    let s = as_station(dir, url, by.0, &["job", "status", file]);
    assert_eq!(number_after(&s, "issued"), quantity, "{s}");
    as_station(dir, url, by.1, &["job", "close", file]);
}

/// The service SIGKILLed at random moments while eight stations run, and restarted on the same
/// address each time, until 20 kills have hit running stations (a round of stations that ends
/// first is followed by another job's round): after every kill the ledger verifies and the
/// count holds; at the end every job has exactly its quantity, no UID two certificates.
#[test]
fn the_service_killed_20_times_during_a_run_loses_nothing() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let (quantity, rounds_max) = (512u64, 8u64);
    let count = quantity * rounds_max;
    centre(d, count, None);
    let (mut service, addr) = serve(d, "127.0.0.1:0");
    let url = format!("https://{addr}");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |t| {
            u64::try_from(t.as_nanos() & u128::from(u64::MAX)).unwrap_or(1) | 1
        });
    eprintln!("kill moments seed {seed}");
    let mut moments = Moments(seed);
    let start_round = |round: u64| -> Vec<Child> {
        let job = format!("job-{round}");
        create_remote(d, &url, &job, quantity);
        let file = format!("{job}.bin");
        (0..STATIONS)
            .map(|i| spawn_station_on(d, &file, &url, &format!("st{i}"), quantity))
            .collect()
    };
    let mut rounds = 1;
    let mut runs = start_round(0);
    let (mut kills, mut during_run, mut issued_before) = (0, 0, 0);
    while during_run < 20 {
        std::thread::sleep(Duration::from_millis(moments.next_ms(100, 700)));
        let running = runs
            .iter_mut()
            .any(|r| r.try_wait().ok().flatten().is_none());
        service.kill().unwrap();
        service.wait().unwrap();
        kills += 1;
        if running {
            during_run += 1;
        }
        let issued = invariants(d, count);
        assert!(
            issued >= issued_before,
            "issued went down: {issued} < {issued_before}"
        );
        issued_before = issued;
        let (s, _) = serve(d, &addr);
        service = s;
        if !running && during_run < 20 {
            for r in runs.drain(..) {
                wait_done(r);
            }
            assert!(
                rounds < rounds_max,
                "{rounds} rounds and only {during_run} kills hit them"
            );
            runs = start_round(rounds);
            rounds += 1;
        }
    }
    for r in runs {
        wait_done(r);
    }
    for round in 0..rounds {
        let file = format!("job-{round}.bin");
        // A last run picks up any device a kill left between its certificate and its outcome.
        wait_done(spawn_station_on(d, &file, &url, "st1", quantity));
        close_complete(d, &url, &file, quantity, ("st2", "st2"));
    }
    service.kill().ok();
    service.wait().ok();
    eprintln!("{kills} kills, {during_run} while stations ran, {rounds} rounds");
    assert_eq!(invariants(d, count), quantity * rounds);
    audit_issued(d, count, quantity * rounds);
}

/// Decrypts the PKCS#8 key in `src` (under this suite's passphrase) to an unencrypted PEM in
/// `dst`, with openssl: what a browser is given with the operator's certificate.
fn plain_key(dir: &Path, src: &str, dst: &str) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args([
            "pkey",
            "-in",
            src,
            "-passin",
            "env:TRUSTFAB_PASSPHRASE",
            "-out",
            dst,
        ])
        .env("TRUSTFAB_PASSPHRASE", common::PASS)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The operator's console in headless chromium (Playwright, `tests/browser/console.mjs`) while
/// a station process runs a job of 2,000 simulated devices through the service: the page shows
/// the job's progress rise to 2,000 good and the product's remaining count fall by exactly
/// that; a station's certificate and no certificate get no page. The screenshot is kept in
/// `target/console.png`.
#[test]
fn the_console_in_chromium_follows_a_job_of_2000_to_the_end() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    centre(d, 5000, None);
    ok(
        d,
        &["operator", "ca", "--dir", "ops", "--center-id", "center-1"],
    );
    ok(
        d,
        &[
            "operator",
            "certify",
            "--ca",
            "ops",
            "--name",
            "alice",
            "--service-ca",
            "hsm/station-ca.pem",
            "--out",
            "alice",
        ],
    );
    plain_key(d, "alice/operator.key", "alice/key.pem");
    plain_key(d, "st1/station.key", "st1/key.pem");
    let (_, _, remaining_before) = products(d);
    let (mut service, addr) =
        serve_with(d, "127.0.0.1:0", &["--operator-ca", "ops/operator-ca.pem"]);
    let url = format!("https://{addr}");
    create_remote(d, &url, "job-c", 2000);

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let shot = root.join("target/console.png");
    let _ = std::fs::remove_file(&shot);
    let cfg = serde_json::json!({
        "url": url,
        "operator": {"cert": d.join("alice/operator.pem"), "key": d.join("alice/key.pem")},
        "station": {"cert": d.join("st1/station.pem"), "key": d.join("st1/key.pem")},
        "job": "job-c",
        "quantity": 2000,
        "product": "acme/thermo",
        "remainingBefore": remaining_before,
        "screenshot": shot,
        "timeoutMs": 600_000,
    });
    std::fs::write(d.join("browser.json"), cfg.to_string()).unwrap();
    let browser = std::process::Command::new("node")
        .arg(root.join("tests/browser/console.mjs"))
        .arg(d.join("browser.json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The terminal's view of the same job: `job status --watch`, as station st1.
    let mut args = vec!["job", "status", "job-c.bin", "--watch", "--interval", "0.3"];
    args.extend(remote(&url, "st1"));
    let watcher = tf()
        .command(d, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The page is open before the job runs, so that it sees the progress rise.
    std::thread::sleep(Duration::from_secs(5));
    let station = spawn_station_on(d, "job-c.bin", &url, "st0", 2000);
    let run = wait_done(station);
    let watched = watcher.wait_with_output().unwrap();
    let out = browser.wait_with_output().unwrap();
    service.kill().ok();
    service.wait().ok();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the browser test failed:\n{said}\nstation: {run}"
    );
    for expected in [
        "station certificate: 403 operator_certificate",
        "no certificate: handshake refused",
        "job job-c: progress seen at",
        &format!(
            "remaining {remaining_before} -> {}",
            remaining_before - 2000
        ),
    ] {
        assert!(said.contains(expected), "{expected:?} missing:\n{said}");
    }
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");

    // The watch ended by itself once the job had its 2,000, having seen it on the way: its
    // good count rose through values between 0 and 2,000, never fell, and ended at 2,000.
    let text = String::from_utf8_lossy(&watched.stdout);
    assert!(
        watched.status.success(),
        "job status --watch failed: {text}{}",
        String::from_utf8_lossy(&watched.stderr)
    );
    let goods: Vec<u64> = text
        .lines()
        .filter_map(|l| {
            l.split_once("/2000 good")?
                .0
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(goods.windows(2).all(|w| w[0] <= w[1]), "{text}");
    assert_eq!(goods.last(), Some(&2000), "{text}");
    assert!(goods.iter().any(|g| (1..2000).contains(g)), "{text}");
    assert!(text.contains("job job-c: 2000 of 2000 good"), "{text}");
}
