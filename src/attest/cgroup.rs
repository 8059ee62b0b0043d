//! STUB (replaced by the helper's module at merge).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CgroupInfo {
    pub path: Option<String>,
    pub unit: Option<String>,
    pub pod_uid: Option<String>,
    pub container_id: Option<String>,
}
pub fn parse(text: &str) -> CgroupInfo {
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string);
    let unit = path
        .as_deref()
        .and_then(|p| {
            p.rsplit('/')
                .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        })
        .map(str::to_string);
    CgroupInfo {
        path,
        unit,
        pod_uid: None,
        container_id: None,
    }
}
