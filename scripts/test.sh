#!/usr/bin/env bash
# The test command: installs what the tests need beyond cargo (idempotently), then runs every
# check CI runs. Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# --- external validators and peers -----------------------------------------------------------
apt_missing=()
command -v openssl >/dev/null 2>&1 || apt_missing+=(openssl)
# SoftHSM2: the PKCS#11 token the trustfab-token-pkcs11 tests and bench create in temp dirs.
command -v softhsm2-util >/dev/null 2>&1 || apt_missing+=(softhsm2)
# OpenSC's pkcs11-tool: an independent PKCS#11 client the token tests check attributes with.
command -v pkcs11-tool >/dev/null 2>&1 || apt_missing+=(opensc)
# PostgreSQL: the trustfab-ledger tests create a fresh database per test on 127.0.0.1:5432.
command -v pg_isready >/dev/null 2>&1 || apt_missing+=(postgresql)
# Debian's chromium and Node.js: the console's browser test drives the page with Playwright.
[[ -x /usr/bin/chromium ]] || apt_missing+=(chromium)
command -v node >/dev/null 2>&1 || apt_missing+=(nodejs)
command -v npm >/dev/null 2>&1 || apt_missing+=(npm)
if ((${#apt_missing[@]})); then
    echo "installing ${apt_missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi

# pkilint (RFC 5280 linter) for the certificate lint tests.
if ! python3 -c 'import pkilint' >/dev/null 2>&1; then
    echo "installing pkilint"
    python3 -m pip install -q pkilint==0.13.3
fi

# MCUboot's imgtool: the firmware interop tests sign and verify images with it both ways.
if ! command -v imgtool >/dev/null 2>&1; then
    echo "installing imgtool"
    python3 -m pip install -q imgtool==2.5.0
fi

# playwright-core (the browser driver only: the browser is Debian's chromium), from the lock.
if [[ ! -f tests/browser/node_modules/playwright-core/package.json ]]; then
    echo "installing playwright-core"
    npm ci --prefix tests/browser --no-audit --no-fund --silent
fi

# Start the local PostgreSQL cluster if it is not accepting connections (the ledger tests fail,
# never skip, without it; TRUSTFAB_TEST_PG points them elsewhere).
if [[ -z "${TRUSTFAB_TEST_PG:-}" ]] && ! pg_isready -q -h 127.0.0.1; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi

# --- checks, cheapest first ------------------------------------------------------------------
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps --locked --quiet
