//! Row-level security: every SQL string a route carries is rewritten so it can only see
//! the rows the caller's Superset-style filters allow, or it is refused.
//!
//! Sits after authorization in the request path (`decision::plan_sql`, then on the SQL pool). Built with
//! each policy snapshot from `policies/*.rls.yaml` and the config's datasources:
//! [`RlsPolicy::compile`] parses every filter clause once; [`RlsPolicy::rewrite`] parses
//! the user's SQL with the datasource's dialect, checks it (one statement, a query unless
//! writes are allowed, no denied functions, no catalogs, only listed tables), wraps every
//! protected table reference in `(SELECT * FROM t WHERE <predicate>) AS <alias>`, prints
//! it, re-parses the output and verifies every protected reference is wrapped with
//! exactly the expected predicate. Results are cached per snapshot, keyed by the SQL and
//! the caller's bound filter values.

mod dialect;
mod fragment;
mod rewrite;
mod template;

pub use fragment::FilteredWhere;
pub(crate) use fragment::template_syntax;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sqlparser::ast::{BinaryOperator, Expr, Query, Statement};
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::principal::Principal;
use template::{BoundValue, BoundView, CompiledClause, LiteralMode};

/// SQL dialect of a datasource; decides parsing, identifier quoting and case folding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    Postgres,
    Mysql,
    Sqlite,
    Generic,
}

/// A datasource as configured.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatasourceConfig {
    pub uid: String,
    pub dialect: Dialect,
    /// Known tables, `[catalog.][schema.]table`.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Refuse SQL touching a table not in `tables`.
    #[serde(default)]
    pub deny_unlisted_tables: bool,
    /// `None`: the dialect's defaults.
    #[serde(default)]
    pub denied_functions: Option<Vec<String>>,
    /// Database credentials through AWS IAM (see `creds`); a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_iam: Option<crate::creds::AwsIamConfig>,
    /// Whether SQL for this datasource may carry template syntax its service renders
    /// after datagate's rewrite (a route's `sql.templating` overrides). Unset: refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templating: Option<crate::sql_location::Templating>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FilterType {
    Regular,
    Base,
}

/// One Superset-style RLS filter.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
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

/// Parses a filter file (`policies/*.rls.yaml`); errors name the file.
pub fn parse_filter_file(file_name: &str, yaml: &str) -> Result<Vec<FilterDefinition>, RlsError> {
    serde_yaml::from_str::<FilterFile>(yaml)
        .map(|file| file.filters)
        .map_err(|error| RlsError::InvalidFilter(format!("{file_name}: {error}")))
}

/// Why SQL was refused (or a filter rejected at load). `kind()` is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RlsError {
    #[error("invalid filter: {0}")]
    InvalidFilter(String),
    #[error("datasource `{0}` is not configured for SQL inspection")]
    UnknownDatasource(String),
    #[error("SQL is larger than {0} bytes")]
    SqlTooLarge(usize),
    #[error("SQL is nested too deeply or has too many operators")]
    TooDeeplyNested,
    #[error("SQL took more than its {0} ms CPU budget to check and rewrite")]
    CpuBudgetExceeded(u64),
    #[error("SQL does not parse: {0}")]
    Parse(String),
    #[error("exactly one statement is allowed, found {0}")]
    MultipleStatements(usize),
    #[error("statement not allowed here: {0}")]
    StatementNotAllowed(String),
    #[error("function `{0}` is not allowed")]
    DeniedFunction(String),
    #[error("catalog relation `{0}` is not allowed on a datasource with row-level security")]
    CatalogAccess(String),
    #[error("table `{0}` is not listed for this datasource")]
    UnlistedTable(String),
    #[error("filter `{filter}` needs `{template}`, which the caller does not have")]
    MissingTemplateValue { filter: String, template: String },
    #[error(
        "filter `{filter}` cannot bind `{template}`: the value contains a character this dialect cannot carry safely"
    )]
    InvalidTemplateValue { filter: String, template: String },
    #[error("the rewritten SQL failed verification at table `{0}`")]
    VerificationFailed(String),
    #[error("a subquery is not allowed in a SQL fragment")]
    Subquery,
    #[error("a comment is not allowed in a SQL fragment")]
    Comment,
    #[error("a statement separator (`;`) is not allowed in a SQL fragment")]
    Separator,
    #[error(
        "template syntax (`{0}`) is not allowed: the upstream would render it after datagate's check"
    )]
    TemplateSyntax(&'static str),
}

impl RlsError {
    pub fn kind(&self) -> &'static str {
        match self {
            RlsError::InvalidFilter(_) => "invalid_filter",
            RlsError::UnknownDatasource(_) => "unknown_datasource",
            RlsError::SqlTooLarge(_) => "sql_too_large",
            RlsError::TooDeeplyNested => "too_deeply_nested",
            RlsError::CpuBudgetExceeded(_) => "sql_cpu_budget",
            RlsError::Parse(_) => "parse_error",
            RlsError::MultipleStatements(_) => "multiple_statements",
            RlsError::StatementNotAllowed(_) => "statement_not_allowed",
            RlsError::DeniedFunction(_) => "denied_function",
            RlsError::CatalogAccess(_) => "catalog_access",
            RlsError::UnlistedTable(_) => "unlisted_table",
            RlsError::MissingTemplateValue { .. } => "missing_template_value",
            RlsError::InvalidTemplateValue { .. } => "invalid_template_value",
            RlsError::VerificationFailed(_) => "verification_failed",
            RlsError::Subquery => "subquery_not_allowed",
            RlsError::Comment => "comment_not_allowed",
            RlsError::Separator => "multiple_statements",
            RlsError::TemplateSyntax(_) => "template_syntax",
        }
    }
}

pub struct RewriteRequest<'a> {
    pub datasource_uid: &'a str,
    pub sql: &'a str,
    pub principal: &'a Principal,
    /// The route explicitly allows non-query statements (never on protected tables).
    pub allow_writes: bool,
    pub limits: RewriteLimits,
}

#[derive(Debug, Clone, Copy)]
pub struct RewriteLimits {
    pub max_sql_bytes: usize,
    pub max_nesting_depth: usize,
    /// The CPU time one statement may take (`None`: unbounded). Checked between the
    /// phases (tokenize, parse, rewrite, print, re-parse, verify); a phase that has begun
    /// is not interrupted, so the size, operator and nesting limits bound each phase.
    pub max_cpu: Option<std::time::Duration>,
}

impl Default for RewriteLimits {
    fn default() -> Self {
        RewriteLimits {
            max_sql_bytes: 256 * 1024,
            max_nesting_depth: 64,
            max_cpu: None,
        }
    }
}

/// The CPU time a statement has used, against [`RewriteLimits::max_cpu`]. Measured as
/// the calling thread's CPU time where the platform has it (time the thread spent waiting
/// for a core does not count against the statement), else wall time.
struct CpuBudget {
    started: Option<std::time::Duration>,
    wall_started: std::time::Instant,
    limit: Option<std::time::Duration>,
}

impl CpuBudget {
    fn start(limit: Option<std::time::Duration>) -> CpuBudget {
        CpuBudget {
            started: thread_cpu_time(),
            wall_started: std::time::Instant::now(),
            limit,
        }
    }

    fn check(&self) -> Result<(), RlsError> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let used = match (self.started, thread_cpu_time()) {
            (Some(started), Some(now)) => now.saturating_sub(started),
            _ => self.wall_started.elapsed(),
        };
        if used > limit {
            return Err(RlsError::CpuBudgetExceeded(
                u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            ));
        }
        Ok(())
    }
}

#[cfg(target_os = "linux")]
fn thread_cpu_time() -> Option<std::time::Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the duration of the call.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if result != 0 {
        return None;
    }
    Some(std::time::Duration::new(
        u64::try_from(now.tv_sec).ok()?,
        u32::try_from(now.tv_nsec).ok()?,
    ))
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu_time() -> Option<std::time::Duration> {
    None
}

/// The most operators (AND, OR, comparisons, arithmetic) one statement may hold. A long
/// chain of them parses into an equally deep tree that every later walk recurses through.
pub const MAX_OPERATORS: usize = 4096;

#[derive(Debug, Clone, Serialize)]
pub struct Rewritten {
    /// What goes upstream (the original text when nothing applied). Shared, so a
    /// rewrite-cache hit hands it out without copying the statement.
    pub sql: Arc<str>,
    pub changed: bool,
    /// Shared, so a rewrite-cache hit hands it out without copying every table, filter
    /// name and predicate text.
    pub applied: Arc<[AppliedFilter]>,
    pub cache_hit: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppliedFilter {
    pub table: String,
    pub filters: Vec<String>,
    pub predicate: String,
}

/// A filter table pattern: lower-cased parts, matched from the right.
#[derive(Debug, Clone)]
struct TablePattern(Vec<String>);

impl TablePattern {
    fn parse(text: &str) -> TablePattern {
        TablePattern(
            text.split('.')
                .map(|part| {
                    part.trim()
                        .trim_matches('"')
                        .trim_matches('`')
                        .to_lowercase()
                })
                .collect(),
        )
    }

    /// `orders` matches `orders`, `main.orders`, `db.public.orders`; `public.orders`
    /// matches `orders` (search path) and `public.orders` but not `other.orders`.
    fn matches(&self, parts: &[String]) -> bool {
        self.0
            .iter()
            .rev()
            .zip(parts.iter().rev())
            .all(|(pattern, part)| pattern == part)
            && !parts.is_empty()
    }
}

struct CompiledFilter {
    name: String,
    filter_type: FilterType,
    tables: Vec<TablePattern>,
    /// Asked for every role of every caller of the datasource on each request: hashed
    /// with foldhash, not SipHash (the names come from the policy, not from clients).
    roles: HashSet<String, foldhash::fast::RandomState>,
    group_key: Option<String>,
    clause: CompiledClause,
}

impl CompiledFilter {
    fn applies_to(&self, principal: &Principal) -> bool {
        let holds_a_role = principal.roles.iter().any(|role| self.roles.contains(role));
        match self.filter_type {
            FilterType::Regular => holds_a_role,
            FilterType::Base => !holds_a_role,
        }
    }
}

struct DatasourceRules {
    config: DatasourceConfig,
    filters: Vec<CompiledFilter>,
    denied_functions: HashSet<String>,
    listed: Vec<TablePattern>,
    wrapper: Query,
}

type Bindings = Vec<(String, Result<Vec<BoundValue>, RlsError>)>;

impl DatasourceRules {
    /// The caller's applicable filters and their bound values (or why a value is
    /// missing: that only refuses if the filter's table is actually queried).
    fn for_caller(&self, principal: &Principal) -> (Vec<&CompiledFilter>, Bindings) {
        let dialect = self.config.dialect;
        let applicable: Vec<&CompiledFilter> = self.applicable(principal).collect();
        let bindings = bound(applicable.iter().copied(), principal, dialect);
        (applicable, bindings)
    }

    /// The filters that apply to `principal`, in policy order.
    fn applicable<'r, 'p>(
        &'r self,
        principal: &'p Principal,
    ) -> impl Iterator<Item = &'r CompiledFilter> + use<'r, 'p> {
        self.filters
            .iter()
            .filter(move |filter| filter.applies_to(principal))
    }

    /// Whether [`Self::for_caller`] would bind `cached` for `principal`, whose
    /// [`Self::applicable`] filters are `applicable`, without building the bindings:
    /// values are compared where the principal holds them.
    fn binds_the_same(
        &self,
        applicable: &[&CompiledFilter],
        principal: &Principal,
        cached: &Bindings,
    ) -> bool {
        let dialect = self.config.dialect;
        let mut applicable = applicable.iter();
        for (name, values) in cached {
            let Some(filter) = applicable.next() else {
                return false;
            };
            if filter.name != *name {
                return false;
            }
            let same = match values {
                Ok(values) => {
                    filter.clause.template_count() == values.len()
                        && filter
                            .clause
                            .views_for(principal, dialect)
                            .zip(values)
                            .all(|(view, value)| view.is_ok_and(|view| view == value.view()))
                }
                // Rare (a rewrite that bound an error and did not need it): built in full.
                Err(_) => filter.clause.values_for(principal, &filter.name, dialect) == *values,
            };
            if !same {
                return false;
            }
        }
        applicable.next().is_none()
    }
}

/// Each applicable filter's name with its values bound for `principal`.
fn bound<'f>(
    applicable: impl Iterator<Item = &'f CompiledFilter>,
    principal: &Principal,
    dialect: Dialect,
) -> Bindings {
    applicable
        .map(|filter| {
            (
                filter.name.clone(),
                filter.clause.values_for(principal, &filter.name, dialect),
            )
        })
        .collect()
}

/// Compiled filters and datasources for one policy snapshot. Its cache lives and dies
/// with the snapshot, so a cached rewrite can never outlive the policy it came from.
pub struct RlsPolicy {
    datasources: HashMap<String, DatasourceRules, foldhash::fast::RandomState>,
    /// Keyed by [`cache_key`], itself a hash: moka's default SipHash would hash it again.
    cache: moka::sync::Cache<u64, Arc<CachedRewrite>, foldhash::fast::RandomState>,
    /// Seeds [`cache_key`] per snapshot, so a client cannot aim statements at one key
    /// (entries are compared in full on a hit: a collision costs a rewrite, never rows).
    key_hasher: foldhash::fast::RandomState,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// A cache entry keeps its full key to rule out hash collisions.
struct CachedRewrite {
    datasource: String,
    sql: String,
    bindings: Bindings,
    allow_writes: bool,
    result: Rewritten,
}

const CACHE_ENTRIES: u64 = 10_000;

fn wrapper_prototype(dialect: Dialect) -> Result<Query, RlsError> {
    let parser_dialect = dialect.parser_dialect();
    let mut statements = Parser::parse_sql(
        parser_dialect.as_ref(),
        "SELECT * FROM datagate_wrapped WHERE TRUE",
    )
    .map_err(|error| RlsError::InvalidFilter(format!("internal wrapper: {error}")))?;
    match statements.pop() {
        Some(Statement::Query(query)) => Ok(*query),
        _ => Err(RlsError::InvalidFilter("internal wrapper".into())),
    }
}

impl RlsPolicy {
    pub fn empty() -> RlsPolicy {
        RlsPolicy {
            datasources: HashMap::default(),
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .build_with_hasher(foldhash::fast::RandomState::default()),
            key_hasher: foldhash::fast::RandomState::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Validates every filter (its datasource exists, its clause parses as a boolean
    /// expression of the datasource's dialect, its templates are known).
    pub fn compile(
        datasources: &[DatasourceConfig],
        filters: Vec<FilterDefinition>,
    ) -> Result<RlsPolicy, RlsError> {
        let mut policy = RlsPolicy::empty();
        for datasource in datasources {
            let denied_functions = datasource
                .denied_functions
                .clone()
                .unwrap_or_else(|| datasource.dialect.default_denied_functions())
                .into_iter()
                .map(|name| name.to_lowercase())
                .collect();
            policy.datasources.insert(
                datasource.uid.clone(),
                DatasourceRules {
                    config: datasource.clone(),
                    filters: Vec::new(),
                    denied_functions,
                    listed: datasource
                        .tables
                        .iter()
                        .map(|table| TablePattern::parse(table))
                        .collect(),
                    wrapper: wrapper_prototype(datasource.dialect)?,
                },
            );
        }
        let mut names = HashSet::new();
        for filter in filters {
            if !names.insert(filter.name.clone()) {
                return Err(RlsError::InvalidFilter(format!(
                    "filter `{}` is defined twice",
                    filter.name
                )));
            }
            let rules = policy
                .datasources
                .get_mut(&filter.datasource)
                .ok_or_else(|| {
                    RlsError::InvalidFilter(format!(
                        "filter `{}` names datasource `{}`, which is not configured",
                        filter.name, filter.datasource
                    ))
                })?;
            if filter.tables.is_empty() {
                return Err(RlsError::InvalidFilter(format!(
                    "filter `{}` names no tables",
                    filter.name
                )));
            }
            if filter.filter_type == FilterType::Regular && filter.roles.is_empty() {
                return Err(RlsError::InvalidFilter(format!(
                    "regular filter `{}` names no roles, so it would never apply",
                    filter.name
                )));
            }
            let clause =
                CompiledClause::compile(&filter.clause, rules.config.dialect, &filter.name)?;
            rules.filters.push(CompiledFilter {
                tables: filter
                    .tables
                    .iter()
                    .map(|table| TablePattern::parse(table))
                    .collect(),
                roles: filter.roles.iter().cloned().collect(),
                name: filter.name,
                filter_type: filter.filter_type,
                group_key: filter.group_key,
                clause,
            });
        }
        Ok(policy)
    }

    /// Whether a page showing `table` of datasource `uid` unfiltered may be served to
    /// `principal`: not when a filter on that table applies to them, nor when the table
    /// is unlisted on a datasource that denies unlisted tables.
    pub fn table_page_allowed(
        &self,
        uid: &str,
        table: &str,
        principal: &Principal,
    ) -> Result<(), String> {
        let Some(rules) = self.datasources.get(uid) else {
            return Ok(());
        };
        let parts = vec![table.to_lowercase()];
        if rules.filters.iter().any(|filter| {
            filter.applies_to(principal)
                && filter.tables.iter().any(|pattern| pattern.matches(&parts))
        }) {
            return Err(format!(
                "table `{table}` has row-level security filters for this caller; query it with SQL instead"
            ));
        }
        if rules.config.deny_unlisted_tables
            && !rules.listed.iter().any(|pattern| pattern.matches(&parts))
        {
            return Err(format!(
                "table `{table}` is not listed for datasource `{uid}`"
            ));
        }
        Ok(())
    }

    pub fn datasource(&self, uid: &str) -> Option<&DatasourceConfig> {
        self.datasources.get(uid).map(|rules| &rules.config)
    }

    pub fn cache_stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// The datasource's rules for `request`, refused when unknown or over the size limit.
    fn rules_for(&self, request: &RewriteRequest<'_>) -> Result<&DatasourceRules, RlsError> {
        let rules = self
            .datasources
            .get(request.datasource_uid)
            .ok_or_else(|| RlsError::UnknownDatasource(request.datasource_uid.to_string()))?;
        if request.sql.len() > request.limits.max_sql_bytes {
            return Err(RlsError::SqlTooLarge(request.limits.max_sql_bytes));
        }
        Ok(rules)
    }

    pub fn rewrite(&self, request: &RewriteRequest<'_>) -> Result<Rewritten, RlsError> {
        let rules = self.rules_for(request)?;
        let (applicable, bindings) = rules.for_caller(request.principal);
        let key = cache_key(&self.key_hasher, request, &bindings);
        if let Some(hit) = self.cache_hit(key, request, |cached| *cached == bindings) {
            return Ok(hit);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let context = CallerRules::new(rules, &applicable, &bindings);
        let result = rewrite_uncached(request, &context)?;
        self.cache.insert(
            key,
            Arc::new(CachedRewrite {
                datasource: request.datasource_uid.to_string(),
                sql: request.sql.to_string(),
                bindings,
                allow_writes: request.allow_writes,
                result: result.clone(),
            }),
        );
        Ok(result)
    }
}

impl RlsPolicy {
    /// The cached rewrite of `request`, if there is one. Cheap (the caller's bindings and
    /// a hash of the SQL), so the proxy's I/O thread asks first and a cache hit never
    /// waits for, or counts against, the SQL pool; `None` means "rewrite it", and errors
    /// are left to [`Self::rewrite`].
    pub fn cached(&self, request: &RewriteRequest<'_>) -> Option<Rewritten> {
        let rules = self.rules_for(request).ok()?;
        // The caller's bindings are hashed and compared where the principal holds them,
        // not built: a hit copies nothing but the result.
        let mut hasher = self.key_hasher.build_hasher();
        hash_request(&mut hasher, request);
        let dialect = rules.config.dialect;
        let applicable: smallvec::SmallVec<[&CompiledFilter; 4]> =
            rules.applicable(request.principal).collect();
        for filter in &applicable {
            // Inline: a clause rarely binds more than a value or two.
            let views: Result<smallvec::SmallVec<[BoundView<'_>; 4]>, &'static str> = filter
                .clause
                .views_for(request.principal, dialect)
                .collect();
            let values = views.map(|views| (views.len(), views.into_iter()));
            hash_binding(&mut hasher, &filter.name, values);
        }
        // A miss is counted once, by the rewrite that follows.
        self.cache_hit(hasher.finish(), request, |cached| {
            rules.binds_the_same(&applicable, request.principal, cached)
        })
    }

    fn cache_hit(
        &self,
        key: u64,
        request: &RewriteRequest<'_>,
        same_bindings: impl FnOnce(&Bindings) -> bool,
    ) -> Option<Rewritten> {
        let entry = self.cache.get(&key)?;
        let same = entry.datasource == request.datasource_uid
            && entry.sql == request.sql
            && entry.allow_writes == request.allow_writes
            && same_bindings(&entry.bindings);
        if !same {
            return None;
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        let mut result = entry.result.clone();
        result.cache_hit = true;
        Some(result)
    }
}

/// The rewrite cache's key: the statement, where it goes and the caller's bindings (what
/// the rewrite depends on); the entry is compared in full on a hit. [`RlsPolicy::cached`]
/// hashes the same values borrowed from the principal, through the same two functions.
fn cache_key(
    key_hasher: &foldhash::fast::RandomState,
    request: &RewriteRequest<'_>,
    bindings: &Bindings,
) -> u64 {
    let mut hasher = key_hasher.build_hasher();
    hash_request(&mut hasher, request);
    for (name, values) in bindings {
        let values = match values {
            Ok(values) => Ok((values.len(), values.iter().map(BoundValue::view))),
            Err(error) => Err(error.kind()),
        };
        hash_binding(&mut hasher, name, values);
    }
    hasher.finish()
}

fn hash_request(hasher: &mut impl Hasher, request: &RewriteRequest<'_>) {
    request.datasource_uid.hash(hasher);
    request.sql.hash(hasher);
    request.allow_writes.hash(hasher);
}

/// One filter's binding: its name, then its values (count first) or why it has none.
fn hash_binding<'v>(
    hasher: &mut impl Hasher,
    name: &str,
    values: Result<(usize, impl Iterator<Item = BoundView<'v>>), &'static str>,
) {
    name.hash(hasher);
    match values {
        Ok((count, views)) => {
            hasher.write_usize(count);
            for view in views {
                view.hash(hasher);
            }
        }
        Err(kind) => kind.hash(hasher),
    }
}

/// A datasource's rules seen through one caller's applicable filters.
struct CallerRules<'c> {
    rules: &'c DatasourceRules,
    applicable: &'c [&'c CompiledFilter],
    bindings: &'c [(String, Result<Vec<BoundValue>, RlsError>)],
    /// Predicates already built, by table and literal mode: a query names the same
    /// protected table many times, and the verifier asks for each one again.
    built: RefCell<Vec<BuiltPredicate>>,
}

type PredicateResult = Option<Result<(Expr, Vec<String>), RlsError>>;

struct BuiltPredicate {
    parts: Vec<String>,
    mode: LiteralMode,
    result: PredicateResult,
}

impl<'c> CallerRules<'c> {
    fn new(
        rules: &'c DatasourceRules,
        applicable: &'c [&'c CompiledFilter],
        bindings: &'c [(String, Result<Vec<BoundValue>, RlsError>)],
    ) -> CallerRules<'c> {
        CallerRules {
            rules,
            applicable,
            bindings,
            built: RefCell::new(Vec::new()),
        }
    }

    /// [`Self::build_predicate`], built once per table and mode, then handed to `use_it`.
    fn with_predicate<T>(
        &self,
        parts: &[String],
        mode: LiteralMode,
        use_it: impl FnOnce(&PredicateResult) -> T,
    ) -> T {
        let mut built = self.built.borrow_mut();
        if let Some(entry) = built
            .iter()
            .find(|entry| entry.mode == mode && entry.parts == parts)
        {
            return use_it(&entry.result);
        }
        let result = self.build_predicate(parts, mode);
        let answer = use_it(&result);
        built.push(BuiltPredicate {
            parts: parts.to_vec(),
            mode,
            result,
        });
        answer
    }

    fn predicate(&self, parts: &[String], mode: LiteralMode) -> PredicateResult {
        self.with_predicate(parts, mode, Clone::clone)
    }

    /// AND of: each group's filters OR'd, each ungrouped filter. Every clause and every
    /// group is parenthesised as a node, since the printer adds no parentheses itself.
    fn build_predicate(&self, parts: &[String], mode: LiteralMode) -> PredicateResult {
        let mut groups: BTreeMap<String, Vec<Expr>> = BTreeMap::new();
        let mut ungrouped: Vec<Expr> = Vec::new();
        let mut names = Vec::new();
        for (filter, (_, values)) in self.applicable.iter().zip(self.bindings.iter()) {
            if !filter.tables.iter().any(|pattern| pattern.matches(parts)) {
                continue;
            }
            let values = match values {
                Ok(values) => values,
                Err(error) => return Some(Err(error.clone())),
            };
            let clause = Expr::Nested(Box::new(filter.clause.bind(
                values,
                self.rules.config.dialect,
                mode,
            )));
            names.push(filter.name.clone());
            match &filter.group_key {
                Some(group) => groups.entry(group.clone()).or_default().push(clause),
                None => ungrouped.push(clause),
            }
        }
        if names.is_empty() {
            return None;
        }
        let joined = |terms: Vec<Expr>, operator: BinaryOperator| {
            terms.into_iter().reduce(|left, right| Expr::BinaryOp {
                left: Box::new(left),
                op: operator.clone(),
                right: Box::new(right),
            })
        };
        let mut terms = ungrouped;
        for (_, clauses) in groups {
            if let Some(group) = joined(clauses, BinaryOperator::Or) {
                terms.push(Expr::Nested(Box::new(group)));
            }
        }
        joined(terms, BinaryOperator::And).map(|predicate| Ok((predicate, names)))
    }

    fn any_filter_names(&self, parts: &[String]) -> bool {
        self.rules
            .filters
            .iter()
            .any(|filter| filter.tables.iter().any(|pattern| pattern.matches(parts)))
    }
}

impl rewrite::TableRules for CallerRules<'_> {
    fn dialect(&self) -> Dialect {
        self.rules.config.dialect
    }
    fn predicate_for(&self, parts: &[String]) -> Option<Result<Expr, RlsError>> {
        self.predicate(parts, LiteralMode::Print)
            .map(|result| result.map(|(predicate, _)| predicate))
    }
    fn is_expected_predicate(&self, parts: &[String], selection: &Expr) -> bool {
        self.with_predicate(
            parts,
            LiteralMode::Compare,
            |expected| matches!(expected, Some(Ok((expected, _))) if expected == selection),
        )
    }
    fn is_protected_for_caller(&self, parts: &[String]) -> bool {
        self.applicable
            .iter()
            .any(|filter| filter.tables.iter().any(|pattern| pattern.matches(parts)))
    }
    fn is_protected_for_anyone(&self, parts: &[String]) -> bool {
        self.any_filter_names(parts)
    }
    fn is_denied_function(&self, lower_name: &str) -> bool {
        self.rules.denied_functions.contains(lower_name)
            || self.rules.config.dialect.denies_function_prefix(lower_name)
    }
    fn has_filters(&self) -> bool {
        !self.rules.filters.is_empty()
    }
    fn is_listed(&self, parts: &[String]) -> bool {
        !self.rules.config.deny_unlisted_tables
            || self
                .rules
                .listed
                .iter()
                .any(|pattern| pattern.matches(parts))
    }
    fn wrapper_prototype(&self) -> &Query {
        &self.rules.wrapper
    }
}

#[cfg(test)]
fn parse(sql: &str, dialect: Dialect, limits: RewriteLimits) -> Result<Vec<Statement>, RlsError> {
    parse_within(sql, dialect, limits, MAX_OPERATORS, &CpuBudget::start(None))
}

fn parse_within(
    sql: &str,
    dialect: Dialect,
    limits: RewriteLimits,
    max_operators: usize,
    budget: &CpuBudget,
) -> Result<Vec<Statement>, RlsError> {
    let parser_dialect = dialect.parser_dialect();
    let tokens = Tokenizer::new(parser_dialect.as_ref(), sql)
        .tokenize()
        .map_err(|error| RlsError::Parse(error.to_string()))?;
    budget.check()?;
    if count_operators(&tokens) > max_operators {
        return Err(RlsError::TooDeeplyNested);
    }
    let statements = Parser::new(parser_dialect.as_ref())
        .with_recursion_limit(limits.max_nesting_depth)
        .with_tokens(tokens)
        .parse_statements()
        .map_err(|error| match error {
            ParserError::RecursionLimitExceeded => RlsError::TooDeeplyNested,
            other => RlsError::Parse(other.to_string()),
        })?;
    budget.check()?;
    Ok(statements)
}

/// The operators (AND, OR, comparisons, arithmetic, `*`) among `tokens`. A long chain of
/// operators parses into an equally deep tree that every later walk recurses through, so
/// a statement with more than [`MAX_OPERATORS`] is refused before parsing.
fn count_operators(tokens: &[Token]) -> usize {
    tokens
        .iter()
        .filter(|token| match token {
            Token::Word(word) => matches!(
                word.keyword,
                sqlparser::keywords::Keyword::AND | sqlparser::keywords::Keyword::OR
            ),
            Token::Eq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::StringConcat
            | Token::Mod => true,
            _ => false,
        })
        .count()
}

/// More than [`MAX_OPERATORS`] operators among `tokens` is refused.
fn check_operator_count(tokens: &[Token]) -> Result<(), RlsError> {
    if count_operators(tokens) > MAX_OPERATORS {
        return Err(RlsError::TooDeeplyNested);
    }
    Ok(())
}

/// How many operators the rewrite added: each wrapped reference brings its predicate's
/// operators and the wrapper's `SELECT *`. These never deepen the user's expression
/// trees (each predicate sits in its own subquery), so the re-parse of the rewritten SQL
/// allows them on top of [`MAX_OPERATORS`]: without that allowance a statement under the
/// limit (a 2,000-branch `UNION` over a table with two filters) was refused as
/// `verification_failed` because its correct rewrite was over it.
fn operators_added(
    wrapped: &[Vec<String>],
    rules: &CallerRules<'_>,
    dialect: Dialect,
) -> Result<usize, RlsError> {
    let parser_dialect = dialect.parser_dialect();
    let mut per_table: Vec<(&[String], usize)> = Vec::new();
    let mut added = 0usize;
    for parts in wrapped {
        let operators = match per_table.iter().find(|(seen, _)| *seen == parts.as_slice()) {
            Some((_, operators)) => *operators,
            None => {
                let predicate = match rules.predicate(parts, LiteralMode::Print) {
                    Some(Ok((predicate, _))) => predicate.to_string(),
                    Some(Err(error)) => return Err(error),
                    None => String::new(),
                };
                let tokens = Tokenizer::new(parser_dialect.as_ref(), &predicate)
                    .tokenize()
                    .map_err(|_| {
                        RlsError::VerificationFailed("a printed filter does not tokenize".into())
                    })?;
                let operators = count_operators(&tokens).saturating_add(1);
                per_table.push((parts.as_slice(), operators));
                operators
            }
        };
        added = added.saturating_add(operators);
    }
    Ok(added)
}

fn rewrite_uncached(
    request: &RewriteRequest<'_>,
    rules: &CallerRules<'_>,
) -> Result<Rewritten, RlsError> {
    let dialect = rules.rules.config.dialect;
    let budget = CpuBudget::start(request.limits.max_cpu);
    let mut statements =
        parse_within(request.sql, dialect, request.limits, MAX_OPERATORS, &budget)?;
    if statements.len() != 1 {
        return Err(RlsError::MultipleStatements(statements.len()));
    }
    let Some(statement) = statements.first_mut() else {
        return Err(RlsError::MultipleStatements(0));
    };
    let wrapped = rewrite::rewrite_statement(statement, rules, request.allow_writes)?;
    budget.check()?;
    if wrapped.is_empty() {
        return Ok(Rewritten {
            sql: Arc::from(request.sql),
            changed: false,
            applied: Arc::from([]),
            cache_hit: false,
        });
    }
    let printed = statement.to_string();
    budget.check()?;
    let max_operators = MAX_OPERATORS.saturating_add(operators_added(&wrapped, rules, dialect)?);
    let reparsed = parse_within(
        &printed,
        dialect,
        RewriteLimits {
            max_sql_bytes: usize::MAX,
            max_nesting_depth: request.limits.max_nesting_depth.saturating_add(8),
            max_cpu: request.limits.max_cpu,
        },
        max_operators,
        &budget,
    )
    .map_err(|error| match error {
        // Limits stay limits: the caller learns which one, not a failed verification.
        RlsError::CpuBudgetExceeded(_) | RlsError::TooDeeplyNested => error,
        _ => RlsError::VerificationFailed("the rewritten SQL does not parse".into()),
    })?;
    match reparsed.as_slice() {
        [statement] => rewrite::verify_statement(statement, rules)?,
        _ => {
            return Err(RlsError::VerificationFailed(
                "the rewritten SQL is not one statement".into(),
            ));
        }
    }
    budget.check()?;
    let mut applied: Vec<AppliedFilter> = Vec::new();
    for parts in wrapped {
        let table = parts.join(".");
        if applied.iter().any(|entry| entry.table == table) {
            continue;
        }
        if let Some(Ok((predicate, filters))) = rules.predicate(&parts, LiteralMode::Print) {
            applied.push(AppliedFilter {
                table,
                filters,
                predicate: predicate.to_string(),
            });
        }
    }
    Ok(Rewritten {
        sql: Arc::from(printed),
        changed: true,
        applied: applied.into(),
        cache_hit: false,
    })
}

#[cfg(test)]
mod tests;
