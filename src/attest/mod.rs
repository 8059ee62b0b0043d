//! Who a caller is beyond its uid: the Kubernetes pod it runs in, learnt from the kubelet.
#![allow(dead_code)] // TODO(lead): removed when the access rules use it

pub mod kubelet;
