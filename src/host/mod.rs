//! What tokend uses of the host it runs on: user and group names, files in directories others
//! may share, what a file is, which I/O errors pass, octal file modes, file versions, programs
//! run for their output, blocking file work kept off the async workers, the wall clock.

pub(crate) mod accounts;
pub mod atomic_file;
pub mod command;
pub(crate) mod file_kind;
pub(crate) mod file_mode;
pub(crate) mod file_stamp;
pub(crate) mod io_error;
pub mod offload;
pub(crate) mod unix_time;
