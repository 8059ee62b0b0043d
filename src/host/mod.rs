//! What tokend uses of the host it runs on: user and group names, files in directories others
//! may share, octal file modes, file versions, blocking file work kept off the async workers, the wall clock.

pub(crate) mod accounts;
pub mod atomic_file;
pub mod command;
pub(crate) mod file_mode;
pub(crate) mod file_stamp;
pub mod offload;
pub(crate) mod unix_time;
