//! Architecture invariant of the ledger, checked on its source: every SQL statement the crate
//! can run (every string literal in `src/` of this crate and of its backend crates) is append-only and plain — no `UPDATE`, no
//! `DELETE`, no triggers, no stored procedures, no advisory locks, no `SKIP LOCKED`.

use std::path::Path;

/// The string literals of a Rust source file, outside `//` comments (good enough for this
/// crate's sources, which have no raw strings).
fn string_literals(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '\'' => {
                // A char literal such as '"' (a lifetime loses one harmless character).
                if chars.peek() == Some(&'\\') {
                    chars.next();
                }
                chars.next();
                if chars.peek() == Some(&'\'') {
                    chars.next();
                }
            }
            '"' => {
                let mut lit = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            // A line continuation joins lines with nothing; keep a space.
                            if chars.next() == Some('\n') {
                                lit.push(' ');
                            }
                        }
                        '"' => break,
                        c => lit.push(c),
                    }
                }
                out.push(lit);
            }
            _ => {}
        }
    }
    out
}

/// Every string literal of the ledger and of its two backend crates (where the SQL is).
fn all_sql_literals() -> Vec<(String, String)> {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = Vec::new();
    for krate in ["ledger", "ledger-sqlite", "ledger-postgres"] {
        for entry in std::fs::read_dir(crates.join(krate).join("src")).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for lit in string_literals(&text) {
                out.push((path.display().to_string(), lit));
            }
        }
    }
    out
}

#[test]
fn ledger_sql_is_append_only_and_plain() {
    let lits = all_sql_literals();
    // The scan sees the statements it must judge (so this test can fail).
    assert!(lits.iter().any(|(_, l)| l.contains("INSERT INTO records")));
    assert!(lits
        .iter()
        .any(|(_, l)| l.contains("CREATE TABLE counter_events")));
    for (file, lit) in &lits {
        let upper = lit.to_uppercase();
        for banned in [
            "UPDATE ",
            "DELETE ",
            "TRIGGER",
            "PLPGSQL",
            "$$",
            "ADVISORY",
            "SKIP LOCKED",
            "TRUNCATE",
            "DROP ",
            "REPLACE INTO",
            "ON CONFLICT",
        ] {
            assert!(
                !upper.contains(banned),
                "{file}: {banned:?} in a statement: {lit}"
            );
        }
    }
}
