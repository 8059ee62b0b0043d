//! Log output: human-readable text (coloured at a terminal; plain, without timestamps, under
//! systemd, whose journal stamps every line itself) or one JSON object per line. `RUST_LOG`
//! filters either (default `info`).

use std::io::IsTerminal;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber writing to stderr.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        // systemd sets INVOCATION_ID for the processes of a unit.
        LogFormat::Text if std::env::var_os("INVOCATION_ID").is_some() => {
            builder.with_ansi(false).without_time().init()
        }
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
    }
}
