//! The `tokend` binary: parses the command line, sets up logging, and hands over to the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokend::Config;
use tokend::cli::{ctl, demo};

/// sysexits.h: configuration error.
const EX_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    version,
    about = "Keeps OAuth 2.0 access tokens fresh and serves them to local processes over gRPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr: text, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: tokend::logging::LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground until SIGTERM or SIGINT.
    ///
    /// Example: tokend serve --config /etc/tokend/tokend.toml
    Serve {
        #[arg(long, short, default_value = "/etc/tokend/tokend.toml")]
        config: PathBuf,
    },
    /// Validate a config file; exit 0, or print file, key and reason and exit 78. An issuer
    /// whose metadata cannot be read is a warning (the daemon retries it), not an error.
    ///
    /// Example: tokend check --config /etc/tokend/tokend.toml
    Check {
        #[arg(long, short, default_value = "/etc/tokend/tokend.toml")]
        config: PathBuf,
    },
    /// Print a client's access token (and only that), for shell use.
    ///
    /// Example: curl -H "Authorization: Bearer $(tokend get billing)" https://api.example.com/
    Get {
        /// The client's name in the config ([clients.NAME]).
        client: String,
        #[arg(long, env = "TOKEND_SOCKET", default_value = ctl::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Only accept a token valid for at least this many seconds (waits for a refresh).
        #[arg(long, default_value_t = 0)]
        min_valid: u32,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Print a JSON object (token, type, scopes, expiry) instead of the bare token.
        #[arg(long)]
        json: bool,
    },
    /// Show every client's state, scopes and expiry.
    ///
    /// Example: tokend status --socket /run/tokend/tokend.sock
    Status {
        #[arg(long, env = "TOKEND_SOCKET", default_value = ctl::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Exit 0 if the daemon is ready (every client marked required holds a valid token), 1
    /// otherwise or if it cannot be reached: for exec probes (Kubernetes, Docker, monitoring).
    ///
    /// Example: tokend health --socket /run/tokend/tokend.sock
    Health {
        #[arg(long, env = "TOKEND_SOCKET", default_value = ctl::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Only ask whether the server runs (a liveness probe), not whether its tokens are ready.
        #[arg(long)]
        live: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// Authorize a refresh-token client once: open the printed URL, approve, and the refresh
    /// token is stored in the client's refresh_token_file (the running daemon picks it up).
    ///
    /// Example: tokend authorize likeco --config /etc/tokend/tokend.toml
    ///
    /// Without a browser on this host: open the URL elsewhere, then paste the code (or the whole
    /// redirect URL) with: tokend authorize likeco --config ... --code CODE
    Authorize {
        client: String,
        #[arg(long, short, default_value = "/etc/tokend/tokend.toml")]
        config: PathBuf,
        /// Exchange this code (or redirect URL) instead of waiting for the browser's redirect.
        #[arg(long, conflicts_with = "device")]
        code: Option<String>,
        /// Use the device authorization grant (RFC 8628): print a URL and a code to enter on
        /// any device with a browser, and wait until they are approved there.
        #[arg(long)]
        device: bool,
        /// How long to wait for the browser's redirect, in seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Print the public key of a private key file as a JWK Set, to register with the provider
    /// for auth_method = "private_key_jwt".
    ///
    /// Example: tokend jwk --key /etc/tokend/billing.key --kid billing-2026
    Jwk {
        /// The private key (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC), as client_key_file names it.
        #[arg(long)]
        key: PathBuf,
        /// The key's id (`kid`), as client_key_id names it.
        #[arg(long)]
        kid: Option<String>,
        /// The algorithm, as client_assertion_alg names it (default: by key type).
        #[arg(long)]
        alg: Option<String>,
    },
    /// Start a built-in demo token endpoint and the daemon against it.
    ///
    /// Example: tokend demo, then in another terminal: tokend get demo-basic --socket /tmp/tokend-demo.sock
    Demo {
        /// Socket to serve on (default: tokend-demo.sock in the temp directory).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tokend::logging::init(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Serve { config } => serve(config).await,
            Command::Check { config } => match Config::load_async(&config).await {
                Ok(c) => {
                    // The daemon retries what these name; they do not make the config invalid.
                    for warning in tokend::cli::endpoints::warnings(&c).await {
                        eprintln!("tokend: warning: {warning}");
                    }
                    println!("{}: ok, {} client(s)", config.display(), c.clients.len());
                    for line in c.explain_access() {
                        println!("{line}");
                    }
                    for note in c.notes() {
                        eprintln!("{}: note: {note}", config.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(EX_CONFIG, e),
            },
            Command::Get {
                client,
                socket,
                min_valid,
                timeout,
                json,
            } => match ctl::get(&socket, &client, min_valid, Duration::from_secs(timeout)).await {
                Ok(token) if json => {
                    println!("{}", ctl::token_json(&token, std::time::SystemTime::now()));
                    ExitCode::SUCCESS
                }
                Ok(token) => {
                    println!("{}", token.access_token);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1, e),
            },
            Command::Status { socket } => match ctl::status(&socket).await {
                Ok(table) => {
                    print!("{table}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1, e),
            },
            Command::Health {
                socket,
                live,
                timeout,
            } => {
                let probe = if live {
                    ctl::Probe::Live
                } else {
                    ctl::Probe::Ready
                };
                match ctl::health(&socket, probe, Duration::from_secs(timeout)).await {
                    Ok(true) => ExitCode::SUCCESS,
                    Ok(false) if live => fail(1, "tokend is not serving"),
                    Ok(false) => fail(
                        1,
                        "not ready: a required client holds no valid token (see tokend status)",
                    ),
                    Err(e) => fail(1, e),
                }
            }
            Command::Authorize {
                client,
                config,
                device: true,
                ..
            } => authorize_device(&config, &client).await,
            Command::Authorize {
                client,
                config,
                code,
                timeout,
                ..
            } => authorize(&config, &client, code, Duration::from_secs(timeout)).await,
            Command::Jwk { key, kid, alg } => {
                match tokend::cli::jwk::jwks(&key, kid.as_deref(), alg.as_deref()) {
                    Ok(set) => {
                        println!("{set}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(1, e),
                }
            }
            Command::Demo { socket } => run_demo(socket.unwrap_or_else(demo::default_socket)).await,
        }
    });
    // A read stuck on a hung file system (see tokend::host::offload) must not hold up the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

async fn serve(path: PathBuf) -> ExitCode {
    // Read on this thread (the one `block_on` runs, not an async worker), not on the blocking
    // pool: parsing a large config leaves its freed memory in the allocator arena of the
    // thread that did it, and this thread's arena is the one the daemon goes on using (10,000
    // clients: 74 MiB resident through the pool, 57 MiB here). Nothing else runs yet, so a file
    // on a hung mount holds only this thread, and the guard ends the start with a message.
    let guard = tokio::spawn({
        let path = path.clone();
        async move {
            tokio::time::sleep(tokend::config::LOAD_TIMEOUT).await;
            eprintln!(
                "tokend: {}: (file): reading the config and the secret files it names did not finish within {}; is one on a hung file system?",
                path.display(),
                humantime::format_duration(tokend::config::LOAD_TIMEOUT)
            );
            std::process::exit(EX_CONFIG.into());
        }
    });
    let loaded = Config::load(&path);
    guard.abort();
    let config = match loaded {
        Ok(c) => c,
        Err(e) => return fail(EX_CONFIG, e),
    };
    let hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => tokio_stream::wrappers::SignalStream::new(signal),
        Err(e) => return fail(1, format!("cannot handle SIGHUP: {e}")),
    };
    let shutdown = match shutdown_signal() {
        Ok(s) => s,
        Err(e) => return fail(1, format!("cannot handle SIGTERM and SIGINT: {e}")),
    };
    match tokend::run(config, shutdown, hangups).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, e),
    }
}

async fn authorize(path: &Path, client: &str, code: Option<String>, timeout: Duration) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return fail(EX_CONFIG, e),
    };
    let result = match code {
        Some(code) => tokend::cli::authorize::pasted(&config, client, &code).await,
        None => tokend::cli::authorize::interactive(&config, client, timeout, |url| {
            eprintln!("Open this URL in a browser and approve access for {client:?}:");
            println!("{url}");
            eprintln!(
                "Waiting for the redirect (or paste the code with --code in another terminal)..."
            );
        })
        .await,
    };
    authorized(client, result)
}

async fn authorize_device(path: &Path, client: &str) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return fail(EX_CONFIG, e),
    };
    let result = tokend::cli::device::authorize(&config, client, |prompt| {
        eprintln!(
            "On any device with a browser, open this URL and enter the code to approve access for {client:?} (within {}):",
            humantime::format_duration(prompt.expires_in)
        );
        println!("Open: {}", prompt.verification_uri);
        println!("Code: {}", prompt.user_code);
        if let Some(complete) = &prompt.verification_uri_complete {
            println!("Or open (code included): {complete}");
        }
        eprintln!("Waiting for the approval...");
    })
    .await;
    authorized(client, result)
}

/// How `tokend authorize` ends, whichever flow it ran.
fn authorized(client: &str, result: Result<PathBuf, impl std::fmt::Display>) -> ExitCode {
    match result {
        Ok(file) => {
            eprintln!(
                "Authorized {client:?}: refresh token stored in {}; a running tokend picks it up within seconds.",
                file.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, e),
    }
}

async fn run_demo(socket: PathBuf) -> ExitCode {
    let secrets = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return fail(1, e),
    };
    let shutdown = match shutdown_signal() {
        Ok(s) => s,
        Err(e) => return fail(1, format!("cannot handle SIGTERM and SIGINT: {e}")),
    };
    let result = async {
        let endpoint = demo::start_endpoint().await?;
        let config = demo::config(&endpoint, &socket, secrets.path())?;
        eprintln!("{}", demo::instructions(&socket, &endpoint));
        // The demo's config is built in memory: there is nothing to reload.
        tokend::run(config, shutdown, tokio_stream::pending()).await?;
        Ok::<_, demo::DemoError>(())
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, e),
    }
}

/// One line on stderr, then the exit code.
fn fail(code: u8, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("tokend: {e}");
    ExitCode::from(code)
}

/// SIGTERM or SIGINT, installed before the daemon starts: a handler that cannot be installed
/// is an error at start-up, not a panic inside the running daemon.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        // `None` means the runtime's signal driver is gone, which only happens as the process
        // ends: stopping in order is all there is left to do.
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
