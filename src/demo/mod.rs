//! `portico demo`: three small JSON backends (users, products, orders) on loopback and the
//! gateway in front of them with `examples/demo.yaml`.
//!
//! The backends are deliberately tiny: enough to show routing, rewrites, request ids,
//! forwarding headers, aggregation (`/orders?user_id=1`, `/products?ids=[1,3]`) and API
//! versioning (a `products-v2` backend with a different record shape). They are not part of the
//! gateway's request path.
//!
//! Authentication is shown with a JWT route and an API-key route. The JWT signing key is an
//! Ed25519 key made at every start (instant, unlike RSA): its public half goes into the demo
//! config as `${DEMO_JWT_X}`, the private half only signs the token the demo prints.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;

pub mod tls;

/// The demo config, compiled into the binary so `portico demo` works from any directory.
pub const DEMO_YAML: &str = include_str!("../../examples/demo.yaml");

/// Ports of the running demo backends, fed to the demo config as `${DEMO_*_PORT}`.
pub struct DemoPorts {
    /// users service.
    pub users: u16,
    /// products service.
    pub products: u16,
    /// orders service.
    pub orders: u16,
    /// Version 2 of the products API (prices with a currency).
    pub products_v2: u16,
    /// A broken backend: every answer is a 500 (to show retries and the circuit breaker), but
    /// for requests carrying `x-demo-heal`.
    pub flaky: u16,
}

/// Starts the three backends on ephemeral loopback ports inside the current tokio runtime.
pub async fn start_backends() -> std::io::Result<DemoPorts> {
    Ok(DemoPorts {
        users: spawn_backend("users").await?,
        products: spawn_backend("products").await?,
        orders: spawn_backend("orders").await?,
        products_v2: spawn_backend("products-v2").await?,
        flaky: spawn_backend("flaky").await?,
    })
}

async fn spawn_backend(name: &'static str) -> std::io::Result<u16> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| respond(name, req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(port)
}

fn records(name: &str) -> Vec<Value> {
    match name {
        "users" => vec![
            json!({"id": 1, "name": "Ada Lovelace", "email": "ada@example.com"}),
            json!({"id": 2, "name": "Grace Hopper", "email": "grace@example.com"}),
            json!({"id": 3, "name": "Alan Turing", "email": "alan@example.com"}),
        ],
        "products-v2" => vec![
            json!({"id": 1, "name": "Keyboard", "price": {"amount": 49.0, "currency": "EUR"}, "in_stock": true}),
            json!({"id": 2, "name": "Monitor", "price": {"amount": 199.0, "currency": "EUR"}, "in_stock": false}),
            json!({"id": 3, "name": "Mouse", "price": {"amount": 19.5, "currency": "EUR"}, "in_stock": true}),
        ],
        "products" => vec![
            json!({"id": 1, "name": "Keyboard", "price": 49.0}),
            json!({"id": 2, "name": "Monitor", "price": 199.0}),
            json!({"id": 3, "name": "Mouse", "price": 19.5}),
        ],
        _ => vec![
            json!({"id": 100, "user_id": 1, "product_ids": [1, 3], "status": "shipped"}),
            json!({"id": 101, "user_id": 2, "product_ids": [2], "status": "pending"}),
        ],
    }
}

/// `GET /NAME`: every record, or those the query selects: `?user_id=1` for orders (with the
/// product ids of those orders), `?ids=[1,3]` for products (the form an aggregate call renders
/// an array from an earlier answer in).
fn listing(name: &str, query: &str) -> Value {
    let param = |key: &str| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    };
    let mut items = records(name);
    if let Some(user) = param("user_id").and_then(|u| u.parse::<u64>().ok()) {
        items.retain(|o| o["user_id"].as_u64() == Some(user));
        let product_ids: Vec<Value> = items
            .iter()
            .flat_map(|o| o["product_ids"].as_array().cloned().unwrap_or_default())
            .collect();
        return json!({"service": name, "items": items, "product_ids": product_ids});
    }
    if let Some(ids) = param("ids") {
        let ids: Vec<u64> = serde_json::from_str(&ids).unwrap_or_default();
        items.retain(|p| p["id"].as_u64().is_some_and(|id| ids.contains(&id)));
    }
    json!({"service": name, "items": items})
}

async fn respond(
    name: &'static str,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let seen: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-") || *k == "host")
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    // products-v2 serves the same URLs as products.
    let collection = format!("/{}", name.trim_end_matches("-v2"));
    let (status, value) = if name == "flaky" && seen.contains_key("x-demo-heal") {
        (StatusCode::OK, json!({"service": name, "healed": true}))
    } else if name == "flaky" {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "the flaky demo backend always fails", "path": path}),
        )
    } else if path == "/echo" || path.ends_with("/echo") {
        (
            StatusCode::OK,
            json!({"service": name, "method": method.as_str(), "path": path, "headers": seen}),
        )
    } else if path == collection && method == Method::GET {
        (StatusCode::OK, listing(name, &query))
    } else if path == collection && method == Method::POST {
        let input: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (
            StatusCode::CREATED,
            json!({"service": name, "created": input, "id": 102}),
        )
    } else if let Some(id) = path.strip_prefix(&format!("{collection}/")) {
        match records(name)
            .into_iter()
            .find(|r| id.parse::<u64>().ok() == r["id"].as_u64())
        {
            Some(r) => (StatusCode::OK, r),
            None => (
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "service": name}),
            ),
        }
    } else {
        (
            StatusCode::NOT_FOUND,
            json!({"error": "not_found", "service": name, "path": path}),
        )
    };
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string() + "\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// The OpenAPI description of the demo's users and products services.
pub const DEMO_OPENAPI: &str = include_str!("../../examples/openapi/demo.yaml");

/// Writes [`DEMO_OPENAPI`] to a file of this process in the temp directory (the `openapi`
/// policy reads its spec from a file; the demo runs from any directory): its path.
pub fn write_openapi_spec() -> std::io::Result<std::path::PathBuf> {
    let path =
        std::env::temp_dir().join(format!("portico-demo-{}.openapi.yaml", std::process::id()));
    std::fs::write(&path, DEMO_OPENAPI)?;
    Ok(path)
}

/// Expansion source for the demo config: the backend ports, the listen address, the demo
/// key's public JWK `x`, the admin listen address and the OpenAPI spec's path, then the real
/// environment.
pub struct DemoEnv<'a>(
    pub &'a DemoPorts,
    pub String,
    pub String,
    pub String,
    pub String,
);

impl crate::spec::expand::Source for DemoEnv<'_> {
    fn var(&self, name: &str) -> Option<String> {
        match name {
            "DEMO_USERS_PORT" => Some(self.0.users.to_string()),
            "DEMO_PRODUCTS_PORT" => Some(self.0.products.to_string()),
            "DEMO_ORDERS_PORT" => Some(self.0.orders.to_string()),
            "DEMO_PRODUCTS_V2_PORT" => Some(self.0.products_v2.to_string()),
            "DEMO_FLAKY_PORT" => Some(self.0.flaky.to_string()),
            "DEMO_LISTEN" => Some(self.1.clone()),
            "DEMO_JWT_X" => Some(self.2.clone()),
            "DEMO_ADMIN_LISTEN" => Some(self.3.clone()),
            "DEMO_OPENAPI_SPEC" => Some(self.4.clone()),
            other => crate::spec::expand::ProcessEnv.var(other),
        }
    }
    fn file(&self, path: &str) -> std::io::Result<String> {
        crate::spec::expand::ProcessEnv.file(path)
    }
}

/// The API key of the demo's `partner-shop` consumer (examples/demo.yaml).
pub const DEMO_API_KEY: &str = "demo-partner-key-0001";

/// The demo's JWT signing key: Ed25519, made at start from the OS's randomness.
pub struct DemoKey {
    /// PKCS#8 DER of the private key (what `jsonwebtoken` signs with).
    pkcs8: Vec<u8>,
    /// Public key, base64url: the JWK's `x`.
    x: String,
}

impl DemoKey {
    /// A new random key.
    pub fn generate() -> std::io::Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| std::io::Error::other(e.to_string()))?;
        let public = ed25519_dalek::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes();
        // PKCS#8 v1 for Ed25519 (RFC 8410): a fixed prefix, then the 32-byte seed.
        let mut pkcs8 = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        pkcs8.extend_from_slice(&seed);
        use base64::Engine;
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public);
        Ok(Self { pkcs8, x })
    }

    /// The public key as a JWK `x` value (for `${DEMO_JWT_X}`).
    pub fn public_x(&self) -> &str {
        &self.x
    }

    /// A token for `sub` from the demo issuer, valid for `ttl`.
    pub fn token(&self, sub: &str, ttl: std::time::Duration) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = json!({
            "iss": "portico-demo", "aud": "demo-api", "sub": sub,
            "scope": "users:read", "iat": now, "exp": now + ttl.as_secs(),
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some("demo".to_string());
        let key = jsonwebtoken::EncodingKey::from_ed_der(&self.pkcs8);
        // Signing with a well-formed Ed25519 key cannot fail; an empty token would only
        // show up as a 401 in the printed commands.
        jsonwebtoken::encode(&header, &claims, &key).unwrap_or_default()
    }
}

/// The demo's plugin: the tenant gate built with the AssemblyScript proxy-wasm SDK
/// (`tests/plugins/assemblyscript/`), written to a file at start for its route to load.
#[cfg(feature = "wasm")]
pub const DEMO_PLUGIN: &[u8] =
    include_bytes!("../../tests/plugins/assemblyscript/tenant-gate.wasm");

/// Writes [`DEMO_PLUGIN`] to a temporary file; the route `/plugin` that loads it, to append
/// to the demo's routes.
#[cfg(feature = "wasm")]
pub fn write_plugin() -> std::io::Result<(std::path::PathBuf, String)> {
    let path = std::env::temp_dir().join(format!("portico-demo-{}.wasm", std::process::id()));
    std::fs::write(&path, DEMO_PLUGIN)?;
    let module = serde_json::to_string(&path.display().to_string()).unwrap_or_default();
    let route = format!(
        r#"
  # A proxy-wasm plugin: the tenant gate refuses requests without x-demo-tenant (403) and
  # adds x-tenant upstream and x-plugin: tenant-gate to the answer.
  - name: plugin
    match: {{path: /plugin}}
    service: users
    rewrite: {{strip_prefix: /plugin}}
    policies:
      - wasm:
          module: {module}
          name: tenant-gate
          configuration: {{header: x-demo-tenant}}
"#
    );
    Ok((path, route))
}

/// The curl commands `portico demo` prints, for a gateway at `base` (e.g. `http://127.0.0.1:8080`)
/// and a demo JWT `token`.
pub fn curl_commands(base: &str, token: &str) -> Vec<(String, String)> {
    vec![
        ("List users (prefix route, /api stripped before the users service)".into(), format!("curl -s {base}/api/users")),
        ("One product by id".into(), format!("curl -s {base}/api/products/2")),
        ("Template rewrite: /v2/people/{id} -> users service /users/{id}".into(), format!("curl -s {base}/v2/people/1")),
        ("Create an order (POST allowed on this route)".into(), format!("curl -s -X POST -H 'content-type: application/json' -d '{{\"product_ids\":[1]}}' {base}/api/orders")),
        ("What the backend sees: request id, X-Forwarded-*".into(), format!("curl -s -H 'x-request-id: demo-123' {base}/api/users/echo")),
        ("Host-based route: admin.localhost goes to the orders service".into(), format!("curl -s -H 'host: admin.localhost' {base}/echo")),
        ("Method not allowed (405 with Allow)".into(), format!("curl -si -X DELETE {base}/api/products")),
        ("No route (404 JSON error)".into(), format!("curl -s {base}/nowhere")),
        ("JWT route with the demo token (EdDSA, signed by a key made at start): the backend sees X-Consumer-Name and X-User-Id".into(), format!("curl -s -H 'authorization: Bearer {token}' {base}/secure/users/echo")),
        ("The same JWT route without a token (401 with WWW-Authenticate)".into(), format!("curl -si {base}/secure/users")),
        ("API-key route with partner-shop's key".into(), format!("curl -s -H 'x-api-key: {DEMO_API_KEY}' {base}/partner/products")),
        ("The same API-key route without the key (401)".into(), format!("curl -si {base}/partner/products")),
        ("Retries: the service has a broken target (always 500) beside the products backend; each failed try is retried on the other target, so every request gets 200".into(), format!("for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{{http_code}} ' {base}/resilient/products; done; echo")),
        ("Circuit breaker: 3 failures in a row open it for 5 s; then 503 circuit_open without calling the backend (curl -si shows Retry-After)".into(), format!("for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{{http_code}} ' {base}/unstable; done; echo")),
        ("5 s later the breaker lets a probe through; with x-demo-heal the flaky backend answers, so the breaker closes".into(), format!("sleep 5; for i in 1 2 3; do curl -s -o /dev/null -w '%{{http_code}} ' -H 'x-demo-heal: 1' {base}/unstable; done; echo")),
        ("Response cache: the products listing is kept for 10 s; the first request is a MISS, the second a HIT (X-Cache)".into(), format!("for i in 1 2; do curl -s -o /dev/null -D - {base}/api/products | grep -i '^x-cache'; done")),
        ("Aggregation: one call answers with the user, their orders (a second call that uses the user's id from the first answer) and the products in them (a third call using the orders' product ids)".into(), format!("curl -s {base}/api/profile/1")),
        ("API versioning by path: v1 of the catalog is deprecated (-i shows Deprecation and Sunset headers); v2 comes from another backend, with prices in a currency".into(), format!("curl -si {base}/v1/catalog/2")),
        ("The same product from v2 (no Deprecation header)".into(), format!("curl -si {base}/v2/catalog/2")),
        ("OpenAPI: a user that breaks the users API's description is refused with 400 and the list of problems".into(), format!("curl -s -X POST -H 'content-type: application/json' -d '{{\"name\":\"\",\"email\":\"not-an-email\"}}' {base}/checked/users")),
        ("OpenAPI mock: the reviews API exists only in the description; the gateway answers from its examples (a Prefer header picks another answer: example=none, or code= a documented status)".into(), format!("curl -s -H 'prefer: example=two' {base}/mock/products/2/reviews")),
        #[cfg(feature = "wasm")]
        ("Plugin (a proxy-wasm filter built with the AssemblyScript SDK): /plugin refuses requests without an x-demo-tenant header (403 JSON error)".into(), format!("curl -si {base}/plugin/users")),
        #[cfg(feature = "wasm")]
        ("The same with the header: the filter adds x-tenant to the request (the backend's echo shows it) and x-plugin: tenant-gate to the response".into(), format!("curl -si -H 'x-demo-tenant: acme' {base}/plugin/users/echo")),
        ("Rate limit: 5 requests per minute per client IP on /limited; the 6th and 7th get 429 (then see the headers with curl -si)".into(), format!("for i in 1 2 3 4 5 6 7; do curl -s -o /dev/null -w '%{{http_code}} ' {base}/limited/products; done; echo")),
    ]
}
