//! The production count under concurrency, the way an attacker at the programming center tries
//! it: many `trustfab job run` processes of one job, a `job close` while a run still issues,
//! and many jobs of one product at once, on SQLite and on PostgreSQL. In every case the
//! certificates in the ledger are the units spent, never more than the count, and `hsm
//! products`, the ledger and the verified report agree.
//!
//! Also: a programming center's HSM directory written by the earlier release (its ledger kept
//! each job's reservation in the product's counter) still verifies, reports and closes.

// Fixtures outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use trustfab_test_support::cli::Trustfab;

mod common;
use common::{number_after, ok, products, tf, verified_report, wait_done, wait_for};

/// A programming centre in `dir` (on `ledger_url` when given) with `acme/thermo` of `count`
/// imported from `p.pkg`.
fn centre(dir: &Path, count: u64, ledger_url: Option<&str>) {
    let mut init = vec!["--hsm-id", "hsm-c"];
    if let Some(url) = ledger_url {
        init.extend(["--ledger-url", url]);
    }
    tf().programming_centre(dir, &init);
    tf().import_product(dir, "thermo", count, "p.pkg");
}

fn create(dir: &Path, job: &str, quantity: u64) {
    let q = quantity.to_string();
    let out = format!("{job}.bin");
    ok(
        dir,
        &[
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
        ],
    );
}

fn spawn_run(dir: &Path, job: &str, simulate: u64) -> Child {
    let file = format!("{job}.bin");
    let n = simulate.to_string();
    tf().command(
        dir,
        &[
            "job",
            "run",
            &file,
            "--simulate",
            &n,
            "--sockets",
            "2",
            "--json",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

fn wait_ok(c: Child) -> String {
    wait_for(c, &[0])
}

/// The ledger verifies, the report verifies at the OEM, and its certificates are the units the
/// product spent; returns that number.
fn audit(dir: &Path, count: u64) -> u64 {
    assert!(ok(dir, &["ledger", "verify"]).contains("ledger verified"));
    let v = verified_report(dir);
    let certificates = number_after(&v, "certificates");
    let issued = number_after(&v, ", issued");
    let (ordered, spent, remaining) = products(dir);
    assert_eq!(ordered, count);
    assert_eq!(spent, issued, "hsm products and the report disagree:\n{v}");
    assert_eq!(ordered, spent + remaining);
    assert!(certificates <= count, "over the count:\n{v}");
    certificates
}

fn eight_runs_of_one_job(ledger_url: Option<&str>) {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    centre(d, 200, ledger_url);
    create(d, "job-a", 200);
    let runs: Vec<_> = (0..8).map(|_| spawn_run(d, "job-a", 200)).collect();
    for r in runs {
        wait_done(r);
    }
    let status = ok(d, &["job", "status", "job-a.bin"]);
    assert_eq!(number_after(&status, "issued"), 200, "{status}");
    ok(d, &["job", "close", "job-a.bin"]);
    assert_eq!(audit(d, 200), 200);
    assert_eq!(products(d), (200, 200, 0));
}

/// Eight stations run the same job of 200 at once, each with 200 parts of its own: the job
/// ends with exactly 200 certificates (the earlier release issued 536 here).
#[test]
fn eight_runs_of_one_job_issue_exactly_its_quantity() {
    eight_runs_of_one_job(None);
}

#[test]
fn eight_runs_of_one_job_issue_exactly_its_quantity_on_postgres() {
    let db = trustfab_test_support::pg::FreshDatabase::new();
    eight_runs_of_one_job(Some(db.url()));
}

fn eight_jobs_of_one_product(ledger_url: Option<&str>) {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    centre(d, 400, ledger_url);
    for i in 0..8 {
        create(d, &format!("job-{i}"), 50);
    }
    let runs: Vec<_> = (0..8)
        .map(|i| spawn_run(d, &format!("job-{i}"), 60))
        .collect();
    for r in runs {
        wait_ok(r);
    }
    for i in 0..8 {
        let status = ok(d, &["job", "status", &format!("job-{i}.bin")]);
        assert_eq!(number_after(&status, "issued"), 50, "{status}");
        ok(d, &["job", "close", &format!("job-{i}.bin")]);
    }
    assert_eq!(audit(d, 400), 400);
    assert_eq!(products(d), (400, 400, 0));
}

/// Eight jobs of 50 of one product of 400, run at once: 400 certificates, no more.
#[test]
fn eight_jobs_of_one_product_run_at_once_stay_within_the_count() {
    eight_jobs_of_one_product(None);
}

#[test]
fn eight_jobs_of_one_product_run_at_once_stay_within_the_count_on_postgres() {
    let db = trustfab_test_support::pg::FreshDatabase::new();
    eight_jobs_of_one_product(Some(db.url()));
}

/// `job close` while a run of the job still issues, then a job for what `hsm products` says is
/// left, run to the end: the product never has more certificates than its count (the earlier
/// release issued 3,687 of 2,000 here).
#[test]
fn a_close_during_a_run_then_a_job_for_the_rest_stays_within_the_count() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    centre(d, 1000, None);
    create(d, "job-a", 1000);
    let run = spawn_run(d, "job-a", 1000);
    // Close once the run is under way.
    let start = Instant::now();
    loop {
        let status = ok(d, &["job", "status", "job-a.bin"]);
        if number_after(&status, "issued") >= 50 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the run does not issue"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let closed = ok(d, &["job", "close", "job-a.bin"]);
    // The run ends by itself: the HSM refuses every further issuance of the closed job.
    let out = String::from_utf8_lossy(&run.wait_with_output().unwrap().stdout).into_owned();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["complete"], false, "{out}");
    let first = audit(d, 1000);
    assert!(first < 1000, "the close landed after the run: {closed}");
    let (_, _, left) = products(d);
    assert_eq!(
        left,
        1000 - first,
        "the close credited back exactly the rest"
    );

    create(d, "job-b", left);
    wait_ok(spawn_run(d, "job-b", left));
    ok(d, &["job", "close", "job-b.bin"]);
    assert_eq!(audit(d, 1000), 1000);
    assert_eq!(products(d), (1000, 1000, 0));
}

/// The HSM directory an earlier release wrote (in `tests/fixtures/release-0.1`): a product of
/// 100, one job closed (8 certificates), one job of 20 left open with 5 certificates, and a
/// signed checkpoint. Its ledger verifies, its open job is refused for issuance with a clear
/// word and closes with that release's accounting, and the report still verifies at the OEM.
#[test]
fn a_ledger_of_the_earlier_release_verifies_reports_and_closes() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/release-0.1");
    std::fs::create_dir(d.join("hsm")).unwrap();
    for f in ["hsm.toml", "identity.pem", "ledger.sqlite", "token"] {
        std::fs::copy(fixture.join("hsm").join(f), d.join("hsm").join(f)).unwrap();
    }
    for f in ["old-open.bin", "thermostat.package", "vendor-root.pem"] {
        std::fs::copy(fixture.join(f), d.join(f)).unwrap();
    }
    let old = Trustfab::new(
        env!("CARGO_BIN_EXE_trustfab"),
        "fixture passphrase of an earlier release",
    );
    let v = old.ok(d, &["ledger", "verify"]);
    assert!(v.contains("ledger verified"), "{v}");
    assert!(v.contains("signed checkpoints"), "{v}");
    let p = old.ok(d, &["hsm", "products"]);
    assert!(p.contains("acme/thermostat"), "{p}");
    assert!(p.contains("100         28         72"), "{p}");

    let e = old.fails(d, &["job", "run", "old-open.bin", "--simulate", "3"]);
    assert!(e.contains("created by an earlier release"), "{e}");
    let c = old.ok(d, &["job", "close", "old-open.bin"]);
    assert!(c.contains("5 issued"), "{c}");
    assert!(c.contains("15 credited back"), "{c}");
    let p = old.ok(d, &["hsm", "products"]);
    assert!(p.contains("100         13         87"), "{p}");

    old.ok(
        d,
        &[
            "hsm",
            "report",
            "--product",
            "acme/thermostat",
            "--out",
            "r.report",
        ],
    );
    let v = old.ok(
        d,
        &[
            "oem",
            "verify-report",
            "r.report",
            "--order",
            "thermostat.package",
            "--vendor-root",
            "vendor-root.pem",
        ],
    );
    assert!(v.contains("13 issued and valid"), "{v}");
    // A new job on the old ledger runs as any other.
    let q = old.ok(
        d,
        &[
            "job",
            "create",
            "--product",
            "acme/thermostat",
            "--quantity",
            "4",
            "--job-id",
            "new-job",
            "--out",
            "new.bin",
        ],
    );
    assert!(q.contains("4 devices reserved"), "{q}");
    let r = old.ok(d, &["job", "run", "new.bin", "--close"]);
    assert!(r.contains("4 of 4 good"), "{r}");
    assert!(old.ok(d, &["ledger", "verify"]).contains("ledger verified"));
}

/// `job run`'s exit status is what a line controller scripts on: 3 while the job is incomplete
/// (and `--close` says why it did not close), 0 once it has its quantity (and `--close`
/// closes it), 4 for a job the HSM refuses (here: closed).
#[test]
fn job_run_exit_status_says_complete_incomplete_or_refused() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    centre(d, 10, None);
    create(d, "j1", 5);
    let run = |n: &str| {
        tf().run(
            d,
            &[
                "job",
                "run",
                "j1.bin",
                "--simulate",
                n,
                "--sockets",
                "2",
                "--close",
            ],
        )
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();

    let short = run("3");
    assert_eq!(short.status.code(), Some(3), "{}", text(&short.stderr));
    assert!(
        text(&short.stdout).contains("not closed: the job has 3 of 5 good"),
        "{}",
        text(&short.stdout)
    );
    assert!(
        text(&short.stderr).contains("job j1 is incomplete: 3 of 5 good"),
        "{}",
        text(&short.stderr)
    );
    assert!(ok(d, &["job", "status", "j1.bin"]).contains("good      3"));

    let rest = run("2");
    assert_eq!(rest.status.code(), Some(0), "{}", text(&rest.stderr));
    assert!(
        text(&rest.stdout).contains("closed: 0 credited back"),
        "{}",
        text(&rest.stdout)
    );

    let again = run("1");
    assert_eq!(again.status.code(), Some(4), "{}", text(&again.stderr));
    assert!(
        text(&again.stderr).contains("closed"),
        "{}",
        text(&again.stderr)
    );
}

/// Parts a first job provisioned, given to a second job of the product: they are reported as
/// the first job's, neither good nor failed for the second, which stays incomplete (exit 3),
/// with the summary, the JSON and `job status` agreeing.
#[test]
fn parts_of_another_job_are_not_good_for_this_one() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    centre(d, 10, None);
    std::fs::create_dir(d.join("parts")).unwrap();
    for i in 0..3 {
        let out = format!("parts/se-{i}.dev");
        ok(d, &["device", "new", "--kind", "se", "--out", &out]);
    }
    create(d, "first", 3);
    ok(
        d,
        &["job", "run", "first.bin", "--parts", "parts", "--close"],
    );

    create(d, "second", 3);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let run = tf().run(d, &["job", "run", "second.bin", "--parts", "parts"]);
    assert_eq!(run.status.code(), Some(3), "{}", text(&run.stderr));
    let out = text(&run.stdout);
    assert!(out.contains("0 of 3 good"), "{out}");
    assert!(
        out.contains("3 parts left as they are, provisioned by another job"),
        "{out}"
    );
    assert_eq!(
        out.matches("already provisioned by job first").count(),
        3,
        "{out}"
    );

    let json = tf().run(
        d,
        &["job", "run", "second.bin", "--parts", "parts", "--json"],
    );
    assert_eq!(json.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["complete"], false, "{v}");
    assert_eq!(v["good"], 0, "{v}");
    assert_eq!(
        v["provisioned_elsewhere"].as_array().map(Vec::len),
        Some(3),
        "{v}"
    );
    assert_eq!(v["provisioned_elsewhere"][0]["job"], "first", "{v}");

    let status = ok(d, &["job", "status", "second.bin"]);
    assert_eq!(number_after(&status, "good"), 0, "{status}");
    assert_eq!(number_after(&status, "issued"), 0, "{status}");
}
