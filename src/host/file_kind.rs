//! What a file that should have been a regular one is, in the words an error message uses.

use std::os::unix::fs::FileTypeExt;

/// `t`, for a file that is not a regular one: "a FIFO", "a directory"...
pub fn of(t: &std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "a special file"
    }
}
