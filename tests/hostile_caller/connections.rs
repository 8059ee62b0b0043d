//! (placeholder: filled by the change that defends against this class)
