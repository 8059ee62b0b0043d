//! Running a configured command for a credential (`subject_token_command`, ...): an argv run
//! without a shell, off the async workers, killed with its whole process group at a deadline,
//! its output capped.

use std::path::PathBuf;
use std::time::Duration;

use crate::secret::SecretString;

/// Why a command gave no credential. Messages never quote its standard output.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("the command's program {0:?} must be an absolute path")]
    NotAbsolute(String),
}

impl CommandError {
    /// Whether trying again later may help (a timeout, a failed run, resources short), as
    /// opposed to a command that cannot run as configured (missing, unsafe, not text).
    pub fn is_transient(&self) -> bool {
        todo!("host::command is being written")
    }
}

/// Runs `argv` (`argv[0]` an absolute path) with stdin from /dev/null and returns its standard
/// output as text, trimmed of surrounding whitespace. Killed, with every process it started,
/// after `timeout`; fails when stdout exceeds `max_output` bytes.
pub async fn run(
    argv: &[String],
    timeout: Duration,
    max_output: usize,
) -> Result<SecretString, CommandError> {
    let _ = (argv, timeout, max_output);
    todo!("host::command is being written")
}

/// Checks at load that `argv` can be run safely: `argv[0]` absolute, a regular executable
/// file, it and every directory above it owned by root or tokend's user and writable by no one
/// else (anyone who could replace it would run code as tokend).
pub fn check(argv: &[String]) -> Result<(), CommandError> {
    let _ = argv;
    let _ = PathBuf::new();
    todo!("host::command is being written")
}
