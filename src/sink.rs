//! The file sink, for consumers that can only read a file: each new token of a client is
//! written to a file of its own, replaced atomically (temporary file beside it with the final
//! mode and owner, fsync, rename), so a reader never sees a partial or mixed file. The sink's
//! directory may belong to the consumer, so the write follows nothing the consumer can plant
//! there ([`crate::host::atomic_file`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tokio::task::JoinHandle;
use tracing::{debug, error, warn};

use crate::host::accounts::{gid_of, uid_of};
use crate::host::atomic_file::{self, Durability, Entry, Perms, SafeDir, Trust};
use crate::host::file_mode;
use crate::host::unix_time::since_epoch;
use crate::store::{ClientSlot, Token};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    pub path: PathBuf,
    /// Octal file mode (default "0600").
    #[serde(default = "default_mode")]
    pub mode: String,
    /// User and group to own the file (names or ids); unchanged when unset.
    pub owner: Option<String>,
    pub group: Option<String>,
    #[serde(default)]
    pub format: SinkFormat,
}

fn default_mode() -> String {
    "0600".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkFormat {
    /// The bare token and a newline.
    #[default]
    Token,
    /// A JSON object: access_token, token_type, scopes, expires_at (RFC 3339 and Unix seconds).
    Json,
}

/// A sink ready to write: the config with mode and owner resolved.
#[derive(Debug, Clone)]
pub struct FileSink {
    path: PathBuf,
    mode: u32,
    owner: Option<u32>,
    group: Option<u32>,
    format: SinkFormat,
}

impl FileSinkConfig {
    /// Checks and resolves the settings; errors name the key.
    pub fn resolve(&self) -> Result<FileSink, (&'static str, String)> {
        if !self.path.is_absolute() {
            return Err((
                "path",
                format!("{} must be an absolute path", self.path.display()),
            ));
        }
        let mode = file_mode::parse(&self.mode, "0640").map_err(|e| ("mode", e.to_string()))?;
        let owner = match &self.owner {
            None => None,
            Some(name) => Some(uid_of(name).map_err(|reason| ("owner", reason))?),
        };
        let group = match &self.group {
            None => None,
            Some(name) => Some(gid_of(name).map_err(|reason| ("group", reason))?),
        };
        check_path(&self.path, &Trust::sink(owner)).map_err(|reason| ("path", reason))?;
        Ok(FileSink {
            path: self.path.clone(),
            mode,
            owner,
            group,
            format: self.format,
        })
    }
}

impl FileSink {
    fn content(&self, token: &Token) -> String {
        match self.format {
            SinkFormat::Token => format!("{}\n", token.access_token.expose()),
            SinkFormat::Json => {
                let expires = since_epoch(token.expires_wall()).as_secs();
                let mut text = serde_json::json!({
                    "access_token": token.access_token.expose(),
                    "token_type": token.token_type.as_str(),
                    "scopes": token.scopes().collect::<Vec<_>>(),
                    "expires_at": crate::serve::service::rfc3339(token.expires_wall()),
                    "expires_at_unix": expires,
                })
                .to_string();
                text.push('\n');
                text
            }
        }
    }

    /// Replaces the file with `content`, atomically.
    fn write(&self, content: &str) -> std::io::Result<()> {
        let perms = Perms {
            mode: self.mode,
            owner: self.owner,
            group: self.group,
        };
        // The directory is checked again at every write: it may have changed since the load.
        atomic_file::replace(
            &self.path,
            content.as_bytes(),
            perms,
            &Trust::sink(self.owner),
            Durability::Durable,
        )
    }
}

/// A sink's directory must be one only trusted users can write (see [`crate::host::atomic_file`]),
/// and its path a regular file or nothing yet: a symlink there would send the token wherever
/// whoever made it chose (writes replace such a symlink; refusing it tells the operator).
fn check_path(path: &Path, trust: &Trust) -> Result<(), String> {
    let (dir, name) = atomic_file::split(path).map_err(|e| e.to_string())?;
    let dir = SafeDir::open(dir, trust).map_err(|e| e.to_string())?;
    let shown = dir.path().join(name);
    match dir.entry(name) {
        Ok(Entry::Missing | Entry::File) => Ok(()),
        Ok(Entry::Symlink) => Err(format!(
            "{} is a symlink; a file sink must be a regular file tokend replaces, not a link to one",
            shown.display()
        )),
        Ok(Entry::Other) => Err(format!(
            "{} exists and is not a regular file",
            shown.display()
        )),
        Err(e) => Err(format!("{}: cannot inspect: {e}", shown.display())),
    }
}

/// Writes every new token of `slot` to the sink until the client goes away (its slot is
/// dropped) or the returned task is aborted (the client's sink changed).
pub fn spawn(slot: &Arc<ClientSlot>, sink: FileSink) -> JoinHandle<()> {
    let mut changes = slot.subscribe();
    let name = slot.name.clone();
    tokio::spawn(async move {
        let mut written = 0;
        loop {
            let token = changes
                .borrow_and_update()
                .token
                .clone()
                .filter(|t| t.generation != written);
            if let Some(token) = token {
                written = token.generation;
                let sink = sink.clone();
                let path = sink.path.clone();
                // All the work on a token runs in its own task, so that a panic there costs
                // that one write (logged) and this writer carries on with the next token.
                let write = move || sink.write(&sink.content(&token));
                match tokio::task::spawn_blocking(write).await {
                    Ok(Ok(())) => {
                        debug!(client = %name, path = %path.display(), "token written to file sink")
                    }
                    Ok(Err(e)) => {
                        warn!(client = %name, path = %path.display(), "cannot write file sink: {e}")
                    }
                    Err(e) if e.is_panic() => error!(
                        client = %name,
                        path = %path.display(),
                        "file sink write panicked: {}; writing the next token again",
                        crate::panics::panic_text(&e.into_panic())
                    ),
                    Err(e) => warn!(client = %name, "file sink task failed: {e}"),
                }
            }
            if changes.changed().await.is_err() {
                break;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn bad_settings_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let ok = FileSinkConfig {
            path: dir.path().join("t"),
            mode: "0640".into(),
            owner: Some("root".into()),
            group: Some("0".into()),
            format: SinkFormat::Json,
        };
        let sink = ok.resolve().unwrap();
        assert_eq!(
            (sink.mode, sink.owner, sink.group),
            (0o640, Some(0), Some(0))
        );
        let bad = |f: fn(&mut FileSinkConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.resolve().unwrap_err().0
        };
        assert_eq!(bad(|c| c.path = "relative".into()), "path");
        assert_eq!(bad(|c| c.path = "/no/such/dir/t".into()), "path");
        assert_eq!(bad(|c| c.mode = "rw".into()), "mode");
        assert_eq!(bad(|c| c.owner = Some("no-such-user-xyz".into())), "owner");
        assert_eq!(bad(|c| c.group = Some("no-such-group-xyz".into())), "group");
    }

    #[test]
    fn directories_others_can_write_and_symlinked_paths_are_refused() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("consumer");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        let config = |owner: Option<&str>| FileSinkConfig {
            path: dir.join("t"),
            mode: "0600".into(),
            owner: owner.map(Into::into),
            group: None,
            format: SinkFormat::Token,
        };
        let (key, reason) = config(None).resolve().unwrap_err();
        assert_eq!(key, "path");
        assert!(
            reason.contains(&dir.display().to_string())
                && reason.contains("uid 65534")
                && reason.contains("0755"),
            "{reason}"
        );
        assert!(config(Some("65534")).resolve().is_ok(), "the sink's owner");
        std::os::unix::fs::symlink("/etc/passwd", dir.join("t")).unwrap();
        let (_, reason) = config(Some("65534")).resolve().unwrap_err();
        assert!(reason.contains("is a symlink"), "{reason}");
    }

    #[test]
    fn write_replaces_the_file_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSinkConfig {
            path: dir.path().join("t"),
            mode: "0640".into(),
            owner: None,
            group: None,
            format: SinkFormat::Token,
        }
        .resolve()
        .unwrap();
        sink.write("one\n").unwrap();
        sink.write("two\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("t")).unwrap(),
            "two\n"
        );
        let mode = std::fs::metadata(dir.path().join("t"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }
}
