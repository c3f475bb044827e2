//! `docs/service-openapi.json` against the code: it parses as OpenAPI 3.1.0 (the version in which
//! a `mutualTLS` security scheme is valid) with none of 3.0's keywords left, its operations are
//! exactly the routes of `server::router()` (read from `src/server.rs` itself, so a route added
//! without documenting it fails here), every error code the server can answer is documented
//! with its HTTP status, and the schemas of the wire types have exactly the fields of the
//! structs in `src/wire.rs` and `trustfab-formats`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The routes of `router()` in `src/server.rs`, as (method, path).
const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/health"),
    ("get", "/v1/ready"),
    ("get", "/v1/hsm"),
    ("get", "/v1/products"),
    ("get", "/v1/products/{oem}/{product}/chain"),
    ("get", "/v1/products/{oem}/{product}/firmware"),
    ("post", "/v1/jobs"),
    ("post", "/v1/jobs/attach"),
    ("get", "/v1/jobs/{job}/package"),
    ("get", "/v1/jobs/{job}/status"),
    ("post", "/v1/jobs/{job}/issue"),
    ("post", "/v1/jobs/{job}/certificate"),
    ("post", "/v1/jobs/{job}/certificates"),
    ("post", "/v1/jobs/{job}/family-key"),
    ("post", "/v1/jobs/{job}/outcomes"),
    ("post", "/v1/jobs/{job}/close"),
    ("get", "/metrics"),
    ("get", "/console/"),
    ("get", "/console/console.js"),
    ("get", "/console/console.css"),
    ("get", "/console/state"),
    ("get", "/console/report/{oem}/{product}"),
];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

const SERVER_RS: &str = include_str!("../src/server.rs");
const WIRE_RS: &str = include_str!("../src/wire.rs");
const JOB_RS: &str = include_str!("../../formats/src/job.rs");
const RECORDS_RS: &str = include_str!("../../formats/src/records/mod.rs");

fn spec() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/service-openapi.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

fn literal(set: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    set.iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect()
}

/// The text of the balanced `(...)` group that opens at `text[open]`, without the parentheses.
fn group(text: &str, open: usize) -> &str {
    let bytes = text.as_bytes();
    assert_eq!(bytes.get(open), Some(&b'('), "no group at {open}");
    let mut depth = 0usize;
    let mut in_str = false;
    for (i, &b) in bytes.iter().enumerate().skip(open) {
        match b {
            b'"' if i == 0 || bytes[i - 1] != b'\\' => in_str = !in_str,
            b'(' if !in_str => depth += 1,
            b')' if !in_str => {
                depth -= 1;
                if depth == 0 {
                    return &text[open + 1..i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced group at {open}");
}

/// Every `.route("PATH", METHOD(handler)[.METHOD(handler)…])` of `src/server.rs`.
fn server_routes() -> BTreeSet<(String, String)> {
    routes_in(SERVER_RS)
}

/// Every `.route("PATH", METHOD(handler)[.METHOD(handler)…])` of `src`, however it is wrapped.
fn routes_in(src: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut from = 0;
    while let Some(at) = src[from..].find(".route(") {
        let open = from + at + ".route".len();
        let args = group(src, open);
        from = open + args.len();
        let args = args.trim();
        let rest = args
            .strip_prefix('"')
            .unwrap_or_else(|| panic!("a route whose path is not a literal: {args}"));
        let end = rest.find('"').expect("the route's path ends");
        let path = &rest[..end];
        let router = rest[end + 1..].trim().trim_start_matches(',').trim();
        let mut methods = Vec::new();
        // `get(a).post(b)`: a method name starts the expression or follows a `.`.
        for (i, _) in router.match_indices('(') {
            let word_start = router[..i]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(0, |p| p + 1);
            let word = &router[word_start..i];
            let at_top = word_start == 0 || router[..word_start].ends_with('.');
            if at_top && METHODS.contains(&word) {
                methods.push(word.to_owned());
            }
        }
        assert!(
            !methods.is_empty(),
            "route {path}: no method router found in {router:?}"
        );
        for m in methods {
            assert!(
                out.insert((m.clone(), path.to_owned())),
                "route {m} {path} twice"
            );
        }
    }
    out
}

fn documented_routes(spec: &Value) -> BTreeSet<(String, String)> {
    let paths = spec["paths"].as_object().expect("`paths` is an object");
    let mut out = BTreeSet::new();
    for (path, item) in paths {
        let item = item
            .as_object()
            .unwrap_or_else(|| panic!("{path} is not an object"));
        for key in item.keys() {
            if METHODS.contains(&key.as_str()) {
                out.insert((key.clone(), path.clone()));
            } else {
                assert!(
                    matches!(key.as_str(), "parameters" | "summary" | "description"),
                    "{path}: unexpected key {key}"
                );
            }
        }
    }
    out
}

#[test]
fn it_is_openapi_3_1_with_mutual_tls() {
    let s = spec();
    assert_eq!(s["openapi"], "3.1.0");
    assert!(s["info"]["title"].is_string());
    assert!(s["info"]["version"].is_string());
    let schemes = s["components"]["securitySchemes"]
        .as_object()
        .expect("components.securitySchemes");
    let mut mtls: Vec<&String> = schemes
        .iter()
        .filter(|(_, v)| v["type"] == "mutualTLS")
        .map(|(k, _)| k)
        .collect();
    mtls.sort();
    assert_eq!(
        mtls,
        ["operatorCertificate", "stationCertificate"],
        "the mutualTLS security schemes: stations' and operators'"
    );
    let global = s["security"].as_array().expect("a global `security`");
    assert!(
        global.iter().any(|r| r.get("stationCertificate").is_some()),
        "the global security requirement names stationCertificate"
    );
    // The operators' routes name theirs.
    let metrics = &s["paths"]["/metrics"]["get"]["security"];
    assert!(
        metrics
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r.get("operatorCertificate").is_some())),
        "/metrics names operatorCertificate"
    );
}

/// Every object of `v` with the path to it.
fn objects<'a>(
    v: &'a Value,
    at: &str,
    out: &mut Vec<(String, &'a serde_json::Map<String, Value>)>,
) {
    match v {
        Value::Object(m) => {
            out.push((at.to_owned(), m));
            for (k, v) in m {
                objects(v, &format!("{at}/{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                objects(v, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// What OpenAPI 3.1 (JSON Schema 2020-12) replaced: `nullable` (a `type` array with `"null"`),
/// boolean `exclusiveMinimum`/`exclusiveMaximum` (numbers), a schema's `example` (`examples`),
/// and `format: byte` (`contentEncoding: base64`).
#[test]
fn no_keyword_of_openapi_3_0_is_left() {
    let s = spec();
    let mut all = Vec::new();
    objects(&s, "#", &mut all);
    for (at, m) in all {
        assert!(!m.contains_key("nullable"), "{at}: `nullable` is 3.0's");
        for k in ["exclusiveMinimum", "exclusiveMaximum"] {
            assert!(
                m.get(k).is_none_or(Value::is_number),
                "{at}: `{k}` is a number in 3.1"
            );
        }
        assert!(
            m.get("format").and_then(Value::as_str) != Some("byte"),
            "{at}: `format: byte` is `contentEncoding: base64` in 3.1"
        );
        if at.contains("/schemas/") || at.ends_with("/schema") {
            assert!(
                !m.contains_key("example"),
                "{at}: a schema's `example` is `examples`"
            );
        }
        if let Some(Value::Array(types)) = m.get("type") {
            assert!(
                types.iter().all(Value::is_string) && !types.is_empty(),
                "{at}: a `type` array names types"
            );
        }
    }
}

#[test]
fn the_literal_list_is_the_router() {
    assert_eq!(
        server_routes(),
        literal(ROUTES),
        "src/server.rs router() and the list in this test differ"
    );
}

#[test]
fn the_route_scan_reads_wrapped_and_chained_routes() {
    let src = r#"
        Router::new()
            .route("/v1/a", get(a))
            .route(
                "/v1/b/{job}",
                post(b).get(get_b),
            )
            .route("/v1/c", get(c).delete(delete_c)) // a comment (with parentheses)
            .fallback(not_found)
    "#;
    assert_eq!(
        routes_in(src),
        literal(&[
            ("get", "/v1/a"),
            ("post", "/v1/b/{job}"),
            ("get", "/v1/b/{job}"),
            ("get", "/v1/c"),
            ("delete", "/v1/c"),
        ])
    );
}

#[test]
fn every_route_is_documented_and_nothing_else() {
    let s = spec();
    let documented = documented_routes(&s);
    let routes = server_routes();
    let missing: Vec<_> = routes.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routes).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/service-openapi.json: undocumented routes {missing:?}, documented but not routed \
         {extra:?}"
    );
    assert_eq!(documented, literal(ROUTES));
}

/// Every `$ref` in `v`.
fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "$ref" {
                    out.push(v.as_str().expect("a $ref is a string"));
                } else {
                    refs(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

fn resolve<'a>(s: &'a Value, r: &str) -> &'a Value {
    let pointer = r
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("{r}: only local references"));
    s.pointer(pointer)
        .unwrap_or_else(|| panic!("{r} does not resolve"))
}

#[test]
fn every_reference_resolves_and_every_operation_is_complete() {
    let s = spec();
    let mut all = Vec::new();
    refs(&s, &mut all);
    assert!(!all.is_empty());
    for r in all {
        resolve(&s, r);
    }
    let mut ids = BTreeSet::new();
    for (path, item) in s["paths"].as_object().expect("paths") {
        let params_in_path: BTreeSet<&str> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for (method, op) in item.as_object().expect("path item") {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            let mut declared = BTreeSet::new();
            for p in item["parameters"]
                .as_array()
                .into_iter()
                .chain(op["parameters"].as_array())
                .flatten()
            {
                let p = match p.get("$ref").and_then(Value::as_str) {
                    Some(r) => resolve(&s, r),
                    None => p,
                };
                if p["in"] == "path" {
                    assert_eq!(
                        p["required"], true,
                        "{method} {path}: path parameters are required"
                    );
                    declared.insert(p["name"].as_str().expect("a parameter name"));
                }
            }
            assert_eq!(
                declared, params_in_path,
                "{method} {path}: path parameters declared and in the path differ"
            );
            let responses = op["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path}: no responses"));
            assert!(
                responses.contains_key("200"),
                "{method} {path}: no 200 response"
            );
            if method == "post" && path != "/v1/jobs/{job}/close" {
                assert_eq!(
                    op["requestBody"]["required"], true,
                    "{method} {path}: a required JSON body"
                );
            }
        }
    }
}

/// `(code, status)` of every refusal `src/server.rs` makes: `Self::new(STATUS, "code", …)` and
/// `ApiError::new(STATUS, "code", …)`.
fn server_codes() -> BTreeMap<String, u16> {
    let status_of = |s: &str| -> u16 {
        match s.trim().trim_start_matches("StatusCode::") {
            "conflict" | "CONFLICT" => 409,
            "BAD_REQUEST" => 400,
            "FORBIDDEN" => 403,
            "NOT_FOUND" => 404,
            "METHOD_NOT_ALLOWED" => 405,
            "MISDIRECTED_REQUEST" => 421,
            "PAYLOAD_TOO_LARGE" => 413,
            "INTERNAL_SERVER_ERROR" => 500,
            "SERVICE_UNAVAILABLE" => 503,
            other => panic!("src/server.rs: a status this test does not know: {other}"),
        }
    };
    let mut out = BTreeMap::new();
    for prefix in ["Self::new(", "ApiError::new("] {
        let mut from = 0;
        while let Some(at) = SERVER_RS[from..].find(prefix) {
            let open = from + at + prefix.len() - 1;
            let args = group(SERVER_RS, open);
            from = open + 1;
            let mut parts = args.splitn(3, ',');
            let (Some(status), Some(code)) = (parts.next(), parts.next()) else {
                continue;
            };
            let code = code.trim();
            let Some(code) = code.strip_prefix('"').and_then(|c| c.strip_suffix('"')) else {
                // `Self::new(hsm)` in `Service::new` and the like: not a refusal.
                continue;
            };
            let status = status_of(status);
            if let Some(before) = out.insert(code.to_owned(), status) {
                assert_eq!(before, status, "code {code} with two statuses");
            }
        }
    }
    out
}

#[test]
fn every_error_code_is_documented_with_its_status() {
    let s = spec();
    let documented = s["components"]["schemas"]["ErrorDetail"]["properties"]["code"]
        ["x-trustfab-codes"]
        .as_object()
        .expect("ErrorDetail.code has x-trustfab-codes: {code: status}");
    let documented: BTreeMap<String, u16> = documented
        .iter()
        .map(|(k, v)| {
            let status = v["status"]
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .unwrap_or_else(|| panic!("code {k}: no status"));
            (k.clone(), status)
        })
        .collect();
    let codes = server_codes();
    assert!(codes.len() > 20, "the scan found too few codes: {codes:?}");
    assert_eq!(
        documented, codes,
        "documented error codes differ from src/server.rs"
    );
}

/// The `ident: Type` fields at the top level of a `{ … }` block, with whether the type is an
/// `Option`.
fn block_fields(block: &str) -> BTreeMap<String, bool> {
    let mut out = BTreeMap::new();
    let mut depth = 0i32;
    for line in block.lines() {
        let t = line.trim();
        if t.starts_with("//") {
            continue;
        }
        if depth == 0 && !t.starts_with('#') {
            let t = t.strip_prefix("pub ").unwrap_or(t);
            if let Some((name, ty)) = t.split_once(':') {
                let name = name.trim();
                if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    out.insert(name.to_owned(), ty.trim().starts_with("Option<"));
                }
            }
        }
        depth += i32::try_from(t.matches(['{', '(', '[']).count()).unwrap_or(0);
        depth -= i32::try_from(t.matches(['}', ')', ']']).count()).unwrap_or(0);
    }
    out
}

/// The `{ … }` that follows the first occurrence of `head` in `src`.
fn braced<'a>(src: &'a str, head: &str) -> &'a str {
    let at = src
        .find(head)
        .unwrap_or_else(|| panic!("`{head}` not found"));
    let open = at + src[at..].find('{').expect("a brace");
    let bytes = src.as_bytes();
    let mut depth = 0;
    for (i, &b) in bytes.iter().enumerate().skip(open) {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return &src[open + 1..i];
                }
            }
            _ => {}
        }
    }
    panic!("`{head}`: unbalanced braces");
}

fn check_schema(s: &Value, name: &str, fields: &BTreeMap<String, bool>, extra: &[&str]) {
    let schema = &s["components"]["schemas"][name];
    assert_eq!(schema["type"], "object", "{name} is an object");
    assert_eq!(
        schema["additionalProperties"], false,
        "{name} refuses unknown fields"
    );
    let props: BTreeSet<String> = schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{name} has properties"))
        .keys()
        .cloned()
        .collect();
    let mut want: BTreeSet<String> = fields.keys().cloned().collect();
    want.extend(extra.iter().map(|e| (*e).to_owned()));
    assert_eq!(
        props, want,
        "schema {name}: properties differ from the Rust fields"
    );
    let required: BTreeSet<String> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().expect("a required name").to_owned())
        .collect();
    let mut want_required: BTreeSet<String> = fields
        .iter()
        .filter(|(_, optional)| !**optional)
        .map(|(k, _)| k.clone())
        .collect();
    want_required.extend(extra.iter().map(|e| (*e).to_owned()));
    assert_eq!(
        required, want_required,
        "schema {name}: required fields differ from the non-Option Rust fields"
    );
}

#[test]
fn the_schemas_have_the_fields_of_the_wire_types() {
    let s = spec();
    let structs = [
        "ErrorBody",
        "ErrorDetail",
        "HsmInfo",
        "WireProduct",
        "ProductList",
        "Chain",
        "Firmware",
        "WireFirmware",
        "ReserveRequest",
        "AttachRequest",
        "WireReservation",
        "WireDevice",
        "IssueRequest",
        "WireIssued",
        "IssueResponse",
        "UidRequest",
        "CertificateResponse",
        "UidsRequest",
        "CertificatesResponse",
        "FamilyKeyResponse",
        "OutcomesRequest",
        "WireStatus",
        "CloseResponse",
        "Health",
    ];
    for name in structs {
        let fields = block_fields(braced(WIRE_RS, &format!("pub struct {name} ")));
        check_schema(&s, name, &fields, &[]);
    }
    let outcome = braced(WIRE_RS, "pub enum WireOutcome ");
    check_schema(
        &s,
        "OutcomeGood",
        &block_fields(braced(outcome, "Good {")),
        &["outcome"],
    );
    check_schema(
        &s,
        "OutcomeFailed",
        &block_fields(braced(outcome, "Failed {")),
        &["outcome"],
    );
    for name in ["JobSpec", "SlotMap", "JobFirmware"] {
        let fields = block_fields(braced(JOB_RS, &format!("pub struct {name} ")));
        check_schema(&s, name, &fields, &[]);
    }
    let closed = block_fields(braced(RECORDS_RS, "pub struct JobClosed "));
    check_schema(&s, "JobClosed", &closed, &[]);
}
