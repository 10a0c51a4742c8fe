//! The config file as an operator meets it, through the real binary: `portico validate` errors
//! (format, positions, every error at once, no secret echoed), the shipped examples, the JSON
//! Schema, routes that cannot be told apart, and `portico explain`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::pos_of;

/// A config file in its own temp dir (kept alive with it).
struct ConfigFile {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

fn write_config(text: &str) -> ConfigFile {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("portico.yaml");
    std::fs::write(&path, text).expect("write config");
    ConfigFile { path, _dir: dir }
}

/// Runs the real `portico` binary with `args` and `env`.
fn portico(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portico"));
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run portico")
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn validate(file: &Path, env: &[(&str, &str)]) -> Run {
    let out = portico(&["validate", file.to_str().expect("utf-8 path")], env);
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Position just after `prefix` (which must not span lines).
fn pos_after(text: &str, prefix: &str) -> (usize, usize) {
    let (line, column) = pos_of(text, prefix);
    (line, column + prefix.len())
}

/// One `FILE:LINE:COL: path: message` error line.
#[derive(Debug)]
struct ErrorLine {
    line: usize,
    column: usize,
    path: String,
    message: String,
}

/// Parses every error line of `stderr`, asserting each starts with `file:`.
fn error_lines(file: &Path, stderr: &str) -> Vec<ErrorLine> {
    let prefix = format!("{}:", file.display());
    stderr
        .lines()
        .map(|l| {
            let rest = l
                .strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("error line without `{prefix}`: {l:?}\n{stderr}"));
            let mut parts = rest.splitn(3, ':');
            let line = parts.next().and_then(|s| s.parse().ok());
            let column = parts.next().and_then(|s| s.parse().ok());
            let (Some(line), Some(column)) = (line, column) else {
                panic!("error line without LINE:COL: {l:?}");
            };
            let rest = parts.next().unwrap_or_default().trim_start();
            let (path, message) = rest.split_once(": ").unwrap_or(("", rest));
            ErrorLine {
                line,
                column,
                path: path.to_string(),
                message: message.to_string(),
            }
        })
        .collect()
}

fn find<'e>(errors: &'e [ErrorLine], path: &str) -> &'e ErrorLine {
    errors
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("no error at {path}: {errors:#?}"))
}

#[track_caller]
fn assert_at(e: &ErrorLine, (line, column): (usize, usize), message_part: &str) {
    assert_eq!((e.line, e.column), (line, column), "{e:?}");
    assert!(
        e.message.contains(message_part),
        "expected {message_part:?} in {e:?}"
    );
}

const SERVICES: &str = r#"listen: ["127.0.0.1:0"]
services:
  users:
    targets:
      - url: "http://127.0.0.1:7001"
"#;

#[test]
fn a_typo_in_a_key_is_reported_with_line_column_and_path() {
    let text = format!(
        "{SERVICES}routes:
  - name: first
    service: users
  - name: second
    match:
      path: /b
      hostz: [b.example.com]
    service: users
"
    );
    let f = write_config(&text);
    let run = validate(&f.path, &[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let errors = error_lines(&f.path, &run.stderr);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = find(&errors, "routes[1].match.hostz");
    // The position is the typo'd key itself.
    assert_at(e, pos_of(&text, "hostz"), "unknown field `hostz`");
    assert!(
        e.message.contains("`hosts`"),
        "suggests the real keys: {e:?}"
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}

#[test]
fn every_semantic_error_is_reported_at_once_with_its_position() {
    let text = r#"listen: ["127.0.0.1:0"]
services:
  users:
    targets:
      - url: "ftp://127.0.0.1:7001"
routes:
  - name: users
    service: users
    timeout: 10 seconds
  - name: users
    service: nobody
    match:
      path: /b
      headers:
        x-tenant: {regex: "([a-z"}
"#;
    let f = write_config(text);
    let run = validate(&f.path, &[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let errors = error_lines(&f.path, &run.stderr);
    assert_eq!(errors.len(), 5, "exactly the five problems: {errors:#?}");
    assert_at(
        find(&errors, "services.users.targets[0].url"),
        pos_of(text, "\"ftp://"),
        "must start with http://, https:// or h2c://",
    );
    assert_at(
        find(&errors, "routes[0].timeout"),
        pos_of(text, "10 seconds"),
        "duration",
    );
    assert_at(
        find(&errors, "routes[1].name"),
        (10, 11),
        "duplicate route name `users`",
    );
    assert_at(
        find(&errors, "routes[1].service"),
        pos_of(text, "nobody"),
        "unknown service `nobody`",
    );
    assert_at(
        find(&errors, "routes[1].match.headers.x-tenant.regex"),
        pos_of(text, "\"([a-z\""),
        "invalid regex",
    );
    // Document order, one error per line.
    let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
    let mut sorted = lines.clone();
    sorted.sort_unstable();
    assert_eq!(lines, sorted);
}

#[test]
fn type_errors_and_unknown_keys_do_not_hide_other_errors() {
    let text = r#"listen: ["127.0.0.1:0"]
workers: many
services:
  users:
    targets:
      - url: "http://127.0.0.1:7001"
        wieght: 2
routes:
  - name: a
    match: {path: /a}
  - name: b
    service: ghost
"#;
    let f = write_config(text);
    let run = validate(&f.path, &[]);
    assert_eq!(run.code, Some(1));
    let errors = error_lines(&f.path, &run.stderr);
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert_at(
        find(&errors, "workers"),
        pos_of(text, "many"),
        "invalid type",
    );
    assert_at(
        find(&errors, "services.users.targets[0].wieght"),
        pos_of(text, "wieght"),
        "unknown field `wieght`",
    );
    // A missing required key points at the item that lacks it.
    assert_at(
        find(&errors, "routes[0]"),
        pos_of(text, "name: a"),
        "missing field `service`",
    );
    assert_at(
        find(&errors, "routes[1].service"),
        pos_of(text, "ghost"),
        "unknown service `ghost`",
    );
}

#[test]
fn a_yaml_syntax_error_has_a_line_and_column() {
    let text = format!("{SERVICES}routes:\n  - name: \"unterminated\n    service: users\n");
    let f = write_config(&text);
    let run = validate(&f.path, &[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let errors = error_lines(&f.path, &run.stderr);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].message.contains("YAML syntax error")
            || errors[0].path.contains("YAML syntax error"),
        "{errors:?}"
    );
    // The scanner notices the unterminated quote where the string started or where the
    // document ended: either way inside the routes block, never at 0:0.
    let (quote_line, _) = pos_of(&text, "\"unterminated");
    assert!(
        errors[0].line >= quote_line && errors[0].column >= 1,
        "{errors:?}"
    );

    let text = format!("{SERVICES}routes: [\n  {{name: a, service: users}}}}\n");
    let f = write_config(&text);
    let run = validate(&f.path, &[]);
    assert_eq!(run.code, Some(1));
    let errors = error_lines(&f.path, &run.stderr);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].line > 5, "{errors:?}");
}

#[test]
fn a_missing_environment_variable_is_reported_with_its_path() {
    let text = format!(
        "{SERVICES}  orders:\n    targets:\n      - url: \"http://${{PORTICO_TEST_NOT_SET_HOST}}:7002\"\nroutes:\n  - {{name: o, service: orders}}\n"
    );
    let f = write_config(&text);
    let run = validate(&f.path, &[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let errors = error_lines(&f.path, &run.stderr);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_at(
        find(&errors, "services.orders.targets[0].url"),
        pos_of(&text, "\"http://${"),
        "PORTICO_TEST_NOT_SET_HOST",
    );

    // The same file is valid once the variable is set.
    let run = validate(&f.path, &[("PORTICO_TEST_NOT_SET_HOST", "127.0.0.1")]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[test]
fn a_secret_from_a_variable_or_file_is_never_echoed_in_an_error() {
    let secret_dir = tempfile::tempdir().expect("tempdir");
    let secret_file = secret_dir.path().join("weight");
    std::fs::write(&secret_file, "file-secret-7f3a9\n").expect("write secret");
    let text = format!(
        r#"listen: ["127.0.0.1:0"]
workers: "${{PORTICO_TEST_SECRET}}"
services:
  users:
    targets:
      - url: "${{PORTICO_TEST_URL}}"
      - url: "http://127.0.0.1:7002"
        weight: "${{file:{}}}"
routes:
  - name: users
    service: users
    timeout: "${{PORTICO_TEST_SECRET}}"
"#,
        secret_file.display()
    );
    let f = write_config(&text);
    let run = validate(
        &f.path,
        &[
            ("PORTICO_TEST_SECRET", "hunter2-s3cr3t"),
            ("PORTICO_TEST_URL", "http://admin:pa55w0rd@127.0.0.1:7001"),
        ],
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let all = format!("{}{}", run.stdout, run.stderr);
    for secret in ["hunter2", "s3cr3t", "pa55w0rd", "admin:", "file-secret"] {
        assert!(!all.contains(secret), "{secret:?} leaked:\n{all}");
    }
    let errors = error_lines(&f.path, &run.stderr);
    assert_eq!(errors.len(), 4, "{errors:#?}");
    // Each error names the key and quotes the unexpanded reference instead.
    assert_at(
        find(&errors, "workers"),
        pos_after(&text, "workers: "),
        "${PORTICO_TEST_SECRET}",
    );
    assert_at(
        find(&errors, "services.users.targets[0].url"),
        pos_of(&text, "\"${PORTICO_TEST_URL}\""),
        "${PORTICO_TEST_URL}",
    );
    assert!(
        find(&errors, "services.users.targets[0].url")
            .message
            .contains("credentials"),
        "{errors:#?}"
    );
    assert!(find(&errors, "services.users.targets[1].weight")
        .message
        .contains("${file:"));
    assert!(find(&errors, "routes[0].timeout")
        .message
        .contains("${PORTICO_TEST_SECRET}"));
}

#[test]
fn numbers_and_booleans_may_come_from_the_environment() {
    let text = r#"listen: ["127.0.0.1:0"]
workers: ${PORTICO_TEST_WORKERS}
access_log: {enabled: "${PORTICO_TEST_LOG}"}
services:
  users:
    targets: [{url: "http://127.0.0.1:7001", weight: "${PORTICO_TEST_WEIGHT}"}]
routes:
  - {name: users, service: users}
"#;
    let f = write_config(text);
    let good = [
        ("PORTICO_TEST_WORKERS", "2"),
        ("PORTICO_TEST_LOG", "false"),
        ("PORTICO_TEST_WEIGHT", "5"),
    ];
    let run = validate(&f.path, &good);
    assert_eq!(run.code, Some(0), "{}", run.stderr);

    let bad = [
        ("PORTICO_TEST_WORKERS", "-3"),
        ("PORTICO_TEST_LOG", "maybe"),
        ("PORTICO_TEST_WEIGHT", "5000"),
    ];
    let run = validate(&f.path, &bad);
    assert_eq!(run.code, Some(1));
    let errors = error_lines(&f.path, &run.stderr);
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(find(&errors, "workers")
        .message
        .contains("${PORTICO_TEST_WORKERS}"));
    assert!(find(&errors, "access_log.enabled")
        .message
        .contains("${PORTICO_TEST_LOG}"));
    assert!(find(&errors, "services.users.targets[0].weight")
        .message
        .contains("between 1 and 1000"));
    assert!(!run.stderr.contains("maybe"), "{}", run.stderr);
}

#[test]
fn a_valid_file_exits_zero_and_says_so() {
    let text = format!(
        "{SERVICES}routes:\n  - name: users\n    match: {{path: /users}}\n    service: users\n"
    );
    let f = write_config(&text);
    let run = validate(&f.path, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("ok"), "{}", run.stdout);
    assert!(run.stdout.contains("1 routes"), "{}", run.stdout);
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// What demo.yaml expects from `portico demo` (it runs the backends on ephemeral ports).
const DEMO_ENV: &[(&str, &str)] = &[
    ("DEMO_LISTEN", "127.0.0.1:8080"),
    ("DEMO_USERS_PORT", "7001"),
    ("DEMO_PRODUCTS_PORT", "7002"),
    ("DEMO_ORDERS_PORT", "7003"),
    ("DEMO_ADMIN_LISTEN", "127.0.0.1:9901"),
    ("DEMO_FLAKY_PORT", "7004"),
    ("DEMO_PRODUCTS_V2_PORT", "7005"),
    // The public half of the demo's Ed25519 key (here: tests/fixtures/jwt/ed25519.pub.pem).
    ("DEMO_JWT_X", "YqWIBd7Ih5BEncXAthphjFNnkGR0PGtJT5eLIGw84kY"),
    // The demo writes its spec to a temp file; the tests run from the crate's directory.
    ("DEMO_OPENAPI_SPEC", "examples/openapi/demo.yaml"),
];

#[test]
fn every_example_config_validates() {
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(examples_dir()).expect("examples/") {
        let path = entry.expect("dir entry").path();
        let is_yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if !is_yaml {
            continue;
        }
        let run = validate(&path, DEMO_ENV);
        assert_eq!(
            run.code,
            Some(0),
            "{} does not validate:\n{}",
            path.display(),
            run.stderr
        );
        checked.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    checked.sort();
    assert!(
        checked.contains(&"demo.yaml".to_string()) && checked.contains(&"portico.yaml".to_string()),
        "{checked:?}"
    );
}

#[test]
fn the_commented_example_shows_every_option() {
    let text = std::fs::read_to_string(examples_dir().join("portico.yaml")).expect("example");
    // Every key of raw.rs, and every variant the docs promise.
    for key in [
        "listen:",
        "workers:",
        "log_level:",
        "log_format:",
        "limits:",
        "max_header_bytes:",
        "max_uri_bytes:",
        "max_body_bytes:",
        "max_connections:",
        "timeouts:",
        "header_read:",
        "shutdown_grace:",
        "trusted_proxies:",
        "forwarding:",
        "x_forwarded:",
        "forwarded:",
        "via:",
        "access_log:",
        "tracing:",
        "sampling_ratio:",
        "service_name:",
        "otlp:",
        "endpoint:",
        "max_queue_size:",
        "max_export_batch_size:",
        "export_interval:",
        "enabled:",
        "format:",
        "path:",
        "services:",
        "targets:",
        "url:",
        "weight:",
        "h2c://",
        "load_balancing: round_robin",
        "load_balancing: least_request",
        "load_balancing: random",
        "consistent_hash:",
        "header: x-session-id",
        "cookie: cart_id",
        "client_ip: true",
        "connect:",
        "request:",
        "idle:",
        "max_idle_per_target:",
        "dns_refresh:",
        "routes:",
        "name:",
        "match:",
        "hosts:",
        "\"*.",
        "path_type: prefix",
        "path_type: exact",
        "methods:",
        "headers:",
        "{present: true}",
        "{regex:",
        "service:",
        "rewrite:",
        "strip_prefix:",
        "replace_prefix:",
        "{path: \"/orders/{id}\"}",
        "{*rest}",
        "preserve_host:",
        "timeout:",
        // Transformation, access, traffic and aggregation policies (issue 6).
        "- transform:",
        "json_schema:",
        "on_oversize:",
        "to_xml:",
        "from_xml:",
        "rename:",
        "append:",
        "unwrap:",
        "wrap:",
        "- cors:",
        "allow_origins:",
        "allow_credentials:",
        "max_age:",
        "- ip_filter:",
        "- split:",
        "sticky:",
        "- shadow:",
        "percent:",
        "- versioning:",
        "from: path",
        "deprecation:",
        "sunset:",
        "- aggregate:",
        "calls:",
        "${calls.user.body.id}",
        "required: false",
        "under:",
        "merge: true",
        "pick:",
    ] {
        assert!(text.contains(key), "examples/portico.yaml lacks {key:?}");
    }
}

fn schema() -> serde_json::Value {
    let out = portico(&["schema"], &[]);
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).expect("schema is JSON")
}

fn yaml_to_json(text: &str) -> serde_json::Value {
    serde_yaml_ng::from_str(text).expect("YAML converts to JSON")
}

#[test]
fn the_json_schema_validates_the_example_and_rejects_unknown_keys() {
    let schema = schema();
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");

    let example =
        std::fs::read_to_string(examples_dir().join("portico.yaml")).expect("read example");
    let instance = yaml_to_json(&example);
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "examples/portico.yaml against the schema: {errors:#?}"
    );

    let typo = yaml_to_json(&example.replacen("max_idle_per_target:", "max_idle_per_targt:", 1));
    assert!(!validator.is_valid(&typo), "an unknown key must not pass");
    let top = yaml_to_json("listen: [\"127.0.0.1:0\"]\nlisten_on: x\n");
    assert!(!validator.is_valid(&top));
    let bad_duration = yaml_to_json("timeouts: {shutdown_grace: 30}\n");
    assert!(
        !validator.is_valid(&bad_duration),
        "a duration needs a unit"
    );
}

#[test]
fn routes_that_can_never_be_told_apart_are_rejected() {
    let text = format!(
        r#"{SERVICES}routes:
  - name: first
    match: {{hosts: [API.example.com, b.example.com], path: /users/, methods: [GET, POST], headers: {{x-a: "1", x-b: {{present: true}}}}}}
    service: users
  - name: same-but-reordered
    match: {{hosts: [b.example.com, api.example.com], path: /users, methods: [POST, GET], headers: {{x-b: {{present: true}}, x-a: "1"}}}}
    service: users
  - name: template
    match: {{path: "/items/{{id}}"}}
    service: users
  - name: template-renamed
    match: {{path: "/items/{{item}}"}}
    service: users
  - name: distinct-by-method
    match: {{path: "/items/{{id}}", methods: [DELETE]}}
    service: users
"#
    );
    let f = write_config(&text);
    let run = validate(&f.path, &[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let errors = error_lines(&f.path, &run.stderr);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    let (line, _) = pos_of(&text, "- name: same-but-reordered");
    let e = find(&errors, "routes[1].match");
    assert_eq!(e.line, line + 1, "{e:?}");
    assert!(e.message.contains("route 0"), "{e:?}");
    assert!(e.message.contains("never be chosen"), "{e:?}");
    let e = find(&errors, "routes[3].match");
    assert!(e.message.contains("route 2"), "{e:?}");
}

const EXPLAIN: &str = r#"listen: ["127.0.0.1:0"]
services:
  users:
    targets:
      - {url: "http://127.0.0.1:7001", weight: 2}
      - {url: "h2c://127.0.0.1:7002"}
    load_balancing: {consistent_hash: {header: x-user}}
routes:
  - name: user-by-id
    match:
      hosts: [api.example.com]
      path: "/users/{id}"
      methods: [GET, PUT]
      headers: {x-tenant: acme}
    service: users
    rewrite: {path: "/v2/users/{id}"}
    timeout: 3s
"#;

fn explain(args: &[&str]) -> String {
    let f = write_config(EXPLAIN);
    let mut all = vec!["explain", "--config", f.path.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = portico(&all, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn explain_shows_the_route_service_and_targets() {
    let out = explain(&[
        "GET",
        "http://API.example.com:8080/users/42?x=1",
        "-H",
        "x-tenant: acme",
    ]);
    assert!(out.contains("matched route #0 `user-by-id`"), "{out}");
    assert!(out.contains("path template /users/{id}"), "{out}");
    assert!(out.contains("capture id = \"42\""), "{out}");
    assert!(out.contains("rewrite: path /v2/users/{id}"), "{out}");
    assert!(out.contains("service `users`"), "{out}");
    assert!(out.contains("consistent_hash on header x-user"), "{out}");
    assert!(
        out.contains("target http://127.0.0.1:7001 weight 2"),
        "{out}"
    );
    assert!(
        out.contains("target h2c://127.0.0.1:7002 weight 1"),
        "{out}"
    );
    assert!(out.contains("request 3s"), "the route timeout: {out}");
}

#[test]
fn explain_says_why_nothing_matches() {
    // 405: host and path match, the method does not.
    let out = explain(&[
        "DELETE",
        "http://api.example.com/users/42",
        "-H",
        "x-tenant: acme",
    ]);
    assert!(out.contains("405"), "{out}");
    assert!(out.contains("allowed: GET, PUT"), "{out}");

    // 404, with the condition that failed for each route.
    let out = explain(&["GET", "http://api.example.com/users/42"]);
    assert!(out.contains("no route matches (404)"), "{out}");
    assert!(
        out.contains("header x-tenant must be = \"acme\", but it is absent"),
        "{out}"
    );
    let out = explain(&["GET", "http://other.example.com/users/42"]);
    assert!(out.contains("404"), "{out}");
    assert!(out.contains("host \"other.example.com\""), "{out}");
    let out = explain(&["GET", "http://api.example.com/orders/1"]);
    assert!(
        out.contains("path \"/orders/1\" is not matched by the template /users/{id}"),
        "{out}"
    );
}

#[test]
fn explain_lists_the_effective_policies_and_their_level() {
    let yaml = r#"
consumers: [{name: app, api_keys: ["app-key-123456"]}]
policies: [{auth: {api_key: true}}]
services:
  s: {targets: [{url: "http://127.0.0.1:1"}]}
routes:
  - {name: open, match: {path: /open}, service: s, policies: [{auth: {anonymous: true}}]}
  - {name: closed, service: s}
"#;
    let plan = portico::config::load_str(yaml, "x.yaml", &portico::config::expand::ProcessEnv)
        .expect("valid");
    let open = portico::explain::explain(&plan, "GET", "http://h/open", &[]).unwrap();
    assert!(
        open.contains("\"anonymous\":true") && open.contains("(from the route level)"),
        "{open}"
    );
    let closed = portico::explain::explain(&plan, "GET", "http://h/x", &[]).unwrap();
    assert!(
        closed.contains("\"api_key\":true") && closed.contains("(from the global level)"),
        "{closed}"
    );
    assert!(!closed.contains("app-key-123456"), "{closed}");
}

// === Inputs that must not crash or exhaust `validate` (issue 15) ===

/// Asserts `validate` exited 1 (not 101 from a panic, not 134 from a stack overflow) with
/// exactly one error line; returns it.
#[track_caller]
fn one_error(cfg: &ConfigFile, run: &Run) -> ErrorLine {
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    let mut errors = error_lines(&cfg.path, &run.stderr);
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    errors.remove(0)
}

#[test]
fn a_400000_day_cache_ttl_is_an_error_with_its_position_not_a_panic() {
    let text = format!(
        "{SERVICES}routes:\n  - name: r\n    service: users\n    policies:\n      - auth: {{basic: true}}\nconsumers:\n  - name: ada\n    basic: {{username: ada, password_hash: \"$2b$04$abcdefghijklmnopqrstuu5Fq6/Hd2WzjYt8YpqBXSU4TA/AR.9xW\"}}\nauth:\n  basic: {{cache_ttl: 400000d}}\n  introspection:\n    idp:\n      url: \"http://127.0.0.1:7002/introspect\"\n      client_id: gw\n      client_secret: s3cret\n      negative_cache_ttl: 366d\n"
    );
    let cfg = write_config(&text);
    let run = validate(&cfg.path, &[]);
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    let errors = error_lines(&cfg.path, &run.stderr);
    assert_eq!(errors.len(), 2, "{}", run.stderr);
    assert_at(
        find(&errors, "auth.basic.cache_ttl"),
        pos_of(&text, "400000d"),
        "`400000d` is longer than 365d",
    );
    assert_at(
        find(&errors, "auth.introspection.idp.negative_cache_ttl"),
        pos_of(&text, "366d"),
        "longer than 365d",
    );
}

#[test]
fn deep_nesting_is_a_clear_error_not_a_stack_overflow() {
    // Before the fix 20,000 levels aborted `validate` (exit 134).
    for (name, deep) in [
        (
            "block",
            format!("{SERVICES}extra:\n{}x\n", "- ".repeat(20_000)),
        ),
        (
            "flow",
            format!(
                "{SERVICES}extra: {}x{}\n",
                "[".repeat(20_000),
                "]".repeat(20_000)
            ),
        ),
        (
            "maps",
            format!(
                "{SERVICES}extra: {}x{}\n",
                "{a: ".repeat(20_000),
                "}".repeat(20_000)
            ),
        ),
    ] {
        let cfg = write_config(&deep);
        let e = one_error(&cfg, &validate(&cfg.path, &[]));
        assert!(
            e.message.contains("more than 64 levels deep"),
            "{name}: {e:?}"
        );
        // Pointed at the nested value, after the services.
        assert!(e.line > SERVICES.lines().count(), "{name}: {e:?}");
    }
}

#[test]
fn an_alias_bomb_is_refused_quickly_before_it_expands() {
    // Nine levels of nine aliases: 387 million strings once expanded, from 500 bytes.
    let mut bomb = format!("{SERVICES}x-0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..9 {
        let refs = vec![format!("*a{}", i - 1); 9].join(", ");
        bomb.push_str(&format!("x-{i}: &a{i} [{refs}]\n"));
    }
    let cfg = write_config(&bomb);
    let started = std::time::Instant::now();
    let run = validate(&cfg.path, &[]);
    let took = started.elapsed();
    let e = one_error(&cfg, &run);
    assert!(e.message.contains("refused before building it"), "{e:?}");
    assert!(e.message.contains("alias"), "{e:?}");
    assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
}

#[test]
fn a_config_file_over_4_mib_is_refused_without_reading_it_all() {
    let mut text = format!("{SERVICES}# ");
    text.push_str(&"x".repeat(4 * 1024 * 1024));
    let cfg = write_config(&text);
    let run = validate(&cfg.path, &[]);
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    assert_eq!(
        run.stderr.trim(),
        format!(
            "{}: the config is larger than 4 MiB, the most a config file may hold",
            cfg.path.display()
        )
    );
}

/// `portico validate FILE`, killed if it has not exited within 10 s (a hang is a failure).
fn validate_or_kill(file: &Path) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portico"))
        .arg("validate")
        .arg(file)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run portico");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().expect("try_wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`portico validate {}` hung", file.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A FIFO and a regular file one byte over 1 MiB, in a temp dir kept alive with them.
fn fifo_and_big_file() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("file.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    let big = dir.path().join("big.pem");
    std::fs::write(&big, vec![b'x'; 1024 * 1024 + 1]).expect("write");
    let (fifo, big) = (fifo.display().to_string(), big.display().to_string());
    (dir, fifo, big)
}

#[test]
fn file_expansion_reads_only_regular_files_up_to_1_mib() {
    let (_dir, fifo, big) = fifo_and_big_file();
    // Before the fix the FIFO hung `validate` forever and /dev/zero grew it to gigabytes.
    for (file, why) in [
        (fifo, "not a regular file"),
        ("/dev/zero".to_string(), "not a regular file"),
        (big, "larger than 1024 KiB"),
    ] {
        let text = format!(
            "{SERVICES}admin:\n  token: \"${{file:{file}}}\"\nroutes:\n  - {{name: r, service: users}}\n"
        );
        let cfg = write_config(&text);
        let run = validate_or_kill(&cfg.path);
        let e = one_error(&cfg, &run);
        assert_eq!(e.path, "admin.token", "{e:?}");
        assert_eq!(
            e.message,
            format!("cannot read `${{file:{file}}}`: {why}"),
            "{e:?}"
        );
    }
}

// === One error per mistake, with a suggestion (issue 19) ===

#[test]
fn each_misspelled_fixture_gives_one_error_with_its_suggestion_and_the_allowed_values() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/misspelled");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 10, "{files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).expect("fixture");
        // The first line says what `validate` must print: `# expect: path: message start`.
        let expected = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: no `# expect:` line", file.display()));
        let run = validate(file, &[]);
        assert_eq!(run.code, Some(1), "{}: {}", file.display(), run.stderr);
        let errors = error_lines(file, &run.stderr);
        assert_eq!(errors.len(), 1, "{}:\n{}", file.display(), run.stderr);
        let e = &errors[0];
        let line = format!("{}: {}", e.path, e.message);
        assert!(
            line.starts_with(expected),
            "{}:\n{line}\nexpected: {expected}",
            file.display()
        );
        assert!(
            e.message.contains(", expected "),
            "allowed values named: {line}"
        );
        // It points at the misspelled word.
        let written = expected
            .split('`')
            .nth(1)
            .expect("the misspelled word in backticks");
        let at_line = text.lines().nth(e.line - 1).expect("line");
        assert!(
            at_line.contains(written),
            "{}:{}: {at_line:?} does not hold `{written}`",
            file.display(),
            e.line
        );
    }
}

#[test]
fn an_unknown_policy_name_is_one_error_naming_the_known_policies() {
    let text = format!(
        "{SERVICES}routes:\n  - name: api\n    service: users\n    policies: [{{lua: {{script: x.lua}}}}]\n"
    );
    let cfg = write_config(&text);
    let e = one_error(&cfg, &validate(&cfg.path, &[]));
    assert_at(
        &e,
        pos_of(&text, "lua:"),
        "unknown policy `lua`, expected one of `auth`, `rate_limit`",
    );
    // Nothing close to `lua`: no suggestion.
    assert!(!e.message.contains("did you mean"), "{e:?}");
}

#[test]
fn tls_files_are_read_only_when_regular_and_at_most_1_mib() {
    let (_dir, fifo, big) = fifo_and_big_file();
    let irregular = "not a regular file";
    // Before: /dev/zero as a certificate took gigabytes within seconds, and a FIFO hung.
    for (yaml, path, file, why) in [
        (
            "tls:\n  listen: [\"127.0.0.1:0\"]\n  certificates:\n    - {cert: /dev/zero, key: /dev/zero}\n"
                .to_string(),
            "tls.certificates[0]",
            "/dev/zero".to_string(),
            irregular,
        ),
        (
            format!("tls:\n  listen: [\"127.0.0.1:0\"]\n  certificates:\n    - {{cert: \"{fifo}\", key: \"{fifo}\"}}\n"),
            "tls.certificates[0]",
            fifo.clone(),
            irregular,
        ),
        (
            format!("tls:\n  listen: [\"127.0.0.1:0\"]\n  certificates:\n    - {{cert: \"{big}\", key: \"{big}\"}}\n"),
            "tls.certificates[0]",
            big.clone(),
            "larger than 1024 KiB",
        ),
        (
            format!("  secure:\n    targets: [{{url: \"https://127.0.0.1:7443\"}}]\n    tls: {{ca: \"{fifo}\"}}\n"),
            "services.secure.tls",
            fifo.clone(),
            irregular,
        ),
    ] {
        // A service entry (indented) lands under the `services:` that SERVICES ends with.
        let text = format!("{SERVICES}{yaml}routes:\n  - {{name: r, service: users}}\n");
        let cfg = write_config(&text);
        let e = one_error(&cfg, &validate_or_kill(&cfg.path));
        assert!(e.path.starts_with(path), "{e:?}");
        assert!(
            e.message.contains(&format!("cannot read `{file}`: {why}")),
            "{e:?}"
        );
    }
}

#[test]
fn a_misspelled_service_reference_suggests_the_defined_one() {
    let text = format!("{SERVICES}routes:\n  - {{name: api, service: user}}\n");
    let cfg = write_config(&text);
    let e = one_error(&cfg, &validate(&cfg.path, &[]));
    assert_at(
        &e,
        pos_of(&text, "user}"),
        "unknown service `user` (did you mean `users`?) (defined: users)",
    );
}

#[test]
fn a_broken_wasm_filter_is_reported_at_its_policy_with_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write module");
        p.display().to_string()
    };
    let no_abi = write("no_abi.wat", r#"(module (memory (export "memory") 1))"#);
    let unknown_import = write(
        "unknown_import.wat",
        r#"(module (import "env" "proxy_teleport" (func (param i32) (result i32)))
             (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1"))
             (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 8)))"#,
    );
    let refuses = write(
        "refuses.wat",
        r#"(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1"))
             (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 8))
             (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 0)))"#,
    );
    let text = format!(
        r#"{SERVICES}routes:
  - name: a
    service: users
    policies:
      - wasm: {{module: "{no_abi}"}}
  - name: b
    service: users
    policies:
      - wasm: {{module: "{unknown_import}"}}
  - name: c
    service: users
    policies:
      - wasm: {{module: "{refuses}", configuration: {{strict: true}}}}
  - name: d
    service: users
    policies:
      - wasm: {{module: "{refuses}", http_calls: [users, nowhere]}}
"#
    );
    let f = write_config(&text);
    let run = validate(&f.path, &[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let errors = error_lines(&f.path, &run.stderr);
    let e = find(&errors, "routes[0].policies[0].wasm.module");
    assert_at(
        e,
        pos_of(&text, &format!("\"{no_abi}\"")),
        "proxy_abi_version_0_2_1",
    );
    let e = find(&errors, "routes[1].policies[0].wasm.module");
    assert_at(
        e,
        pos_of(&text, &format!("\"{unknown_import}\"")),
        "proxy_teleport",
    );
    let e = find(&errors, "routes[2].policies[0].wasm.module");
    assert!(e.message.contains("on_configure returned false"), "{e:?}");
    let e = find(&errors, "routes[3].policies[0].wasm.http_calls[1]");
    assert!(e.message.contains("nowhere"), "{e:?}");
}
