//! TEMPORARY STUB (agreed API) — replaced by the real engine.
//! compile before the engine exists. `rewrite` returns the SQL unchanged, so filtered
//! oracle cases are expected to FAIL against it — that proves the tests can fail.
//! Replaced by the real engine from /work/scratch/rls-engine/src/rls/.

use serde::{Deserialize, Serialize};

use crate::principal::Principal;

/// SQL dialect of a datasource; decides parsing, identifier quoting and case folding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    Postgres,
    Mysql,
    Sqlite,
    Generic,
}

/// A datasource as configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasourceConfig {
    pub uid: String,
    pub dialect: Dialect,
    #[serde(default)]
    pub tables: Vec<String>,
    #[serde(default)]
    pub deny_unlisted_tables: bool,
    #[serde(default)]
    pub denied_functions: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterType {
    Regular,
    Base,
}

/// One Superset-style RLS filter.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterDefinition {
    pub name: String,
    #[serde(rename = "type")]
    pub filter_type: FilterType,
    pub datasource: String,
    pub tables: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub group_key: Option<String>,
    pub clause: String,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterFile {
    filters: Vec<FilterDefinition>,
}

/// Parses a filter file (`policies/*.rls.yaml`).
pub fn parse_filter_file(file_name: &str, yaml: &str) -> Result<Vec<FilterDefinition>, RlsError> {
    serde_yaml::from_str::<FilterFile>(yaml)
        .map(|file| file.filters)
        .map_err(|error| RlsError::InvalidFilter(format!("{file_name}: {error}")))
}

/// Compiled filters + datasources for one policy snapshot.
pub struct RlsPolicy {
    datasources: Vec<DatasourceConfig>,
}

impl RlsPolicy {
    pub fn compile(
        datasources: &[DatasourceConfig],
        _filters: Vec<FilterDefinition>,
    ) -> Result<RlsPolicy, RlsError> {
        Ok(RlsPolicy {
            datasources: datasources.to_vec(),
        })
    }

    pub fn empty() -> RlsPolicy {
        RlsPolicy {
            datasources: Vec::new(),
        }
    }

    pub fn datasource(&self, uid: &str) -> Option<&DatasourceConfig> {
        self.datasources
            .iter()
            .find(|datasource| datasource.uid == uid)
    }

    pub fn rewrite(&self, request: &RewriteRequest<'_>) -> Result<Rewritten, RlsError> {
        if self.datasource(request.datasource_uid).is_none() {
            return Err(RlsError::UnknownDatasource(
                request.datasource_uid.to_string(),
            ));
        }
        Ok(Rewritten {
            sql: request.sql.to_string(),
            changed: false,
            applied: Vec::new(),
            cache_hit: false,
        })
    }

    pub fn cache_stats(&self) -> (u64, u64) {
        (0, 0)
    }
}

pub struct RewriteRequest<'a> {
    pub datasource_uid: &'a str,
    pub sql: &'a str,
    pub principal: &'a Principal,
    pub allow_writes: bool,
    pub limits: RewriteLimits,
}

#[derive(Debug, Clone, Copy)]
pub struct RewriteLimits {
    pub max_sql_bytes: usize,
    pub max_nesting_depth: usize,
}

impl Default for RewriteLimits {
    fn default() -> Self {
        RewriteLimits {
            max_sql_bytes: 256 * 1024,
            max_nesting_depth: 64,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Rewritten {
    pub sql: String,
    pub changed: bool,
    pub applied: Vec<AppliedFilter>,
    pub cache_hit: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppliedFilter {
    pub table: String,
    pub filters: Vec<String>,
    pub predicate: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RlsError {
    #[error("invalid filter: {0}")]
    InvalidFilter(String),
    #[error("unknown datasource `{0}`")]
    UnknownDatasource(String),
}

impl RlsError {
    pub fn kind(&self) -> &'static str {
        match self {
            RlsError::InvalidFilter(_) => "invalid_filter",
            RlsError::UnknownDatasource(_) => "unknown_datasource",
        }
    }
}
