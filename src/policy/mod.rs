//! TEMPORARY STUB — replaced by the real policy module.
use std::path::Path;
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("bad policy")]
    Bad,
}
pub struct CompiledPolicy {
    digest: String,
}
impl CompiledPolicy {
    pub fn allows(&self, _subjects: &[String], _object: &str, _action: &str) -> bool {
        false
    }
    pub fn casbin_allows(&self, _subjects: &[String], _object: &str, _action: &str) -> bool {
        false
    }
    pub fn digest(&self) -> &str {
        &self.digest
    }
    pub fn line_count(&self) -> usize {
        0
    }
    pub fn uses_casbin_fallback(&self) -> bool {
        false
    }
}
pub fn load_policy(_model_path: &Path, _policy_dir: &Path) -> Result<CompiledPolicy, PolicyError> {
    Ok(CompiledPolicy {
        digest: String::new(),
    })
}
pub fn datasource_object(uid: &str) -> String {
    format!("datasources:uid:{uid}")
}
