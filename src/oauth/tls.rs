//! Per-client TLS: the client certificate and key of the mTLS methods (RFC 8705) and a client's
//! own trusted CAs (`ca_file`). A client with either gets an HTTP client of its own, built from
//! its files and rebuilt when one of them changes (rotation without a restart); every other
//! client shares the daemon's one ([`super::http_client`]).
//!
//! Before each request the files are `stat`ed (on the blocking pool, as every file access of
//! the daemon is): the same (device, inode, size, mtime, ctime) as when the client was built
//! means the same files, and the built client is reused; anything else reads them again. A
//! failed build is not kept, so a repaired file (even a `chmod`, which changes only ctime) is
//! picked up by the next attempt.

use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretSlice};

use super::settings::ClientSettings;
use crate::host::file_stamp::FileStamp;
use crate::host::offload::{self, Stalled};
use crate::secret::{self, SecretError};

/// A certificate or CA file larger than this is a mistake: a full public CA bundle is ~250 KiB.
const MAX_CERT_FILE: u64 = 1024 * 1024;

/// A client's TLS files whose contents cannot be used. Messages name the file and never carry
/// its content.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Unusable { path: PathBuf, reason: String },
    /// The private key file, held to the secret files' rules.
    #[error("{0}")]
    Key(SecretError),
    #[error(
        "{key}: holds no PEM private key (PKCS#8 \"PRIVATE KEY\", PKCS#1 \"RSA PRIVATE KEY\" or SEC1 \"EC PRIVATE KEY\")"
    )]
    NoKey { key: PathBuf },
    #[error("{key}: the private key cannot be used for TLS: {reason}")]
    BadKey { key: PathBuf, reason: String },
    #[error(
        "{cert}: the certificate does not belong to the private key in {key} (replace both together)"
    )]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("{path}: reading it {source} (is it on a hung file system?)")]
    Stalled { path: PathBuf, source: Stalled },
    #[error("cannot set up TLS with {path}: {reason}")]
    Build { path: PathBuf, reason: String },
}

/// Which file an error is about, for `tokend check`'s key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    Cert,
    Key,
    Ca,
}

impl TlsError {
    /// Whether this may pass by itself (an I/O error of the moment, a hung read); every other
    /// error needs an operator to replace or repair a file.
    pub fn is_transient(&self) -> bool {
        match self {
            TlsError::Read { source, .. } => !crate::host::io_error::needs_operator(source),
            TlsError::Key(e) => e.is_transient(),
            TlsError::Stalled { .. } => true,
            TlsError::Unusable { .. }
            | TlsError::NoKey { .. }
            | TlsError::BadKey { .. }
            | TlsError::Mismatch { .. }
            | TlsError::Build { .. } => false,
        }
    }
}

/// The files one client's TLS is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Files {
    /// Certificate chain and key, for the mTLS methods.
    identity: Option<(PathBuf, PathBuf)>,
    ca: Option<PathBuf>,
}

impl Files {
    fn of(c: &ClientSettings) -> Option<Files> {
        let rare = c.rare();
        let identity = match (&rare.client_cert, &rare.client_key) {
            (Some(cert), Some(key)) if c.auth_method.uses_tls() => {
                Some((cert.clone(), key.clone()))
            }
            _ => None,
        };
        (identity.is_some() || rare.ca_file.is_some()).then(|| Files {
            identity,
            ca: rare.ca_file.clone(),
        })
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        let (cert, key) = match &self.identity {
            Some((cert, key)) => (Some(cert.as_path()), Some(key.as_path())),
            None => (None, None),
        };
        [cert, key, self.ca.as_deref()].into_iter().flatten()
    }

    /// The file named when reading stalls.
    fn first(&self) -> &Path {
        self.paths().next().expect("Files has at least one file")
    }
}

/// Which version of the files a client was built from (`None` for a file that cannot be
/// `stat`ed: reading it will say why).
type Stamp = Vec<Option<FileStamp>>;

fn stamp(files: &Files) -> Stamp {
    files.paths().map(FileStamp::of).collect()
}

/// The files the refresher watches to retry a client stuck on rejected credentials as soon as
/// one is replaced: the certificate and key of an mTLS client, and its CA file.
pub fn watched_files(c: &ClientSettings) -> Vec<&Path> {
    let rare = c.rare();
    let mut files = Vec::new();
    if c.auth_method.uses_tls() {
        files.extend(rare.client_cert.as_deref());
        files.extend(rare.client_key.as_deref());
    }
    files.extend(rare.ca_file.as_deref());
    files
}

/// The HTTP client for one configured client's requests.
pub struct Http {
    shared: reqwest::Client,
    own: Option<Arc<Own>>,
}

struct Own {
    files: Files,
    /// The client built from the files, and their stamp when they were read.
    built: Mutex<Option<(Stamp, reqwest::Client)>>,
}

impl Http {
    /// `shared` for a client with no TLS files of its own; otherwise one built from them.
    pub fn new(shared: reqwest::Client, c: &ClientSettings) -> Http {
        let own = Files::of(c).map(|files| {
            Arc::new(Own {
                files,
                built: Mutex::new(None),
            })
        });
        Http { shared, own }
    }

    /// The client to send the next request with: the shared one, or this client's own, rebuilt
    /// first if a file changed since it was built.
    pub async fn get(&self, name: &str) -> Result<reqwest::Client, TlsError> {
        let Some(own) = &self.own else {
            return Ok(self.shared.clone());
        };
        let path = own.files.first().to_path_buf();
        let work = own.clone();
        let (client, rebuilt) = offload::run(&path, secret::READ_TIMEOUT, move || work.current())
            .await
            .map_err(|source| TlsError::Stalled { path, source })??;
        if rebuilt {
            tracing::info!(client = %name, "TLS files read; a changed certificate, key or CA file takes effect from this request");
        }
        Ok(client)
    }
}

impl Own {
    /// The built client, reading the files again if they changed; whether it was (re)built.
    fn current(&self) -> Result<(reqwest::Client, bool), TlsError> {
        let now = stamp(&self.files);
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((then, client)) = built.as_ref()
            && *then == now
        {
            return Ok((client.clone(), false));
        }
        // Stamped before reading: a file replaced while it is read is read again next time.
        let client = build(&self.files)?;
        *built = Some((now, client.clone()));
        Ok((client, true))
    }
}

/// Reads and checks the client's TLS files, as the daemon would use them; for validation at
/// load, where an error names the config key of the file it is about.
pub fn check(c: &ClientSettings) -> Result<(), (TlsFile, TlsError)> {
    let Some(files) = Files::of(c) else {
        return Ok(());
    };
    if let Some((cert, key)) = &files.identity {
        identity(cert, key).map_err(|e| (which(&e), e))?;
    }
    if let Some(ca) = &files.ca {
        roots(ca).map_err(|e| (TlsFile::Ca, e))?;
    }
    Ok(())
}

fn which(e: &TlsError) -> TlsFile {
    match e {
        TlsError::Key(_) | TlsError::NoKey { .. } | TlsError::BadKey { .. } => TlsFile::Key,
        _ => TlsFile::Cert,
    }
}

fn build(files: &Files) -> Result<reqwest::Client, TlsError> {
    let mut builder = super::source::http_client_builder();
    let mut named = files.first().to_path_buf();
    if let Some((cert, key)) = &files.identity {
        builder = builder.identity(identity(cert, key)?);
        named = cert.clone();
    }
    if let Some(ca) = &files.ca {
        // Only these CAs: the platform's store would also accept any public CA's certificate
        // for the provider's name.
        builder = builder.tls_certs_only(roots(ca)?);
        named = ca.clone();
    }
    builder.build().map_err(|e| TlsError::Build {
        path: named,
        reason: error_chain(&e),
    })
}

/// The certificate chain and private key as reqwest takes them, checked to belong together.
fn identity(cert: &Path, key: &Path) -> Result<reqwest::Identity, TlsError> {
    let chain = certificates(cert, "certificate")?;
    let key_text = secret::read_file(key).map_err(TlsError::Key)?;
    // The key's DER lives in zeroized memory; the PEM parser's error could quote the file, so
    // it is not shown.
    let key_der =
        PrivateKeyDer::from_pem_slice(key_text.expose_secret().as_bytes()).map_err(|_| {
            TlsError::NoKey {
                key: key.to_path_buf(),
            }
        })?;
    let (label, der): (&str, SecretSlice<u8>) = match &key_der {
        PrivateKeyDer::Pkcs8(k) => ("PRIVATE KEY", k.secret_pkcs8_der().to_vec().into()),
        PrivateKeyDer::Pkcs1(k) => ("RSA PRIVATE KEY", k.secret_pkcs1_der().to_vec().into()),
        PrivateKeyDer::Sec1(k) => ("EC PRIVATE KEY", k.secret_sec1_der().to_vec().into()),
        _ => {
            return Err(TlsError::NoKey {
                key: key.to_path_buf(),
            });
        }
    };
    let provider = rustls::crypto::ring::default_provider();
    match rustls::sign::CertifiedKey::from_der(chain.clone(), key_der, &provider) {
        Ok(_) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(TlsError::Mismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            });
        }
        Err(e) => {
            return Err(TlsError::BadKey {
                key: key.to_path_buf(),
                reason: e.to_string(),
            });
        }
    }
    // reqwest takes one PEM text; written afresh from the parsed parts, so that whatever else
    // the files hold (EC parameters, comments) does not trouble its stricter parser.
    // Sized up front so that no reallocation leaves a copy of the key behind.
    let size = [der.expose_secret().len()]
        .into_iter()
        .chain(chain.iter().map(|c| c.len()))
        .map(|n| n * 4 / 3 + n / 48 + 80)
        .sum();
    let mut pem = Zeroizing::new(String::with_capacity(size));
    pem_block(&mut pem, label, der.expose_secret());
    for c in &chain {
        pem_block(&mut pem, "CERTIFICATE", c);
    }
    reqwest::Identity::from_pem(pem.as_bytes()).map_err(|e| TlsError::BadKey {
        key: key.to_path_buf(),
        reason: error_chain(&e),
    })
}

fn pem_block(out: &mut String, label: &str, der: &[u8]) {
    // The base64 text of a key is as secret as the key.
    let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der));
    let _ = writeln!(out, "-----BEGIN {label}-----");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    let _ = writeln!(out, "-----END {label}-----");
}

/// The CAs of `ca_file` (a client's, or a proxy route's).
pub(crate) fn roots(ca: &Path) -> Result<Vec<reqwest::Certificate>, TlsError> {
    certificates(ca, "CA certificate")?
        .iter()
        .map(|c| {
            reqwest::Certificate::from_der(c).map_err(|e| TlsError::Unusable {
                path: ca.to_path_buf(),
                reason: error_chain(&e),
            })
        })
        .collect()
}

/// The certificates of a PEM file; at least one. Also the kubelet client's CA file
/// (`attest::kubelet`).
pub(crate) fn certificates(
    path: &Path,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = read_public(path)?;
    let unusable = |reason: String| TlsError::Unusable {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unusable(format!("is not a valid PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(unusable(format!(
            "holds no {what} (PEM \"-----BEGIN CERTIFICATE-----\")"
        )));
    }
    Ok(certs)
}

/// Reads a certificate or CA file: not secret, but read as carefully as one (a FIFO or device
/// never blocks the open; the size is capped).
fn read_public(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_err = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let flags = nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOCTTY;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    let unusable = |reason: String| TlsError::Unusable {
        path: path.to_path_buf(),
        reason,
    };
    if !meta.is_file() {
        return Err(unusable("is not a regular file".into()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CERT_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_CERT_FILE {
        return Err(unusable(format!(
            "is larger than the {MAX_CERT_FILE}-byte limit for a certificate file"
        )));
    }
    Ok(bytes)
}

/// A hint for a TLS failure the operator can fix here: a provider certificate from a CA the
/// client does not trust.
pub fn hint(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    match certificate_error(e)? {
        rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature => Some(
            "the token endpoint's certificate is not from a CA this client trusts; for a private CA set ca_file to its PEM bundle",
        ),
        _ => None,
    }
}

/// The rustls certificate error somewhere in reqwest's chain of sources.
pub(crate) fn certificate_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::CertificateError> {
    let mut source = Some(e);
    while let Some(s) = source {
        // An io::Error's source skips the error it wraps, which may be another io::Error.
        let mut inner: &(dyn std::error::Error + 'static) = s;
        loop {
            if let Some(rustls::Error::InvalidCertificate(c)) =
                inner.downcast_ref::<rustls::Error>()
            {
                return Some(c);
            }
            match inner
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                Some(wrapped) => inner = wrapped,
                None => break,
            }
        }
        source = s.source();
    }
    None
}

/// reqwest's error text with its source chain, which carries the useful part ("connection
/// refused"). No secret can be in it: credentials travel in headers and body, never the URL.
pub(crate) fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::AuthMethod;
    use std::os::unix::fs::PermissionsExt;

    /// A CA certificate (public; its key was thrown away).
    const CA: &str = "-----BEGIN CERTIFICATE-----
MIIBkzCCATmgAwIBAgIUcCYtkofI+uy+tn/5t0i4pjj5BNUwCgYIKoZIzj0EAwIw
HjEcMBoGA1UEAwwTdG9rZW5kIHVuaXQtdGVzdCBDQTAgFw0yNjEyMDIwNjA1NDNa
GA8yMTI2MTEwODA2MDU0M1owHjEcMBoGA1UEAwwTdG9rZW5kIHVuaXQtdGVzdCBD
QTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABKI0onY84oTmYHKxOR7VTW/o+LDZ
7bt1lCEVKjO2tT28n0fuB1erFGrmEzfyLBwT+bDtD8mVpzae1GuubofbaxGjUzBR
MB0GA1UdDgQWBBQSccytEiXrZvDlDcvSXf40hWBTbDAfBgNVHSMEGDAWgBQSccyt
EiXrZvDlDcvSXf40hWBTbDAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gA
MEUCIQCnwS3ZNfkQYKuXNJD0gRPnC/YiJJKaEpXSL+uZLmhEuAIgW76/TPQ5EDVs
EYTK/UHoZ20hY/Wu/VEDCp3esNQDFug=
-----END CERTIFICATE-----
";

    fn settings(method: AuthMethod, dir: &Path) -> ClientSettings {
        ClientSettings {
            rare: crate::oauth::RareSettings {
                client_key: Some(dir.join("client.key")),
                client_cert: Some(dir.join("client.pem")),
                ..Default::default()
            }
            .boxed(),
            ..ClientSettings::for_tests("https://127.0.0.1/token", "c", method)
        }
    }

    #[test]
    fn only_clients_with_tls_files_get_a_client_of_their_own() {
        let dir = Path::new("/nonexistent");
        // A key for private_key_jwt is not a TLS identity.
        let mut c = settings(AuthMethod::PrivateKeyJwt, dir);
        c.rare_mut().client_cert = None;
        assert_eq!(Files::of(&c), None);
        assert!(watched_files(&c).is_empty());
        c.rare_mut().ca_file = Some(dir.join("ca.pem"));
        assert_eq!(
            Files::of(&c),
            Some(Files {
                identity: None,
                ca: Some(dir.join("ca.pem"))
            })
        );
        let c = settings(AuthMethod::TlsClientAuth, dir);
        assert_eq!(
            watched_files(&c),
            [dir.join("client.pem"), dir.join("client.key")]
        );
    }

    #[test]
    fn the_built_client_is_reused_until_a_file_changes() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, CA).unwrap();
        let own = Own {
            files: Files {
                identity: None,
                ca: Some(ca.clone()),
            },
            built: Mutex::new(None),
        };
        assert!(own.current().unwrap().1, "built at first use");
        assert!(!own.current().unwrap().1, "reused");
        // Same content, replaced: another inode.
        let tmp = dir.path().join("ca.new");
        std::fs::write(&tmp, CA).unwrap();
        std::fs::rename(&tmp, &ca).unwrap();
        assert!(own.current().unwrap().1, "rebuilt");
        // A broken file is an error naming it, and is not kept: repaired, it is read again.
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let err = own.current().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: holds no CA certificate (PEM \"-----BEGIN CERTIFICATE-----\")",
                ca.display()
            )
        );
        assert!(!err.is_transient());
        std::fs::write(&ca, CA).unwrap();
        assert!(own.current().unwrap().1);
    }

    #[test]
    fn key_files_are_read_as_secrets_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let c = settings(AuthMethod::SelfSignedTlsClientAuth, dir.path());
        std::fs::write(dir.path().join("client.pem"), CA).unwrap();
        let key = dir.path().join("client.key");
        let junk = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0IGtleSBtYXRlcmlhbA==\n-----END PRIVATE KEY-----\n";
        std::fs::write(&key, junk).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (file, err) = check(&c).unwrap_err();
        assert_eq!(file, TlsFile::Key);
        assert!(
            matches!(&err, TlsError::Key(SecretError::Exposed { .. })),
            "{err}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (file, err) = check(&c).unwrap_err();
        assert_eq!(file, TlsFile::Key);
        let shown = format!("{err} {err:?}");
        assert!(shown.contains(&key.display().to_string()), "{shown}");
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
        std::fs::write(&key, "no key here\n").unwrap();
        let (_, err) = check(&c).unwrap_err();
        assert!(matches!(err, TlsError::NoKey { .. }), "{err}");
        // A missing certificate file is named as the certificate's.
        std::fs::remove_file(dir.path().join("client.pem")).unwrap();
        let (file, err) = check(&c).unwrap_err();
        assert_eq!(file, TlsFile::Cert);
        assert!(err.to_string().contains("client.pem: cannot read"), "{err}");
        assert!(!err.is_transient());
    }
}
