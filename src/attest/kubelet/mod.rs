//! The pods on this node, from the kubelet: which pod a caller's container belongs to, and that
//! pod's namespace, name, ServiceAccount and labels.

mod pod;
mod settings;

pub use pod::{ParseError, Pod};
pub use settings::Settings;
