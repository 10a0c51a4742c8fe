//! `portico consumers ...`: the consumer store's admin API from the command line. Each command
//! is one HTTP call to a node's admin listener (any node: the change reaches the others); the
//! answer's JSON is printed, and an error answer is printed to stderr with a failing exit code.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Where the admin API is and how to authenticate.
#[derive(Args, Debug)]
pub struct ConsumersArgs {
    /// The admin API of any node.
    #[arg(long, env = "PORTICO_ADMIN", default_value = "http://127.0.0.1:9901")]
    pub admin: String,
    /// The admin token (`admin.token`); better given in the environment.
    #[arg(long, env = "PORTICO_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: ConsumersCommand,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum ConsumersCommand {
    /// List the stored consumers.
    List,
    /// Show one consumer (by id or name).
    Get {
        /// Id or name.
        consumer: String,
    },
    /// Create a consumer.
    Create {
        /// Its unique name.
        name: String,
        /// A stable id (default: generated).
        #[arg(long)]
        id: Option<String>,
        /// A group (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// A plan declared under `plans:`.
        #[arg(long)]
        plan: Option<String>,
        /// Metadata, a JSON object.
        #[arg(long)]
        metadata: Option<String>,
    },
    /// Change a consumer's name, groups, plan or metadata.
    Update {
        /// Id or name.
        consumer: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// The groups (repeatable; replaces them all).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// A plan declared under `plans:`.
        #[arg(long, conflicts_with = "no_plan")]
        plan: Option<String>,
        /// Remove the consumer's plan.
        #[arg(long)]
        no_plan: bool,
        /// Metadata, a JSON object (replaces it).
        #[arg(long)]
        metadata: Option<String>,
    },
    /// Delete a consumer with all its credentials.
    Delete {
        /// Id or name.
        consumer: String,
    },
    /// Create an API key; it is printed once and cannot be shown again.
    AddKey {
        /// Id or name.
        consumer: String,
        /// A label.
        #[arg(long)]
        label: Option<String>,
        /// Lifetime, e.g. `90d`.
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// List a consumer's keys (ids and prefixes, never the keys).
    Keys {
        /// Id or name.
        consumer: String,
    },
    /// Give a key an expiry (rotation: the old key, once clients have the new one).
    ExpireKey {
        /// Id or name.
        consumer: String,
        /// The key's id (`k_...`).
        key_id: String,
        /// How long from now, e.g. `1h`.
        #[arg(long = "in")]
        expires_in: String,
    },
    /// Revoke a key at once on every node.
    RevokeKey {
        /// Id or name.
        consumer: String,
        /// The key's id (`k_...`).
        key_id: String,
    },
    /// Add a basic-auth credential; the password is read from stdin (one line).
    AddBasic {
        /// Id or name.
        consumer: String,
        /// The user name.
        username: String,
    },
    /// List a consumer's basic-auth credentials.
    Basic {
        /// Id or name.
        consumer: String,
    },
    /// Delete a basic-auth credential.
    DeleteBasic {
        /// Id or name.
        consumer: String,
        /// The credential's id (`b_...`).
        id: String,
    },
    /// Bind a token subject to a consumer.
    AddSubject {
        /// Id or name.
        consumer: String,
        /// The claim value.
        subject: String,
    },
    /// List a consumer's subject bindings.
    Subjects {
        /// Id or name.
        consumer: String,
    },
    /// Delete a subject binding.
    DeleteSubject {
        /// Id or name.
        consumer: String,
        /// The binding's id (`s_...`).
        id: String,
    },
}

/// Runs one command; `Ok(true)` when the API accepted it.
pub fn run(args: &ConsumersArgs) -> anyhow::Result<bool> {
    use ConsumersCommand as C;
    let enc = |s: &str| -> String { form_urlencoded::byte_serialize(s.as_bytes()).collect() };
    let metadata = |m: &Option<String>| -> anyhow::Result<Option<Value>> {
        m.as_deref()
            .map(|t| serde_json::from_str(t).map_err(|e| anyhow::anyhow!("--metadata: {e}")))
            .transpose()
    };
    let (method, path, body) = match &args.command {
        C::List => ("GET", "/consumers".to_string(), None),
        C::Get { consumer } => ("GET", format!("/consumers/{}", enc(consumer)), None),
        C::Create {
            name,
            id,
            groups,
            plan,
            metadata: m,
        } => {
            let mut b = json!({"name": name, "groups": groups});
            if let Some(id) = id {
                b["id"] = json!(id);
            }
            if let Some(p) = plan {
                b["plan"] = json!(p);
            }
            if let Some(m) = metadata(m)? {
                b["metadata"] = m;
            }
            ("POST", "/consumers".to_string(), Some(b))
        }
        C::Update {
            consumer,
            name,
            groups,
            plan,
            no_plan,
            metadata: m,
        } => {
            let mut b = json!({});
            if let Some(n) = name {
                b["name"] = json!(n);
            }
            if !groups.is_empty() {
                b["groups"] = json!(groups);
            }
            if let Some(p) = plan {
                b["plan"] = json!(p);
            }
            if *no_plan {
                b["plan"] = Value::Null;
            }
            if let Some(m) = metadata(m)? {
                b["metadata"] = m;
            }
            ("PATCH", format!("/consumers/{}", enc(consumer)), Some(b))
        }
        C::Delete { consumer } => ("DELETE", format!("/consumers/{}", enc(consumer)), None),
        C::AddKey {
            consumer,
            label,
            expires_in,
        } => (
            "POST",
            format!("/consumers/{}/keys", enc(consumer)),
            Some(json!({"label": label, "expires_in": expires_in})),
        ),
        C::Keys { consumer } => ("GET", format!("/consumers/{}/keys", enc(consumer)), None),
        C::ExpireKey {
            consumer,
            key_id,
            expires_in,
        } => (
            "PATCH",
            format!("/consumers/{}/keys/{}", enc(consumer), enc(key_id)),
            Some(json!({"expires_in": expires_in})),
        ),
        C::RevokeKey { consumer, key_id } => (
            "DELETE",
            format!("/consumers/{}/keys/{}", enc(consumer), enc(key_id)),
            None,
        ),
        C::AddBasic { consumer, username } => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            (
                "POST",
                format!("/consumers/{}/basic", enc(consumer)),
                Some(json!({"username": username, "password": password})),
            )
        }
        C::Basic { consumer } => ("GET", format!("/consumers/{}/basic", enc(consumer)), None),
        C::DeleteBasic { consumer, id } => (
            "DELETE",
            format!("/consumers/{}/basic/{}", enc(consumer), enc(id)),
            None,
        ),
        C::AddSubject { consumer, subject } => (
            "POST",
            format!("/consumers/{}/jwt_subjects", enc(consumer)),
            Some(json!({"subject": subject})),
        ),
        C::Subjects { consumer } => (
            "GET",
            format!("/consumers/{}/jwt_subjects", enc(consumer)),
            None,
        ),
        C::DeleteSubject { consumer, id } => (
            "DELETE",
            format!("/consumers/{}/jwt_subjects/{}", enc(consumer), enc(id)),
            None,
        ),
    };
    // Absent optional fields, not `null`s the API would take as "clear".
    let body = body.map(|mut b| {
        if let Value::Object(m) = &mut b {
            if method == "POST" {
                m.retain(|_, v| !v.is_null());
            }
        }
        b
    });
    let (status, text) = call(args, method, &path, body.as_ref())?;
    if status < 400 {
        if !text.trim().is_empty() {
            println!("{}", text.trim_end());
        }
        return Ok(true);
    }
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .map(|v| {
            let mut m = v["message"].as_str().unwrap_or("").to_string();
            for e in v["errors"].as_array().into_iter().flatten() {
                m.push_str(&format!(
                    "\n  {}: {}",
                    e["path"].as_str().unwrap_or(""),
                    e["message"].as_str().unwrap_or("")
                ));
            }
            m
        })
        .unwrap_or(text);
    eprintln!("portico consumers: {status}: {message}");
    Ok(false)
}

/// One HTTP/1.1 exchange with the admin API (plain HTTP, as the admin listener serves).
fn call(
    args: &ConsumersArgs,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, String)> {
    let authority = args
        .admin
        .strip_prefix("http://")
        .unwrap_or(&args.admin)
        .trim_end_matches('/');
    if args.admin.starts_with("https://") {
        anyhow::bail!("--admin: the admin API speaks plain HTTP (put TLS in front of it with a proxy that holds the token)");
    }
    let mut stream = TcpStream::connect(authority)
        .map_err(|e| anyhow::anyhow!("cannot reach the admin API at {authority}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = &args.token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Ok(user) = std::env::var("USER") {
        if !user.is_empty() && user.bytes().all(|b| b.is_ascii_graphic()) {
            req.push_str(&format!("X-Portico-Actor: {user}\r\n"));
        }
    }
    req.push_str("\r\n");
    req.push_str(&body);
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP answer from {authority}"))?;
    Ok((status, rest.to_string()))
}
