//! Template parsing, refusals (each with its line and field) and rendering.

use proptest::prelude::*;
use trustfab_types::{DeviceUid, OemId, ProductId, Serial};

use super::*;

fn inputs<'a>(
    oem: &'a OemId,
    product: &'a ProductId,
    uid: &'a DeviceUid,
    serial: &'a Serial,
) -> RenderInputs<'a> {
    RenderInputs {
        oem,
        product,
        uid,
        serial,
    }
}

fn refuse(text: &str) -> TemplateError {
    match Template::from_toml(text) {
        Ok(t) => panic!("template was accepted: {t:?}"),
        Err(e) => e,
    }
}

const MINIMAL: &str = r#"version = 1
[subject]
common_name = "{uid}"
[validity]
days = 365
[extensions]
key_usage = ["digital_signature"]
[serial]
scheme = "random"
"#;

#[test]
fn example_template_parses() {
    let t = Template::from_toml(EXAMPLE_TEMPLATE).unwrap();
    assert_eq!(t.validity, Validity::NoExpiry);
    assert_eq!(t.serial, SerialScheme::Random { bits: 64 });
    assert_eq!(t.subject.len(), 5);
    assert!(t.hardware_module_name.is_some());
    assert_eq!(
        t.extended_key_usage,
        vec![
            Eku::ClientAuth,
            Eku::Other(vec![1, 3, 6, 1, 4, 1, 55555, 1, 1])
        ]
    );
}

#[test]
fn minimal_template_parses() {
    let t = Template::from_toml(MINIMAL).unwrap();
    assert_eq!(t.validity, Validity::Days(365));
    assert!(t.extended_key_usage.is_empty());
}

#[test]
fn unknown_key_is_refused_with_line_and_table() {
    let text = MINIMAL.replace("[extensions]\n", "[extensions]\nfoo = 1\n");
    let e = refuse(&text);
    assert_eq!(e.line, 7, "{e}");
    assert_eq!(e.field, "[extensions].foo", "{e}");
    assert!(e.message.contains("unknown field `foo`"), "{e}");
}

#[test]
fn unknown_top_level_table_is_refused() {
    let e = refuse(&format!("{MINIMAL}[policy]\nx = 1\n"));
    assert!(e.message.contains("unknown field `policy`"), "{e}");
    assert_eq!(e.line, 10, "{e}");
}

#[test]
fn unknown_key_usage_value_names_the_field() {
    let e = refuse(&MINIMAL.replace("\"digital_signature\"", "\"sign\""));
    assert_eq!(e.field, "[extensions].key_usage", "{e}");
    assert_eq!(e.line, 7, "{e}");
    assert!(e.message.contains("unknown variant `sign`"), "{e}");
    assert_eq!(
        e.to_string()
            .lines()
            .next()
            .unwrap()
            .split(':')
            .next()
            .unwrap(),
        "line 7, [extensions].key_usage"
    );
}

#[test]
fn unknown_placeholder_is_refused() {
    let e = refuse(&MINIMAL.replace("\"{uid}\"", "\"{mac}\""));
    assert_eq!(e.field, "[subject].common_name");
    assert_eq!(e.line, 3);
    assert!(e.message.contains("unknown placeholder {mac}"), "{e}");
}

#[test]
fn unbalanced_braces_are_refused() {
    assert!(refuse(&MINIMAL.replace("\"{uid}\"", "\"{uid\""))
        .message
        .contains("unclosed"));
    assert!(refuse(&MINIMAL.replace("\"{uid}\"", "\"uid}\""))
        .message
        .contains("unmatched"));
}

#[test]
fn ca_true_device_certificate_is_refused() {
    let text = MINIMAL.replace(
        "key_usage = [\"digital_signature\"]",
        "key_usage = [\"digital_signature\"]\nbasic_constraints = { ca = true }",
    );
    let e = refuse(&text);
    assert_eq!(e.field, "[extensions].basic_constraints.ca");
    assert_eq!(e.line, 8);
    assert!(e.message.contains("CA:false"));
}

#[test]
fn ca_key_usages_are_refused() {
    let e = refuse(&MINIMAL.replace(
        "\"digital_signature\"",
        "\"digital_signature\", \"key_cert_sign\"",
    ));
    assert_eq!(e.field, "[extensions].key_usage");
    assert!(e.message.contains("CA usages"));
}

#[test]
fn empty_subject_is_refused() {
    let e = refuse(&MINIMAL.replace("common_name = \"{uid}\"\n", ""));
    assert_eq!(e.field, "[subject]");
    assert!(e.message.contains("is empty"), "{e}");
    let e = refuse(&MINIMAL.replace("[subject]\ncommon_name = \"{uid}\"\n", ""));
    assert_eq!(e.field, "[subject]");
    assert!(e.message.contains("missing"), "{e}");
    let e = refuse(&MINIMAL.replace("\"{uid}\"", "\"\""));
    assert_eq!(e.field, "[subject].common_name");
}

#[test]
fn empty_key_usage_is_refused() {
    let e = refuse(&MINIMAL.replace("[\"digital_signature\"]", "[]"));
    assert_eq!(e.field, "[extensions].key_usage");
}

#[test]
fn unknown_version_is_refused() {
    let e = refuse(&MINIMAL.replace("version = 1", "version = 2"));
    assert_eq!(e.field, "version");
    assert!(e.message.contains("unknown template version 2"));
}

#[test]
fn validity_needs_exactly_one_form() {
    let both = MINIMAL.replace("days = 365", "days = 365\nno_expiry = true");
    assert!(refuse(&both).message.contains("not both"));
    let none = MINIMAL.replace("days = 365", "");
    assert_eq!(refuse(&none).field, "[validity]");
    let zero = MINIMAL.replace("days = 365", "days = 0");
    assert_eq!(refuse(&zero).field, "[validity].days");
    let no = MINIMAL.replace("days = 365", "no_expiry = false");
    assert_eq!(refuse(&no).field, "[validity].no_expiry");
}

#[test]
fn serial_scheme_is_checked() {
    let bits = MINIMAL.replace("scheme = \"random\"", "scheme = \"random\"\nbits = 32");
    assert_eq!(refuse(&bits).field, "[serial].bits");
    let seq = MINIMAL.replace(
        "scheme = \"random\"",
        "scheme = \"sequential\"\nfirst = 10\nlast = 5",
    );
    assert_eq!(refuse(&seq).field, "[serial]");
    let seq = MINIMAL.replace(
        "scheme = \"random\"",
        "scheme = \"sequential\"\nfirst = 10\nlast = 20",
    );
    let t = Template::from_toml(&seq).unwrap();
    assert_eq!(t.serial.sequential_serial(0).unwrap().to_u64(), Some(10));
    assert_eq!(t.serial.sequential_serial(10).unwrap().to_u64(), Some(20));
    assert!(t.serial.sequential_serial(11).is_err());
    assert!(t.serial.admits(&Serial::from_u64(21).unwrap()).is_err());
    let unknown = MINIMAL.replace("scheme = \"random\"", "scheme = \"counter\"");
    assert_eq!(refuse(&unknown).field, "[serial].scheme");
}

#[test]
fn literal_values_are_checked_at_parse_time() {
    let c = MINIMAL.replace("[subject]\n", "[subject]\ncountry = \"USA\"\n");
    let e = refuse(&c);
    assert_eq!(e.field, "[subject].country");
    assert!(e.message.contains("RFC 5280 allows at most 2"), "{e}");
    let cn = MINIMAL.replace("\"{uid}\"", &format!("\"{}\"", "x".repeat(65)));
    assert!(refuse(&cn).message.contains("at most 64"));
    let sn = MINIMAL.replace("common_name = \"{uid}\"", "serial_number = \"a_b\"");
    assert!(refuse(&sn).message.contains("PrintableString"));
    let uri = format!("{MINIMAL}[subject_alt_name]\nuri = [\"no scheme\"]\n");
    assert_eq!(refuse(&uri).field, "[subject_alt_name].uri");
    let dns = format!("{MINIMAL}[subject_alt_name]\ndns = [\"-bad-.example\"]\n");
    assert_eq!(refuse(&dns).field, "[subject_alt_name].dns");
    let oid = format!(
        "{MINIMAL}[subject_alt_name]\nhardware_module_name = {{ hw_type = \"1.x\", hw_serial = \"{{uid}}\" }}\n"
    );
    assert_eq!(
        refuse(&oid).field,
        "[subject_alt_name].hardware_module_name.hw_type"
    );
    let eku = MINIMAL.replace(
        "key_usage = [\"digital_signature\"]",
        "key_usage = [\"digital_signature\"]\nextended_key_usage = [\"email\"]",
    );
    assert_eq!(refuse(&eku).field, "[extensions].extended_key_usage");
}

#[test]
fn oversized_template_is_refused() {
    let big = format!("{MINIMAL}#{}\n", "x".repeat(limits::TEMPLATE_BYTES));
    assert!(refuse(&big).message.contains("the limit is"));
}

#[test]
fn every_placeholder_renders() {
    let p = Pattern::parse("{oem}/{product}/{uid}/{serial}/{{uid}}").unwrap();
    let (o, pr, u, s) = (
        OemId::new("acme").unwrap(),
        ProductId::new("thermo-2").unwrap(),
        DeviceUid::new(&[0x01, 0xab]).unwrap(),
        Serial::from_u64(0x1f).unwrap(),
    );
    assert_eq!(
        p.render(&inputs(&o, &pr, &u, &s)),
        "acme/thermo-2/01ab/1f/{uid}"
    );
    assert_eq!(
        p.vars().collect::<Vec<_>>(),
        vec![Var::Oem, Var::Product, Var::Uid, Var::Serial]
    );
}

#[test]
fn rendered_values_over_the_rfc5280_bound_are_refused() {
    // 32-byte uid = 64 hex characters, plus a prefix: over ub-common-name.
    let t = Template::from_toml(&MINIMAL.replace("\"{uid}\"", "\"dev-{uid}\"")).unwrap();
    let (o, pr, s) = (
        OemId::new("acme").unwrap(),
        ProductId::new("p").unwrap(),
        Serial::from_u64(1).unwrap(),
    );
    let uid = DeviceUid::new(&[7; 32]).unwrap();
    match t.render(&inputs(&o, &pr, &uid, &s)) {
        Err(Error::Render { field, problem }) => {
            assert_eq!(field, "[subject].common_name");
            assert!(problem.contains("68 characters"), "{problem}");
        }
        other => panic!("{other:?}"),
    }
    let uid = DeviceUid::new(&[7; 29]).unwrap();
    assert!(t.render(&inputs(&o, &pr, &uid, &s)).is_ok());
}

#[test]
fn random_serials_are_positive_and_bounded() {
    let s = SerialScheme::Random { bits: 152 };
    for _ in 0..200 {
        let n = s.random_serial(&trustfab_types::OsRng).unwrap();
        assert!(n.as_be_bytes().len() <= 19);
    }
    let s = SerialScheme::Random { bits: 64 };
    let a = s.random_serial(&trustfab_types::OsRng).unwrap();
    let b = s.random_serial(&trustfab_types::OsRng).unwrap();
    assert_ne!(a, b);
}

proptest! {
    /// Any text without braces is a literal that renders to itself.
    #[test]
    fn brace_free_text_is_literal(s in "[^{}]{0,80}") {
        let p = Pattern::parse(&s).unwrap();
        prop_assert!(p.is_literal());
        let (o, pr, u, n) = (
            OemId::new("o").unwrap(), ProductId::new("p").unwrap(),
            DeviceUid::new(&[1]).unwrap(), Serial::from_u64(1).unwrap(),
        );
        prop_assert_eq!(p.render(&inputs(&o, &pr, &u, &n)), s);
    }

    /// Escaped braces always render as single braces, whatever surrounds them.
    #[test]
    fn escapes_round_trip(parts in proptest::collection::vec("[a-z ]{0,5}", 1..6)) {
        let escaped = parts.join("{{}}");
        let p = Pattern::parse(&escaped).unwrap();
        let (o, pr, u, n) = (
            OemId::new("o").unwrap(), ProductId::new("p").unwrap(),
            DeviceUid::new(&[1]).unwrap(), Serial::from_u64(1).unwrap(),
        );
        prop_assert_eq!(p.render(&inputs(&o, &pr, &u, &n)), parts.join("{}"));
    }

    /// A uid placeholder renders to the uid's hex for every uid; the subject stays within bounds
    /// exactly when the rendered length does.
    #[test]
    fn uid_renders_as_hex(uid in proptest::collection::vec(any::<u8>(), 1..=32)) {
        let t = Template::from_toml(MINIMAL).unwrap();
        let (o, pr, n) = (OemId::new("o").unwrap(), ProductId::new("p").unwrap(), Serial::from_u64(9).unwrap());
        let u = DeviceUid::new(&uid).unwrap();
        let r = t.render(&inputs(&o, &pr, &u, &n)).unwrap();
        prop_assert_eq!(&r.subject[0].1, &hex::encode(&uid));
    }

    /// Arbitrary text never panics the parser: it is accepted or refused with a line in range.
    #[test]
    fn parser_never_panics(text in "\\PC{0,400}") {
        if let Err(e) = Template::from_toml(&text) {
            prop_assert!(e.line >= 1 && e.line <= text.lines().count().max(1) + 1);
        }
    }
}
