//! The `portico` command line: parse arguments, set up logging, call into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use portico::telemetry::app_log;

/// mimalloc instead of glibc's malloc: a request allocates a few header maps, buffers and boxes,
/// and glibc spent about 2,000 instructions per proxied request on them (7 % of the request,
/// by callgrind), most in its bins for blocks over 1 KiB (a header map's entries) and in
/// `free`. mimalloc's per-thread free lists fit one worker thread per core. Built without its
/// transparent-huge-page advice (`no_thp`): with it, the first arena was backed by 2 MiB pages
/// and an idle gateway's RSS went from 12 to 24 MB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Portico: a lightweight, fast API gateway.
#[derive(Parser)]
#[command(name = "portico", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve traffic with a config file (SIGHUP reloads it, SIGTERM drains and exits).
    Run {
        /// The config file.
        #[arg(short, long, default_value = "portico.yaml")]
        config: PathBuf,
        /// Also reload when the file changes on disk.
        #[arg(long)]
        watch: bool,
    },
    /// Check a config file: exit 0 when valid, else print every error as FILE:LINE:COL: path: message.
    Validate {
        /// The config file.
        file: PathBuf,
    },
    /// Start three demo backends and the gateway in front of them, and print curl commands to try.
    Demo {
        /// Where the demo gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Where the demo's admin API listens.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin_listen: String,
        /// Also serve HTTPS, with a self-signed certificate made at start.
        #[arg(long)]
        tls: bool,
        /// Where the demo's HTTPS listener listens (with --tls).
        #[arg(long, default_value = "127.0.0.1:8443")]
        tls_listen: String,
    },
    /// Print the JSON Schema of the config file (for editor validation and completion).
    Schema,
    /// Manage the consumer store (`consumers: {store: redis}`) through a node's admin API.
    Consumers(portico::admin::cli::ConsumersArgs),
    /// Show which route a request would match and why, without sending it.
    Explain {
        /// The config file.
        #[arg(short, long, default_value = "portico.yaml")]
        config: PathBuf,
        /// The request method, e.g. GET.
        method: String,
        /// The request URL, e.g. http://api.example.com/users/7.
        url: String,
        /// A request header, `name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
    /// OpenAPI tools.
    #[command(subcommand)]
    Openapi(OpenapiCommand),
}

#[derive(Subcommand)]
enum OpenapiCommand {
    /// Print a config with one route per operation of an OpenAPI 3.0/3.1 spec (JSON or YAML),
    /// its service and security schemes, and an `openapi` policy checking requests against it.
    Import {
        /// The spec file.
        spec: PathBuf,
        /// The service's name (default: from the spec's title), optionally with its upstream:
        /// `users=http://127.0.0.1:9000` (default: the spec's first server).
        #[arg(long)]
        service: Option<String>,
        /// A path prefix for every route, e.g. /api.
        #[arg(long)]
        prefix: Option<String>,
    },
}

/// A panic while loading a config is caught and reported as a config error (see
/// `portico::config::guard`), so the default hook's message and backtrace would only repeat it
/// as if the process had crashed.
fn quiet_config_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !portico::config::guard::containing() {
            default(info);
        }
    }));
}

fn main() -> ExitCode {
    quiet_config_panics();
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("portico: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config, watch } => {
            // The log is set up before the gateway loads the config for real (which logs), so
            // its settings are read here; a broken file gets the defaults and then its errors.
            let (level, format) = portico::config::parse_str(
                &portico::config::read_file(&config)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?,
                &config.display().to_string(),
                &portico::config::expand::ProcessEnv,
            )
            .map(|raw| (raw.log_level, raw.log_format))
            .unwrap_or_else(|_| ("info".to_string(), Default::default()));
            app_log::init(&level, format);
            match portico::run(&config, watch) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(portico::StartError::Config(errors)) => {
                    eprintln!("{errors}");
                    Ok(ExitCode::FAILURE)
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Validate { file } => match portico::config::load_file(&file) {
            Ok(plan) => {
                println!(
                    "{}: ok ({} routes, {} services)",
                    file.display(),
                    plan.plan.routes.len(),
                    plan.plan.services.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                eprintln!("{errors}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Openapi(OpenapiCommand::Import {
            spec,
            service,
            prefix,
        }) => {
            let options = portico::openapi::import::Options { service, prefix };
            match portico::openapi::import::import(&spec, &options) {
                Ok(out) => {
                    print!("{}", out.config);
                    for line in &out.untranslated {
                        eprintln!("not translated: {line}");
                    }
                    eprintln!("{} routes", out.routes);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Consumers(args) => Ok(if portico::admin::cli::run(&args)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&portico::config::json_schema())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain {
            config,
            method,
            url,
            headers,
        } => {
            let loaded = portico::config::load_file(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            print!(
                "{}",
                portico::explain::explain(&loaded, &method, &url, &headers)?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            listen,
            admin_listen,
            tls,
            tls_listen,
        } => {
            app_log::init("info", app_log::LogFormat::Text);
            demo(&listen, &admin_listen, tls.then_some(tls_listen.as_str()))
        }
    }
}

fn demo(listen: &str, admin_listen: &str, tls_listen: Option<&str>) -> anyhow::Result<ExitCode> {
    let backends_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let ports = backends_rt.block_on(portico::demo::start_backends())?;
    let key = portico::demo::DemoKey::generate().context("cannot make the demo signing key")?;
    let spec =
        portico::demo::write_openapi_spec().context("cannot write the demo's OpenAPI spec")?;
    let env = portico::demo::DemoEnv(
        &ports,
        listen.to_string(),
        key.public_x().to_string(),
        admin_listen.to_string(),
        spec.display().to_string(),
    );
    let cert = match tls_listen {
        Some(_) => Some(
            portico::demo::tls::DemoCert::generate().context("cannot make the demo certificate")?,
        ),
        None => None,
    };
    let mut yaml = portico::demo::DEMO_YAML.to_string();
    #[cfg(feature = "wasm")]
    let plugin = {
        let (path, route) =
            portico::demo::write_plugin().context("cannot write the demo's plugin")?;
        yaml.push_str(&route);
        path
    };
    if let (Some(cert), Some(addr)) = (&cert, tls_listen) {
        yaml.push_str(&cert.yaml(addr));
    }
    let plan = portico::config::load_str(&yaml, "examples/demo.yaml", &env)
        .map_err(|e| anyhow::anyhow!("{e}"));
    // Read at load; the demo's config is never reloaded from disk.
    let _ = std::fs::remove_file(&spec);
    #[cfg(feature = "wasm")]
    let _ = std::fs::remove_file(&plugin);
    let plan = plan?;
    let gateway = portico::Gateway::start(plan, None).with_context(|| {
        format!(
            "cannot start the demo gateway on {listen} with its admin API on {admin_listen} \
             (use --listen and --admin-listen to pick other addresses)"
        )
    })?;
    let plain = format!("http://{}", gateway.local_addrs()[0]);
    let base = match &cert {
        // curl trusts the demo's self-signed certificate with --cacert.
        Some(cert) => format!(
            "--cacert {} https://{}",
            cert.cert.display(),
            gateway.local_addrs()[1]
        ),
        None => plain.clone(),
    };
    match &cert {
        Some(cert) => {
            println!(
                "\nPortico demo gateway on https://{} (self-signed certificate {}; plain HTTP on {plain})",
                gateway.local_addrs()[1],
                cert.cert.display()
            );
        }
        None => println!("\nPortico demo gateway on {base}"),
    }
    println!(
        "backends: users 127.0.0.1:{}, products 127.0.0.1:{} (v2: {}), orders 127.0.0.1:{}",
        ports.users, ports.products, ports.products_v2, ports.orders
    );
    let token = key.token("ada", std::time::Duration::from_secs(24 * 3600));
    println!("\ndemo JWT (sub: ada, valid 24 h, signed by a key made for this run):\n  {token}\n");
    if let Some(admin) = gateway.admin_addr() {
        println!("dashboard: http://{admin}/   (live requests/s, errors, latency, targets)");
        println!("admin API: curl -s http://{admin}/status   (also /routes, /services, /config, /readyz, POST /reload)");
    }
    println!("access log: JSON lines on stdout. Press Ctrl-C to stop.\n\nTry:\n");
    for (what, cmd) in portico::demo::curl_commands(&base, &token) {
        println!("  # {what}\n  {cmd}\n");
    }
    if cert.is_some() {
        println!("  # HTTP/2 over TLS (ALPN h2): the response head says HTTP/2\n  curl -s --http2 -D - -o /dev/null {base}/api/products/1\n");
    }
    backends_rt.block_on(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    gateway.shutdown();
    Ok(ExitCode::SUCCESS)
}
