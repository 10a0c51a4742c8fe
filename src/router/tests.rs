use super::*;

fn spec(hosts: &[&str], path: PathSpec, methods: &[Method]) -> RouteSpec {
    RouteSpec {
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        path,
        methods: methods.to_vec(),
        headers: Vec::new(),
    }
}

fn prefix(p: &str) -> PathSpec {
    PathSpec::Prefix(p.to_string())
}

fn route_of(r: &Router, host: &str, path: &str, method: Method) -> Option<usize> {
    match r.find(host, path, &method, &HeaderMap::new()) {
        Match::Found(f) => Some(f.route),
        _ => None,
    }
}

#[test]
fn prefixes_match_on_segment_boundaries_longest_first() {
    let r = Router::build(&[
        spec(&[], prefix("/"), &[]),
        spec(&[], prefix("/api"), &[]),
        spec(&[], prefix("/api/users"), &[]),
    ])
    .unwrap();
    let cases = [
        ("/", Some(0)),
        ("/apix", Some(0)),
        ("/api", Some(1)),
        ("/api/", Some(1)),
        ("/api/usersx", Some(1)),
        ("/api/users", Some(2)),
        ("/api/users/7/orders", Some(2)),
    ];
    for (path, want) in cases {
        assert_eq!(route_of(&r, "h", path, Method::GET), want, "path {path}");
    }
}

#[test]
fn exact_beats_template_beats_prefix() {
    let r = Router::build(&[
        spec(&[], prefix("/users"), &[]),
        spec(&[], PathSpec::Template("/users/{id}".into()), &[]),
        spec(&[], PathSpec::Exact("/users/me".into()), &[]),
    ])
    .unwrap();
    assert_eq!(route_of(&r, "h", "/users/me", Method::GET), Some(2));
    assert_eq!(route_of(&r, "h", "/users/42", Method::GET), Some(1));
    assert_eq!(route_of(&r, "h", "/users/42/x", Method::GET), Some(0));
    assert_eq!(route_of(&r, "h", "/users", Method::GET), Some(0));
    match r.find("h", "/users/42", &Method::GET, &HeaderMap::new()) {
        Match::Found(f) => assert_eq!(f.params.get("id"), Some("42")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn exact_host_beats_wildcard_beats_any_host() {
    let r = Router::build(&[
        spec(&[], prefix("/"), &[]),
        spec(&["*.example.com"], prefix("/"), &[]),
        spec(&["api.example.com"], prefix("/"), &[]),
    ])
    .unwrap();
    assert_eq!(route_of(&r, "api.example.com", "/", Method::GET), Some(2));
    assert_eq!(route_of(&r, "www.example.com", "/", Method::GET), Some(1));
    assert_eq!(route_of(&r, "a.b.example.com", "/", Method::GET), Some(1));
    assert_eq!(route_of(&r, "example.com", "/", Method::GET), Some(0));
    assert_eq!(route_of(&r, "other.org", "/", Method::GET), Some(0));
}

#[test]
fn falls_back_to_less_specific_host_when_path_does_not_match() {
    let r = Router::build(&[
        spec(&[], prefix("/health"), &[]),
        spec(&["api.example.com"], prefix("/v1"), &[]),
    ])
    .unwrap();
    assert_eq!(
        route_of(&r, "api.example.com", "/health", Method::GET),
        Some(0)
    );
}

#[test]
fn method_mismatch_gives_405_with_allowed_methods() {
    let r = Router::build(&[
        spec(&[], prefix("/items"), &[Method::GET]),
        spec(&[], prefix("/items"), &[Method::POST, Method::PUT]),
    ])
    .unwrap();
    assert_eq!(route_of(&r, "h", "/items", Method::POST), Some(1));
    match r.find("h", "/items/1", &Method::DELETE, &HeaderMap::new()) {
        Match::MethodNotAllowed(allowed) => {
            assert_eq!(allowed, vec![Method::GET, Method::POST, Method::PUT])
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        r.find("h", "/other", &Method::DELETE, &HeaderMap::new()),
        Match::NotFound
    ));
}

#[test]
fn header_conditions_and_more_conditions_win() {
    let mut tenant = spec(&[], prefix("/"), &[]);
    tenant.headers = vec![(
        HeaderName::from_static("x-tenant"),
        HeaderCond::Exact(HeaderValue::from_static("acme")),
    )];
    let mut debug = spec(&[], prefix("/"), &[]);
    debug.headers = vec![(
        HeaderName::from_static("x-debug"),
        HeaderCond::Regex(Regex::new("^(1|true)$").unwrap()),
    )];
    let r = Router::build(&[spec(&[], prefix("/"), &[]), tenant, debug]).unwrap();
    let mut h = HeaderMap::new();
    assert!(matches!(r.find("h", "/", &Method::GET, &h), Match::Found(f) if f.route == 0));
    h.insert("x-tenant", HeaderValue::from_static("acme"));
    assert!(matches!(r.find("h", "/", &Method::GET, &h), Match::Found(f) if f.route == 1));
    h.insert("x-tenant", HeaderValue::from_static("other"));
    h.insert("x-debug", HeaderValue::from_static("true"));
    assert!(matches!(r.find("h", "/", &Method::GET, &h), Match::Found(f) if f.route == 2));
}

#[test]
fn indistinguishable_routes_are_rejected() {
    let errs = Router::build(&[
        spec(&["a.com"], prefix("/x"), &[Method::GET]),
        spec(&["a.com"], prefix("/x"), &[Method::GET]),
        spec(&[], PathSpec::Template("/u/{id}".into()), &[]),
        spec(&[], PathSpec::Template("/u/{name}".into()), &[]),
    ])
    .unwrap_err();
    assert_eq!(errs.len(), 2);
    assert_eq!(errs[0].route, 1);
    assert_eq!(errs[1].route, 3);
}

#[test]
fn templates_with_other_names_on_different_methods_conflict_clearly() {
    let errs = Router::build(&[
        spec(&[], PathSpec::Template("/u/{id}".into()), &[Method::GET]),
        spec(&[], PathSpec::Template("/u/{name}".into()), &[Method::POST]),
    ])
    .unwrap_err();
    assert!(errs[0].message.contains("conflicts"), "{:?}", errs);
}

#[test]
fn same_template_on_different_methods_shares_a_slot() {
    let r = Router::build(&[
        spec(&[], PathSpec::Template("/u/{id}".into()), &[Method::GET]),
        spec(&[], PathSpec::Template("/u/{id}".into()), &[Method::POST]),
    ])
    .unwrap();
    assert_eq!(route_of(&r, "h", "/u/1", Method::POST), Some(1));
    assert_eq!(route_of(&r, "h", "/u/1", Method::GET), Some(0));
}

#[test]
fn host_normalization() {
    assert_eq!(normalize_host("API.Example.com:8080"), "api.example.com");
    assert_eq!(normalize_host("example.com."), "example.com");
    assert_eq!(normalize_host("[::1]:80"), "[::1]");
}
