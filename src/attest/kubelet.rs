//! STUB (replaced by the helper's module at merge).
use std::collections::BTreeMap;
use std::sync::Arc;
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub kubelet_url: String,
}
impl Settings {
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        Ok(())
    }
}
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pod {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
}
#[derive(Debug, thiserror::Error)]
#[error("stub")]
pub struct KubeletError;
#[derive(Debug)]
pub struct Kubelet;
impl Kubelet {
    pub fn new(_: &Settings) -> Result<Kubelet, KubeletError> {
        Ok(Kubelet)
    }
    pub async fn pod(
        &self,
        _: Option<&str>,
        _: Option<&str>,
    ) -> Result<Option<Arc<Pod>>, KubeletError> {
        Ok(None)
    }
}
