//! DPoP (RFC 9449): a per-client ES256 key that never leaves tokend, and the proofs signed
//! with it.
//!
//! A sender-constrained token is bound to the key's thumbprint (`jkt`), so whoever steals the
//! token also needs the key; the key is therefore made once, kept in one file mode 0600 and
//! never replaced: a new key would orphan every token bound to the old one.
//!
//! ```ignore
//! let key = DpopKey::load_or_create(Path::new("/var/lib/tokend/billing.dpop.pem"))?;
//! let proof = key.proof("POST", "https://idp.example.com/token", None, None, SystemTime::now())?;
//! // Retried once with the server's nonce when it answers `use_dpop_nonce`:
//! let nonce = nonce_from_headers(reply.headers());
//! ```
//!
//! - `key`: loading or making the key file, its public JWK and thumbprint.
//! - `proof`: the proof JWT and the normalised `htu`.
//! - `nonce`: what a server's `DPoP-Nonce` may be.
//! - `holder`: a client's key, read at its first use, and the nonces servers gave it.

use std::path::PathBuf;

use crate::host::atomic_file::DirError;
use crate::oauth::KeyError;

mod holder;
mod key;
mod nonce;
mod proof;

pub use holder::{DpopHolder, Nonces, origin};
pub use key::DpopKey;
pub use nonce::nonce_from_headers;

/// What went wrong with a DPoP key or proof. Messages name files and rules, never key
/// material, tokens, or the values a caller or server sent (a nonce, a URI's query).
#[derive(Debug, thiserror::Error)]
pub enum DpopError {
    /// The key file could not be read or parsed (the message names the file).
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The key file's directory is not safe to keep a key in, or cannot be reached.
    #[error(transparent)]
    Dir(#[from] DirError),
    #[error(
        "{path}: is {kind} key; a DPoP key is EC P-256 (ES256): move it away and tokend makes one, or make one with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out KEY`"
    )]
    NotP256 { path: PathBuf, kind: &'static str },
    #[error("{path}: cannot create the DPoP key: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make a DPoP key: the system's random number generator failed")]
    Generate,
    #[error("DPoP http_method: {0}")]
    Method(&'static str),
    #[error("DPoP http_uri: {0}")]
    Uri(String),
    #[error("DPoP access token: is empty")]
    EmptyAccessToken,
    #[error("DPoP nonce: {0}")]
    Nonce(&'static str),
    #[error("signing the DPoP proof failed")]
    Signing,
    #[error("{path}: reading the DPoP key {stalled}")]
    Stalled {
        path: PathBuf,
        stalled: crate::host::offload::Stalled,
    },
}

impl DpopError {
    /// Whether this may pass by itself: the key file could not be read for want of descriptors
    /// or memory, or its reading stalled (see [`crate::secret::SecretError::is_transient`]).
    pub fn is_transient(&self) -> bool {
        match self {
            DpopError::Key(e) => e.is_transient(),
            DpopError::Stalled { .. } => true,
            _ => false,
        }
    }
}
