//! Row-level security for Superset chart data: the query context a chart-data request
//! carries is where Superset's generated SQL comes from, so that is what datagate checks
//! and rewrites. Runs after authorization (`decision::chart`), on the request as
//! [`crate::decision::request`] read it once.
//!
//! For a dataset mapped to a table (`charts.datasets`), every free-SQL fragment of the
//! query context is checked by [`crate::rls::RlsPolicy::check_fragment`] and replaced by
//! its printed form, and each query's `extras.where` becomes `(<user where>) AND
//! (<caller's filters>)` ([`crate::rls::RlsPolicy::filtered_where`]). Superset ANDs
//! `extras.where` into the `WHERE` of every SQL statement it builds for the query, next
//! to its own row-level security filters (`get_sqla_query` in
//! `superset/models/helpers.py`), including the series-limit subquery, time-offset
//! queries and the row-count wrapper; for a virtual dataset that `WHERE` is on the
//! outer query, over the dataset's SQL. A samples / drill-to-detail request carries no
//! query context but the parts Superset builds one from (the dataset in the query
//! string, one query object as the body): [`samples_context`] assembles that context,
//! which is checked and rewritten the same way.
//!
//! Refused: a dataset datagate cannot map while any filter applies to the caller (fail
//! closed); a replay of a stored query context (chart by id, cache key, legacy
//! `explore_json`) while filters apply; query-context fields that move or override the
//! injected condition (a query's own `datasource`, deprecated top-level `where` /
//! `having`) and, while filters apply, annotation layers that run another chart's query.
//! A filtered caller's `url_params` (which Superset's templating would paste into a
//! dataset's SQL) are not forwarded.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::principal::Principal;
use crate::rls::{AppliedFilter, RewriteLimits, RlsError, RlsPolicy};

/// `charts:` in the configuration file.
///
/// ```yaml
/// charts:
///   datasets:
///     - {id: 7, datasource: "1", table: orders}
///   datasources: ["1"]
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChartsConfig {
    /// Superset datasets (datasource type `table`) whose rows are a protected table's.
    #[serde(default)]
    pub datasets: Vec<DatasetMapping>,
    /// The datagate datasources Superset's datasets read from: a caller with a filter on
    /// any of them is refused chart data on unmapped datasets and replays. Unset: every
    /// configured datasource.
    #[serde(default)]
    pub datasources: Option<Vec<String>>,
    /// Verify each mapped dataset against the definition the upstream stores before a
    /// filtered caller's chart data on it is forwarded ([`crate::dataset_verify`]).
    #[serde(default)]
    pub verify: Option<crate::dataset_verify::VerifyConfig>,
}

/// `charts.datasets[i]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetMapping {
    /// The Superset dataset id (`datasource.id` in a query context).
    pub id: u64,
    /// The datagate datasource (the Superset database) the dataset reads; its dialect
    /// parses the fragments and its filters apply. Chart data on the dataset needs
    /// `datasources:query` on it.
    pub datasource: String,
    /// The table whose filters apply, `[schema.]table`. A virtual dataset may be mapped
    /// only when its rows are this table's rows and it keeps the filters' columns.
    pub table: String,
    /// A virtual dataset's SQL, as Superset stores it: with `charts.verify`, the stored
    /// SQL must equal it (a physical dataset leaves it unset and must store none).
    #[serde(default)]
    pub sql: Option<String>,
}

impl ChartsConfig {
    /// Each id once, each datasource configured; errors name the key.
    pub fn validate(
        &self,
        datasources: &[crate::rls::DatasourceConfig],
    ) -> Result<(), (String, String)> {
        let known = |uid: &str| datasources.iter().any(|datasource| datasource.uid == uid);
        for (index, dataset) in self.datasets.iter().enumerate() {
            let key = format!("charts.datasets[{index}]");
            if !known(&dataset.datasource) {
                return Err((
                    format!("{key}.datasource"),
                    format!("`{}` is not a configured datasource", dataset.datasource),
                ));
            }
            if dataset.table.trim().is_empty() {
                return Err((format!("{key}.table"), "must name a table".into()));
            }
            if self.datasets[..index]
                .iter()
                .any(|other| other.id == dataset.id)
            {
                return Err((
                    format!("{key}.id"),
                    format!("dataset {} is mapped twice", dataset.id),
                ));
            }
        }
        for (index, uid) in self.datasources.iter().flatten().enumerate() {
            if !known(uid) {
                return Err((
                    format!("charts.datasources[{index}]"),
                    format!("`{uid}` is not a configured datasource"),
                ));
            }
        }
        Ok(())
    }

    pub fn dataset(&self, id: u64) -> Option<&DatasetMapping> {
        self.datasets.iter().find(|dataset| dataset.id == id)
    }
}

/// What a route does with chart data (`routes.table[i].chart_data.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChartDataMode {
    /// The request carries a query context (JSON body, or the `form_data` field of a
    /// form body): checked and rewritten.
    Inject,
    /// Superset's samples and drill-to-detail read (`POST /datasource/samples
    /// ?datasource_id=&datasource_type=`): the JSON body is one query object (`filters`,
    /// `extras`, `time_range`, `granularity`) on the dataset the query string names,
    /// checked and rewritten like a chart-data query ([`samples_context`]).
    Samples,
    /// The request replays a query context datagate cannot see (a saved chart, a cache
    /// key, legacy `explore_json`): refused while filters apply to the caller.
    RefuseWhenFiltered,
    /// The request changes or deletes a dataset (`PUT`/`DELETE /api/v1/dataset/{pk}`, the
    /// bulk delete's `q`, the legacy `/datasource/save/` form): on a mapped dataset, for
    /// every caller, deletes are refused and an edit may not move the dataset off its
    /// table or store SQL that was not checked ([`DatasetEdit`]).
    GuardDataset,
    /// The request can overwrite datasets datagate cannot see (imports that carry dataset
    /// definitions and overwrite them): refused while `charts.datasets` maps any dataset.
    RefuseWhenMapped,
}

/// `routes.table[i].chart_data`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChartDataRouteConfig {
    pub mode: ChartDataMode,
}

/// Why chart data was refused. `kind()` is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChartDataError {
    #[error(
        "chart data on {dataset} is refused: datagate has no table mapping for it (`charts.datasets`) and row-level security filters apply to this caller"
    )]
    UnmappedDataset { dataset: String },
    #[error(
        "route `{route}` replays a query context datagate cannot see or filter, and row-level security filters apply to this caller; post the query context to /api/v1/chart/data instead"
    )]
    ReplayFiltered { route: String },
    #[error("invalid query context: {0}")]
    BadQueryContext(String),
    #[error("query context field `{location}` is refused: {reason}")]
    RefusedField { location: String, reason: String },
    #[error("SQL fragment at `{location}` refused: {error}")]
    Fragment { location: String, error: RlsError },
    #[error(
        "dataset {dataset} is mapped to `{table}` in `charts.datasets`: {reason}; remove the mapping first"
    )]
    MappedDataset {
        dataset: u64,
        table: String,
        reason: String,
    },
    #[error(
        "route `{route}` can overwrite datasets datagate cannot see while `charts.datasets` maps datasets to protected tables"
    )]
    OverwritesMappedDatasets { route: String },
    #[error(
        "chart data on dataset {dataset} is refused: what Superset stores for it does not match its mapping to `{table}` (`charts.datasets`): {reason}"
    )]
    DatasetMismatch {
        dataset: u64,
        table: String,
        reason: String,
    },
    #[error(
        "chart data on dataset {dataset} is refused: its definition could not be read from the upstream to verify its mapping"
    )]
    VerificationUnavailable { dataset: u64 },
    /// Not a refusal a client sees: the decision path verifies the dataset and asks again.
    #[error("dataset {dataset} has not been verified yet")]
    VerificationPending { dataset: u64 },
}

impl ChartDataError {
    pub fn kind(&self) -> &'static str {
        match self {
            ChartDataError::UnmappedDataset { .. } => "chart_dataset_unmapped",
            ChartDataError::ReplayFiltered { .. } => "chart_replay_filtered",
            ChartDataError::BadQueryContext(_) => "bad_query_context",
            ChartDataError::RefusedField { .. } => "chart_field_refused",
            ChartDataError::Fragment { error, .. } => error.kind(),
            ChartDataError::MappedDataset { .. } => "chart_dataset_mapped",
            ChartDataError::OverwritesMappedDatasets { .. } => "chart_dataset_import_refused",
            ChartDataError::DatasetMismatch { .. }
            | ChartDataError::VerificationUnavailable { .. }
            | ChartDataError::VerificationPending { .. } => "chart_dataset_unverified",
        }
    }
}

/// One query parameter of a filtered caller's chart-data request. Superset's
/// `url_param()` returns any query parameter unescaped into templated SQL (a virtual
/// dataset's, a calculated column's), and a `form_data` parameter is merged over the form
/// data its templating helpers read. Allowed are only the parameters the 6.1 UI sends,
/// in the shapes it sends them: `form_data={"slice_id":<id>}` (logging and the `metric`
/// macro's dataset lookup), `dashboard_id=<id>` and `force=true|false`.
pub fn check_query_parameter(name: &[u8], value: &[u8]) -> Result<(), ChartDataError> {
    let refused = |reason: &str| refused_parameter(name, reason);
    let is_id = |text: &[u8]| is_ascii_number(text, 19);
    match name {
        b"form_data" => {
            let parsed = crate::json_guard::parse_strict(value)
                .map_err(|_| refused("must be `{\"slice_id\": <id>}`"))?;
            let only_slice_id = parsed.as_object().is_some_and(|members| {
                members.len() == 1
                    && members
                        .get("slice_id")
                        .is_some_and(|id| id.as_u64().is_some())
            });
            if only_slice_id {
                Ok(())
            } else {
                Err(refused(
                    "must be `{\"slice_id\": <id>}`: Superset's templating reads the rest into SQL",
                ))
            }
        }
        b"dashboard_id" if is_id(value) => Ok(()),
        b"force" if matches!(value, b"true" | b"false") => Ok(()),
        b"dashboard_id" | b"force" => Err(refused("not a value the Superset UI sends")),
        _ => Err(refused(
            "Superset's `url_param()` reads every query parameter into templated SQL",
        )),
    }
}

/// A refused query parameter, named as the client sent it.
fn refused_parameter(name: &[u8], reason: &str) -> ChartDataError {
    ChartDataError::RefusedField {
        location: format!("?{}", String::from_utf8_lossy(name)),
        reason: reason.to_string(),
    }
}

/// One to `max_digits` ASCII digits (Superset reads other digits as numbers too).
fn is_ascii_number(text: &[u8], max_digits: usize) -> bool {
    !text.is_empty() && text.len() <= max_digits && text.iter().all(u8::is_ascii_digit)
}

/// One query parameter of a filtered caller's samples request: the ones Superset's
/// `SamplesRequestSchema` reads, in the shapes the 6.1 UI sends (ids and page numbers as
/// ASCII digits, `force=true|false`, `datasource_type=table`); any other is refused, as
/// for chart data ([`check_query_parameter`]), because `url_param()` reads it into SQL.
pub fn check_samples_query_parameter(name: &[u8], value: &[u8]) -> Result<(), ChartDataError> {
    let refused = |reason: &str| refused_parameter(name, reason);
    let is_number = |text: &[u8]| is_ascii_number(text, 9);
    match name {
        b"datasource_id" | b"dashboard_id" if is_number(value) => Ok(()),
        b"page" | b"per_page" if is_number(value) => Ok(()),
        b"force" if matches!(value, b"true" | b"false") => Ok(()),
        b"datasource_type" if value == b"table" => Ok(()),
        b"datasource_id" | b"dashboard_id" | b"page" | b"per_page" | b"force"
        | b"datasource_type" => Err(refused("not a value the Superset UI sends")),
        _ => Err(refused(
            "Superset's `url_param()` reads every query parameter into templated SQL",
        )),
    }
}

/// The query context a samples request stands for: Superset's `get_samples` builds one
/// from the dataset the query string names (`datasource_id`, `datasource_type`, each
/// read once) and the body as its only query (`{**payload, row_limit, row_offset}`).
/// `payload` is the JSON body; `null` is `{}` to Superset (`handle_none`). The rewritten
/// query is sent back as the body ([`samples_payload`]).
pub fn samples_context(
    datasource_id: Option<&str>,
    datasource_type: Option<&str>,
    payload: Value,
) -> Result<Value, ChartDataError> {
    let missing = |name: &str| ChartDataError::BadQueryContext(format!("`?{name}` is required"));
    let datasource_id = datasource_id.ok_or_else(|| missing("datasource_id"))?;
    let datasource_type = datasource_type.ok_or_else(|| missing("datasource_type"))?;
    let payload = match payload {
        Value::Null => Value::Object(Map::new()),
        Value::Object(members) => Value::Object(members),
        _ => {
            return Err(ChartDataError::BadQueryContext(
                "the samples request's body is a JSON object".into(),
            ));
        }
    };
    let id = match datasource_id.parse::<u64>() {
        Ok(id) if datasource_id.bytes().all(|byte| byte.is_ascii_digit()) => Value::from(id),
        _ => Value::String(datasource_id.to_string()),
    };
    Ok(serde_json::json!({
        "datasource": {"id": id, "type": datasource_type},
        "queries": [payload],
    }))
}

/// The body to forward for a rewritten [`samples_context`]: its one query.
pub fn samples_payload(context: &Value) -> Result<&Value, ChartDataError> {
    context
        .get("queries")
        .and_then(|queries| queries.get(0))
        .ok_or_else(|| ChartDataError::BadQueryContext("the samples query".into()))
}

/// The dataset a query context names, as Superset resolves it: `{"type": "table",
/// "id": 7}` (or `"7"`; Superset reads a digit string as the id). Anything else (a
/// UUID, another datasource type, non-ASCII digits) is not mapped.
pub fn dataset_id(context: &Value) -> Result<Option<u64>, ChartDataError> {
    let Some(datasource) = context.get("datasource") else {
        return Ok(None);
    };
    let Value::Object(datasource) = datasource else {
        return Err(ChartDataError::BadQueryContext(
            "`datasource` must be an object".into(),
        ));
    };
    if datasource.get("type").and_then(Value::as_str) != Some("table") {
        return Ok(None);
    }
    Ok(match datasource.get("id") {
        Some(Value::Number(number)) => number.as_u64(),
        Some(Value::String(text))
            if !text.is_empty() && text.len() <= 19 && text.bytes().all(|b| b.is_ascii_digit()) =>
        {
            text.parse().ok()
        }
        _ => None,
    })
}

/// Describes the datasource a query context names, for messages.
pub fn describe_datasource(context: &Value) -> String {
    match context.get("datasource") {
        Some(datasource) => {
            let mut text = datasource.to_string();
            if text.len() > 80 {
                text = format!("{}…", text.chars().take(80).collect::<String>());
            }
            format!("datasource `{text}`")
        }
        None => "a query context without a datasource".into(),
    }
}

/// One dataset's rules for one caller, while a query context is rewritten.
pub struct Rewriter<'a> {
    pub rls: &'a RlsPolicy,
    pub dataset: &'a DatasetMapping,
    pub principal: &'a Principal,
    pub limits: RewriteLimits,
    /// Whether any filter applies to the caller (annotation layers are refused and
    /// `url_params` dropped then).
    pub filtered: bool,
}

/// What the rewrite did, for `explain` and the audit line.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ChartRewrite {
    pub dataset: u64,
    pub datasource: String,
    pub table: String,
    /// Fragments checked (their locations).
    pub fragments: Vec<String>,
    /// The filters injected, once per query that got them.
    pub applied: Vec<AppliedFilter>,
}

/// Text that cannot be anything but a name (no parentheses, quotes, operators that
/// start comments, or separators): Superset looks it up as a column or metric, and
/// where it pastes it as SQL it cannot reach another relation.
fn is_bare_name(text: &str) -> bool {
    !text.is_empty()
        && !text.contains("--")
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ' ' | '.' | '-' | '$'))
}

impl Rewriter<'_> {
    /// Rewrites `context` in place.
    pub fn rewrite(&self, context: &mut Value) -> Result<ChartRewrite, ChartDataError> {
        let mut report = ChartRewrite {
            dataset: self.dataset.id,
            datasource: self.dataset.datasource.clone(),
            table: self.dataset.table.clone(),
            ..ChartRewrite::default()
        };
        let Value::Object(root) = context else {
            return Err(ChartDataError::BadQueryContext(
                "the query context must be an object".into(),
            ));
        };
        if let Some(form_data) = root.get_mut("form_data") {
            self.form_data(form_data, "/form_data", &mut report)?;
        }
        let Some(Value::Array(queries)) = root.get_mut("queries") else {
            return Err(ChartDataError::BadQueryContext(
                "`queries` must be an array of query objects".into(),
            ));
        };
        for (index, query) in queries.iter_mut().enumerate() {
            self.query(query, &format!("/queries/{index}"), &mut report)?;
        }
        Ok(report)
    }

    fn fragment(
        &self,
        slot: &mut Value,
        location: &str,
        report: &mut ChartRewrite,
    ) -> Result<(), ChartDataError> {
        replace_with_checked(
            self.rls,
            self.dataset,
            self.principal,
            self.limits,
            slot,
            location,
        )?;
        report.fragments.push(location.to_string());
        Ok(())
    }

    /// Every `sqlExpression` anywhere below `value` (metrics, columns, filters, order-by
    /// entries, series-limit metrics, form data): checked, `null` allowed.
    fn expressions(
        &self,
        value: &mut Value,
        location: &str,
        report: &mut ChartRewrite,
    ) -> Result<(), ChartDataError> {
        match value {
            Value::Object(members) => {
                for (key, member) in members.iter_mut() {
                    let here = format!("{location}/{key}");
                    if key == "sqlExpression" {
                        if !member.is_null() {
                            self.fragment(member, &here, report)?;
                        }
                    } else {
                        self.expressions(member, &here, report)?;
                    }
                }
            }
            Value::Array(items) => {
                for (index, item) in items.iter_mut().enumerate() {
                    self.expressions(item, &format!("{location}/{index}"), report)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Strings in a list of columns: Superset pastes a string that is not a column name
    /// into the SQL as an expression (custom group-by SQL).
    fn column_list(
        &self,
        query: &mut Map<String, Value>,
        key: &str,
        location: &str,
        report: &mut ChartRewrite,
    ) -> Result<(), ChartDataError> {
        match query.get_mut(key) {
            None | Some(Value::Null) => Ok(()),
            Some(Value::Array(items)) => {
                for (index, item) in items.iter_mut().enumerate() {
                    if item.is_string() {
                        self.fragment(item, &format!("{location}/{key}/{index}"), report)?;
                    }
                }
                Ok(())
            }
            Some(_) => Err(ChartDataError::BadQueryContext(format!(
                "`{location}/{key}` must be an array"
            ))),
        }
    }

    fn refuse_if_filtered(&self, location: &str, reason: &str) -> Result<(), ChartDataError> {
        if self.filtered {
            return Err(ChartDataError::RefusedField {
                location: location.to_string(),
                reason: reason.to_string(),
            });
        }
        Ok(())
    }

    /// The UI sends the page's URL parameters along; Superset's templating (`url_param`)
    /// would paste them into a dataset's SQL. A filtered caller's are not forwarded.
    fn drop_url_params(&self, members: &mut Map<String, Value>) {
        if self.filtered {
            members.remove("url_params");
        }
    }

    fn form_data(
        &self,
        form_data: &mut Value,
        location: &str,
        report: &mut ChartRewrite,
    ) -> Result<(), ChartDataError> {
        let members = match form_data {
            Value::Null => return Ok(()),
            Value::Object(members) => members,
            _ => {
                return Err(ChartDataError::BadQueryContext(
                    "`form_data` must be an object".into(),
                ));
            }
        };
        self.drop_url_params(members);
        // Tooltip columns are added to the query's columns (as SQL when not a column).
        if let Some(Value::Array(items)) = members.get_mut("tooltip_contents") {
            for (index, item) in items.iter_mut().enumerate() {
                let here = format!("{location}/tooltip_contents/{index}");
                match item {
                    Value::String(_) => self.fragment(item, &here, report)?,
                    Value::Object(entry) => {
                        if let Some(name) = entry.get_mut("column_name")
                            && !name.is_null()
                        {
                            self.fragment(name, &format!("{here}/column_name"), report)?;
                        }
                    }
                    _ => {}
                }
            }
        }
        self.expressions(form_data, location, report)
    }

    fn query(
        &self,
        query: &mut Value,
        location: &str,
        report: &mut ChartRewrite,
    ) -> Result<(), ChartDataError> {
        let Value::Object(members) = query else {
            return Err(ChartDataError::BadQueryContext(format!(
                "`{location}` must be a query object"
            )));
        };
        // Superset passes a query's own `datasource` next to the context's; and its
        // deprecated top-level `where` / `having` replace `extras.where` / `having`.
        if members.contains_key("datasource") {
            return Err(ChartDataError::RefusedField {
                location: format!("{location}/datasource"),
                reason: "a query names the context's datasource only".into(),
            });
        }
        for key in ["where", "having"] {
            if has_content(members.get(key)) {
                return Err(ChartDataError::RefusedField {
                    location: format!("{location}/{key}"),
                    reason: format!("deprecated; send it as `extras.{key}`"),
                });
            }
        }
        self.drop_url_params(members);
        if let Some(Value::Array(layers)) = members.get("annotation_layers") {
            for (index, layer) in layers.iter().enumerate() {
                let source = layer.get("sourceType").and_then(Value::as_str);
                if !matches!(source, Some("NATIVE")) && !is_formula(layer) {
                    self.refuse_if_filtered(
                        &format!("{location}/annotation_layers/{index}"),
                        "an annotation layer of this kind runs another chart's query unfiltered",
                    )?;
                }
            }
        }
        for key in ["columns", "groupby", "series_columns"] {
            self.column_list(members, key, location, report)?;
        }
        if let Some(Value::Array(orderby)) = members.get_mut("orderby") {
            for (index, entry) in orderby.iter_mut().enumerate() {
                if let Value::Array(pair) = entry
                    && let Some(first) = pair.first_mut()
                    && first.is_string()
                {
                    self.fragment(first, &format!("{location}/orderby/{index}/0"), report)?;
                }
            }
        }
        for key in ["granularity", "granularity_sqla"] {
            if let Some(value) = members.get_mut(key)
                && !value.is_null()
            {
                self.fragment(value, &format!("{location}/{key}"), report)?;
            }
        }
        self.expressions(query, location, report)?;
        let Value::Object(members) = query else {
            return Ok(());
        };
        let extras = members
            .entry("extras")
            .or_insert_with(|| Value::Object(Map::new()));
        if extras.is_null() {
            *extras = Value::Object(Map::new());
        }
        let Value::Object(extras) = extras else {
            return Err(ChartDataError::BadQueryContext(format!(
                "`{location}/extras` must be an object"
            )));
        };
        if let Some(having) = extras.get_mut("having")
            && has_content(Some(having))
        {
            self.fragment(having, &format!("{location}/extras/having"), report)?;
        }
        let user_where = match extras.get("where") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text.clone()),
            Some(_) => {
                return Err(ChartDataError::RefusedField {
                    location: format!("{location}/extras/where"),
                    reason: "a SQL expression must be a string".into(),
                });
            }
        };
        let filtered = self
            .rls
            .filtered_where(
                &self.dataset.datasource,
                &self.dataset.table,
                user_where.as_deref(),
                self.principal,
                self.limits,
            )
            .map_err(|error| ChartDataError::Fragment {
                location: format!("{location}/extras/where"),
                error,
            })?;
        match filtered.sql {
            Some(sql) => {
                extras.insert("where".into(), Value::String(sql));
            }
            None => {
                extras.remove("where");
            }
        }
        if let Some(applied) = filtered.applied {
            report.applied.push(applied);
        }
        Ok(())
    }
}

fn is_formula(layer: &Value) -> bool {
    layer.get("annotationType").and_then(Value::as_str) == Some("FORMULA")
}

/// A value Superset would act on: not absent, `null`, `""`, `{}` or `[]`.
fn has_content(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::String(text)) => !text.trim().is_empty(),
        Some(Value::Object(members)) => !members.is_empty(),
        Some(Value::Array(items)) => !items.is_empty(),
        Some(_) => true,
    }
}

/// An edit of a mapped dataset (`PUT /api/v1/dataset/{pk}`, the `data` of
/// `/datasource/save/`). What the mapping promises — the dataset's rows are its table's
/// rows, so the table's filters are the right ones — rests on fields only such an edit
/// changes, and Superset pastes the SQL stored in a dataset (calculated columns, saved
/// metrics, the values predicate) into every chart's query, where datagate's fragment
/// checks never see it. So, for every caller (a stored expression serves every caller
/// later): the table, schema, catalog and database must stay the mapping's, no dataset
/// SQL or template parameters, and each stored expression is checked like a query
/// context's `sqlExpression` and forwarded as printed.
pub struct DatasetEdit<'a> {
    pub rls: &'a RlsPolicy,
    pub dataset: &'a DatasetMapping,
    pub principal: &'a Principal,
    pub limits: RewriteLimits,
    /// The schema an unqualified mapping means (`main` on SQLite, `public` on
    /// PostgreSQL); `None` when the dialect has none.
    pub default_schema: Option<&'static str>,
}

fn is_blank(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(text) => text.trim().is_empty(),
        _ => false,
    }
}

impl DatasetEdit<'_> {
    pub fn refused(&self, reason: impl Into<String>) -> ChartDataError {
        ChartDataError::MappedDataset {
            dataset: self.dataset.id,
            table: self.dataset.table.clone(),
            reason: reason.into(),
        }
    }

    /// The refusal for deleting the dataset: a new dataset could take its id (SQLite
    /// reuses the highest) and with it the mapping.
    pub fn delete_refused(&self) -> ChartDataError {
        self.refused("datagate refuses deleting it, since a new dataset could take its id")
    }

    /// Checks `edit` (the dataset object) in place; returns the locations of the
    /// expressions checked.
    pub fn check(&self, edit: &mut Value) -> Result<Vec<String>, ChartDataError> {
        let Value::Object(fields) = edit else {
            return Err(ChartDataError::BadQueryContext(
                "a dataset edit must be a JSON object".into(),
            ));
        };
        let parts: Vec<&str> = self.dataset.table.split('.').collect();
        let (mapped_schema, mapped_table) = match parts.as_slice() {
            [schema, table] => (Some(*schema), *table),
            _ => (None, self.dataset.table.as_str()),
        };
        // A virtual dataset's `table_name` is only its name; its SQL is what it reads.
        let is_virtual = self
            .dataset
            .sql
            .as_deref()
            .is_some_and(|sql| !sql.trim().is_empty());
        if !is_virtual
            && let Some(table) = fields.get("table_name").filter(|value| !value.is_null())
            && table.as_str() != Some(mapped_table)
        {
            return Err(self.refused(format!("`table_name` must stay `{mapped_table}`")));
        }
        if let Some(schema) = fields.get("schema").filter(|value| !is_blank(value)) {
            let allowed = mapped_schema.or(self.default_schema);
            if schema.as_str().is_none() || schema.as_str() != allowed {
                return Err(self.refused(match allowed {
                    Some(allowed) => format!("`schema` must stay `{allowed}`"),
                    None => "`schema` cannot be set on this mapping".to_string(),
                }));
            }
        }
        if fields.get("catalog").is_some_and(|value| !is_blank(value)) {
            return Err(self.refused("`catalog` cannot be set"));
        }
        // Both spellings, each checked: the REST API reads `database_id`, the legacy save
        // form `database.id`, and a body may carry both.
        let databases = [
            fields.get("database_id"),
            fields
                .get("database")
                .and_then(|database| database.get("id")),
        ];
        for database in databases
            .into_iter()
            .flatten()
            .filter(|value| !value.is_null())
        {
            let uid = match database {
                Value::Number(number) => number.to_string(),
                Value::String(text) => text.clone(),
                _ => String::new(),
            };
            if uid != self.dataset.datasource {
                return Err(self.refused(format!(
                    "the database must stay `{}`",
                    self.dataset.datasource
                )));
            }
        }
        // A mapped virtual dataset's SQL may be sent back unchanged (the dataset editor
        // sends the whole dataset when it saves a metric), never changed or cleared.
        let mapped_sql = self
            .dataset
            .sql
            .as_deref()
            .map(str::trim)
            .filter(|sql| !sql.is_empty());
        match (fields.get("sql"), mapped_sql) {
            (None, _) => {}
            (Some(sql), None) if is_blank(sql) => {}
            (Some(_), None) => {
                return Err(self.refused(
                    "its SQL cannot be set or changed through datagate (the mapping says its rows are the table's)",
                ));
            }
            (Some(sql), Some(mapped)) if sql.as_str().map(str::trim) != Some(mapped) => {
                return Err(
                    self.refused("its SQL can only be sent unchanged (the mapping's `sql`)")
                );
            }
            (Some(_), Some(_)) => {}
        }
        let no_template_parameters = |value: &Value| {
            is_blank(value)
                || value.as_str().is_some_and(|text| text.trim() == "{}")
                || value.as_object().is_some_and(Map::is_empty)
        };
        if fields
            .get("template_params")
            .is_some_and(|value| !no_template_parameters(value))
        {
            return Err(self.refused(
                "`template_params` are refused (Jinja is rendered after datagate's checks)",
            ));
        }
        let mut checked = Vec::new();
        if let Some(predicate) = fields.get_mut("fetch_values_predicate") {
            self.expression(predicate, "/fetch_values_predicate", &mut checked)?;
        }
        for list in ["columns", "metrics"] {
            match fields.get_mut(list) {
                None | Some(Value::Null) => {}
                Some(Value::Array(items)) => {
                    for (index, item) in items.iter_mut().enumerate() {
                        let location = format!("/{list}/{index}/expression");
                        match item {
                            Value::Object(members) => {
                                if let Some(expression) = members.get_mut("expression") {
                                    self.expression(expression, &location, &mut checked)?;
                                }
                            }
                            _ => {
                                return Err(ChartDataError::BadQueryContext(format!(
                                    "`/{list}/{index}` must be an object"
                                )));
                            }
                        }
                    }
                }
                Some(_) => {
                    return Err(ChartDataError::BadQueryContext(format!(
                        "`{list}` must be an array"
                    )));
                }
            }
        }
        Ok(checked)
    }

    /// Checks the definition the upstream stores for the dataset (the `result` of
    /// Superset's `GET /api/v1/dataset/{pk}`) against the mapping, by the rules an edit
    /// through datagate must keep, and the stored SQL equal to the mapping's `sql` (none
    /// for a physical dataset). This covers what was stored before datagate was in front,
    /// or by a path around it, and a mapped id taken by a dataset created later.
    pub fn check_stored(&self, stored: &Value) -> Result<(), ChartDataError> {
        let mismatch = |reason: String| ChartDataError::DatasetMismatch {
            dataset: self.dataset.id,
            table: self.dataset.table.clone(),
            reason,
        };
        let Value::Object(fields) = stored else {
            return Err(mismatch("the upstream's answer is not a dataset".into()));
        };
        if fields.get("id").and_then(Value::as_u64) != Some(self.dataset.id) {
            return Err(mismatch("the upstream answered for another dataset".into()));
        }
        fn trimmed(value: Option<&str>) -> Option<&str> {
            value.map(str::trim).filter(|text| !text.is_empty())
        }
        let stored_sql = trimmed(fields.get("sql").and_then(Value::as_str));
        match (stored_sql, trimmed(self.dataset.sql.as_deref())) {
            (None, None) => {}
            (Some(_), None) => {
                return Err(mismatch(
                    "it is a virtual dataset and the mapping names no `sql` for it".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(mismatch(
                    "the mapping names `sql`, but the dataset stores none".into(),
                ));
            }
            (Some(stored), Some(mapped)) if stored != mapped => {
                return Err(mismatch("its stored SQL is not the mapping's `sql`".into()));
            }
            (Some(_), Some(_)) => {}
        }
        let database = fields
            .get("database")
            .and_then(|database| database.get("id"))
            .cloned()
            .ok_or_else(|| mismatch("the upstream's answer names no database".into()))?;
        let mut definition = Map::new();
        for key in [
            "table_name",
            "schema",
            "catalog",
            "template_params",
            "fetch_values_predicate",
            "columns",
            "metrics",
        ] {
            if let Some(value) = fields.get(key) {
                definition.insert(key.to_string(), value.clone());
            }
        }
        definition.insert("database_id".to_string(), database);
        let mut definition = Value::Object(definition);
        self.check(&mut definition).map(|_| ()).map_err(|error| {
            mismatch(match error {
                ChartDataError::MappedDataset { reason, .. } => reason,
                ChartDataError::Fragment { location, error } => {
                    format!("its stored SQL at `{location}` is refused: {error}")
                }
                other => other.to_string(),
            })
        })
    }

    fn expression(
        &self,
        slot: &mut Value,
        location: &str,
        checked: &mut Vec<String>,
    ) -> Result<(), ChartDataError> {
        if is_blank(slot) {
            return Ok(());
        }
        replace_with_checked(
            self.rls,
            self.dataset,
            self.principal,
            self.limits,
            slot,
            location,
        )?;
        checked.push(location.to_string());
        Ok(())
    }
}

/// The SQL expression in `slot` (a query context's or a dataset's) checked as a fragment
/// of the dataset's datasource and replaced by its printed form; bare names pass as they
/// are.
fn replace_with_checked(
    rls: &RlsPolicy,
    dataset: &DatasetMapping,
    principal: &Principal,
    limits: RewriteLimits,
    slot: &mut Value,
    location: &str,
) -> Result<(), ChartDataError> {
    let Value::String(text) = slot else {
        return Err(ChartDataError::RefusedField {
            location: location.to_string(),
            reason: "a SQL expression must be a string".into(),
        });
    };
    if !is_bare_name(text) {
        *text = rls
            .check_fragment(&dataset.datasource, text, principal, limits)
            .map_err(|error| ChartDataError::Fragment {
                location: location.to_string(),
                error,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::PrincipalKind;
    use crate::rls::{DatasourceConfig, Dialect, FilterDefinition, FilterType};
    use serde_json::json;

    fn rls() -> RlsPolicy {
        RlsPolicy::compile(
            &[DatasourceConfig {
                uid: "1".into(),
                dialect: Dialect::Sqlite,
                tables: vec![],
                deny_unlisted_tables: false,
                denied_functions: None,
                aws_iam: None,
                templating: None,
            }],
            vec![FilterDefinition {
                name: "tenant".into(),
                filter_type: FilterType::Base,
                datasource: "1".into(),
                tables: vec!["orders".into()],
                roles: vec!["Admin".into()],
                group_key: None,
                clause: "tenant = '{{ current_username() }}'".into(),
                description: None,
            }],
        )
        .unwrap()
    }

    fn caller(name: &str, roles: &[&str]) -> Principal {
        let mut principal = Principal::anonymous(roles.iter().map(|r| r.to_string()).collect());
        principal.kind = PrincipalKind::User;
        principal.username = name.into();
        principal
    }

    fn rewrite(context: &mut Value, principal: &Principal) -> Result<ChartRewrite, ChartDataError> {
        let rls = rls();
        let dataset = DatasetMapping {
            sql: None,
            id: 7,
            datasource: "1".into(),
            table: "orders".into(),
        };
        Rewriter {
            rls: &rls,
            dataset: &dataset,
            principal,
            limits: RewriteLimits::default(),
            filtered: rls.filters_apply(None, principal),
        }
        .rewrite(context)
    }

    /// A query context as Superset 6.1's UI posts it (trimmed).
    fn ui_context() -> Value {
        json!({
            "datasource": {"id": 7, "type": "table"},
            "force": false,
            "queries": [{
                "filters": [{"col": "region", "op": "IN", "val": ["EU"]}],
                "extras": {"having": "", "where": "(amount > 1)"},
                "applied_time_extras": {},
                "columns": ["region", {"sqlExpression": "upper(region)", "label": "R", "expressionType": "SQL"}],
                "metrics": [
                    "count",
                    {"expressionType": "SQL", "sqlExpression": "SUM(amount)", "label": "total"},
                    {"expressionType": "SIMPLE", "column": {"column_name": "amount"}, "aggregate": "MAX", "sqlExpression": null, "label": "m"}
                ],
                "orderby": [[{"expressionType": "SQL", "sqlExpression": "SUM(amount)", "label": "total"}, false]],
                "annotation_layers": [],
                "row_limit": 1000,
                "order_desc": true,
                "url_params": {"slice_id": "5"}
            }],
            "form_data": {"viz_type": "table", "adhoc_filters": [{"expressionType": "SQL", "sqlExpression": "amount > 1", "clause": "WHERE"}], "url_params": {"slice_id": "5"}},
            "result_format": "json",
            "result_type": "full"
        })
    }

    #[test]
    fn the_callers_filter_is_injected_into_every_query() {
        let mut context = ui_context();
        let report = rewrite(&mut context, &caller("acme", &["Gamma"])).unwrap();
        assert_eq!(
            context["queries"][0]["extras"]["where"],
            "((amount > 1)) AND ((tenant = 'acme'))"
        );
        assert_eq!(context["queries"][0]["extras"]["having"], "");
        assert_eq!(report.applied.len(), 1);
        assert!(
            report
                .fragments
                .contains(&"/queries/0/metrics/1/sqlExpression".to_string())
        );
        assert!(
            report
                .fragments
                .contains(&"/form_data/adhoc_filters/0/sqlExpression".to_string())
        );
        // URL parameters (read by Superset's templating) are not forwarded.
        assert!(context["queries"][0].get("url_params").is_none());
        assert!(context["form_data"].get("url_params").is_none());
        // A query without extras gets them.
        let mut bare = json!({"datasource": {"id": 7, "type": "table"}, "queries": [{"columns": ["region"]}, {"metrics": ["count"], "extras": null}]});
        rewrite(&mut bare, &caller("acme", &["Gamma"])).unwrap();
        for index in 0..2 {
            assert_eq!(
                bare["queries"][index]["extras"]["where"],
                "((tenant = 'acme'))"
            );
        }
        // A caller the (base) filter exempts keeps the query as sent, checked.
        let mut admin = ui_context();
        let report = rewrite(&mut admin, &caller("root", &["Admin"])).unwrap();
        assert_eq!(admin["queries"][0]["extras"]["where"], "(amount > 1)");
        assert!(report.applied.is_empty());
        assert_eq!(admin["queries"][0]["url_params"], json!({"slice_id": "5"}));
    }

    #[test]
    fn a_samples_request_is_its_dataset_and_one_query_rewritten_like_chart_data() {
        // What Explore's drill to detail sends, on dataset 7.
        let drill = json!({"filters": [{"col": "region", "op": "IN", "val": ["EU"]}], "extras": {"where": ""}});
        let mut context = samples_context(Some("7"), Some("table"), drill).unwrap();
        assert_eq!(dataset_id(&context).unwrap(), Some(7));
        rewrite(&mut context, &caller("acme", &["Gamma"])).unwrap();
        let payload = samples_payload(&context).unwrap();
        assert_eq!(payload["extras"]["where"], "((tenant = 'acme'))");
        assert_eq!(payload["filters"][0]["col"], "region");
        // The Samples tab's empty body (and `null`, which Superset reads as `{}`) gets
        // the filter too.
        for body in [json!({}), Value::Null] {
            let mut context = samples_context(Some("7"), Some("table"), body).unwrap();
            rewrite(&mut context, &caller("acme", &["Gamma"])).unwrap();
            assert_eq!(
                samples_payload(&context).unwrap(),
                &json!({"extras": {"where": "((tenant = 'acme'))"}})
            );
        }
        // Another kind of datasource, or an id that is not ASCII digits, is not mapped.
        for (id, kind) in [
            ("7", "dataset"),
            ("7", "query"),
            ("٧", "table"),
            ("+7", "table"),
        ] {
            let context = samples_context(Some(id), Some(kind), json!({})).unwrap();
            assert_eq!(dataset_id(&context).unwrap(), None, "{id} {kind}");
        }
        assert!(samples_context(None, Some("table"), json!({})).is_err());
        assert!(samples_context(Some("7"), None, json!({})).is_err());
        assert!(samples_context(Some("7"), Some("table"), json!([1])).is_err());
        // A fragment is checked as in chart data.
        let mut context = samples_context(
            Some("7"),
            Some("table"),
            json!({"extras": {"where": "1=1) OR (1=1"}}),
        )
        .unwrap();
        assert_eq!(
            rewrite(&mut context, &caller("acme", &["Gamma"]))
                .unwrap_err()
                .kind(),
            "parse_error"
        );
        // The query string holds only what the UI sends.
        for (name, value) in [
            ("datasource_id", "7"),
            ("datasource_type", "table"),
            ("force", "false"),
            ("page", "1"),
            ("per_page", "50"),
            ("dashboard_id", "3"),
        ] {
            assert!(check_samples_query_parameter(name.as_bytes(), value.as_bytes()).is_ok());
        }
        for (name, value) in [
            ("datasource_id", "+7"),
            ("datasource_type", "query"),
            ("per_page", "1e3"),
            ("tenant", "x"),
            ("form_data", "{}"),
        ] {
            assert_eq!(
                check_samples_query_parameter(name.as_bytes(), value.as_bytes())
                    .unwrap_err()
                    .kind(),
                "chart_field_refused",
                "{name}={value}"
            );
        }
    }

    #[test]
    fn adversarial_query_contexts_are_refused() {
        let acme = caller("acme", &["Gamma"]);
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "/queries/0/metrics/0",
                json!({"metrics": [{"expressionType": "SQL", "sqlExpression": "(SELECT SUM(amount) FROM orders)", "label": "x"}]}),
                "subquery_not_allowed",
            ),
            (
                "/queries/0/columns/0",
                json!({"columns": [{"sqlExpression": "(SELECT group_concat(tenant) FROM orders)", "label": "x"}]}),
                "subquery_not_allowed",
            ),
            (
                "groupby custom SQL",
                json!({"groupby": ["(SELECT 1 FROM orders)"], "metrics": ["count"]}),
                "subquery_not_allowed",
            ),
            (
                "column string",
                json!({"columns": ["region) FROM orders --"]}),
                "comment_not_allowed",
            ),
            (
                "where escape",
                json!({"columns": ["region"], "extras": {"where": "1=1) OR (1=1"}}),
                "parse_error",
            ),
            (
                "where comment",
                json!({"columns": ["region"], "extras": {"where": "1=1 --"}}),
                "comment_not_allowed",
            ),
            (
                "having subquery",
                json!({"metrics": ["count"], "extras": {"having": "COUNT(*) > (SELECT COUNT(*) FROM orders)"}}),
                "subquery_not_allowed",
            ),
            (
                "templating",
                json!({"columns": ["region"], "extras": {"where": "tenant = '{{ current_username() }}'"}}),
                "template_syntax",
            ),
            (
                "adhoc filter",
                json!({"columns": ["region"], "filters": [{"col": {"sqlExpression": "tenant || (SELECT 1)", "label": "x"}, "op": "IS NOT NULL"}]}),
                "subquery_not_allowed",
            ),
            (
                "orderby",
                json!({"metrics": ["count"], "orderby": [["load_extension('x')", true]]}),
                "denied_function",
            ),
            (
                "series limit metric",
                json!({"metrics": ["count"], "series_limit_metric": {"expressionType": "SQL", "sqlExpression": "(SELECT 1)"}}),
                "subquery_not_allowed",
            ),
            (
                "granularity",
                json!({"metrics": ["count"], "granularity": "(SELECT max(ts) FROM orders)"}),
                "subquery_not_allowed",
            ),
            (
                "separator",
                json!({"metrics": [{"expressionType": "SQL", "sqlExpression": "1; DELETE FROM orders"}]}),
                "multiple_statements",
            ),
            (
                "non-string expression",
                json!({"metrics": [{"expressionType": "SQL", "sqlExpression": ["SUM(amount)"]}]}),
                "chart_field_refused",
            ),
            (
                "deprecated where",
                json!({"columns": ["region"], "where": "1=1"}),
                "chart_field_refused",
            ),
            (
                "deprecated having",
                json!({"metrics": ["count"], "having": "1=1"}),
                "chart_field_refused",
            ),
            (
                "own datasource",
                json!({"columns": ["region"], "datasource": {"id": 8, "type": "table"}}),
                "chart_field_refused",
            ),
            (
                "chart annotation",
                json!({"metrics": ["count"], "annotation_layers": [{"sourceType": "table", "value": 3, "name": "a", "annotationType": "EVENT"}]}),
                "chart_field_refused",
            ),
            (
                "where not a string",
                json!({"columns": ["region"], "extras": {"where": {"a": 1}}}),
                "chart_field_refused",
            ),
        ];
        for (name, query, kind) in cases {
            let mut context = json!({"datasource": {"id": 7, "type": "table"}, "queries": [query]});
            assert_eq!(
                rewrite(&mut context, &acme)
                    .map(|_| ())
                    .map_err(|error| error.kind()),
                Err(kind),
                "{name}"
            );
        }
        let mut tooltip = json!({"datasource": {"id": 7, "type": "table"}, "queries": [{"metrics": ["count"]}], "form_data": {"tooltip_contents": ["(SELECT tenant FROM orders)"]}});
        assert_eq!(
            rewrite(&mut tooltip, &acme).unwrap_err().kind(),
            "subquery_not_allowed"
        );
        for bad in [json!([]), json!({"queries": {}}), json!({"queries": [1]})] {
            let mut context = bad;
            assert_eq!(
                rewrite(&mut context, &acme).unwrap_err().kind(),
                "bad_query_context"
            );
        }
    }

    #[test]
    fn datasets_are_read_as_superset_reads_them() {
        for (datasource, id) in [
            (json!({"id": 7, "type": "table"}), Some(7)),
            (json!({"id": "007", "type": "table"}), Some(7)),
            (json!({"id": "\u{0667}", "type": "table"}), None),
            (json!({"id": 7.0, "type": "table"}), None),
            (
                json!({"id": "5b6f7a2e-9d1c-4f3e-8a2b-1c2d3e4f5a6b", "type": "table"}),
                None,
            ),
            (json!({"id": 7, "type": "query"}), None),
            (json!({"id": 7}), None),
            (json!({"id": true, "type": "table"}), None),
        ] {
            assert_eq!(
                dataset_id(&json!({"datasource": datasource})).unwrap(),
                id,
                "{datasource}"
            );
        }
        assert!(dataset_id(&json!({"datasource": "7__table"})).is_err());
        assert_eq!(dataset_id(&json!({})).unwrap(), None);
    }

    /// The query parameters the 6.1 UI puts on chart-data requests pass; anything
    /// `url_param()` or the form-data merge could read into SQL is refused.
    #[test]
    fn only_the_uis_query_parameters_pass_for_filtered_callers() {
        for (name, value) in [
            ("form_data", r#"{"slice_id":1}"#),
            ("form_data", r#"{"slice_id": 42}"#),
            ("dashboard_id", "7"),
            ("force", "true"),
            ("force", "false"),
        ] {
            assert!(
                check_query_parameter(name.as_bytes(), value.as_bytes()).is_ok(),
                "{name}={value}"
            );
        }
        for (name, value) in [
            ("form_data", r#"{"slice_id":1,"url_params":{"t":"x"}}"#),
            (
                "form_data",
                r#"{"extra_filters":[{"col":"t","op":"in","val":["x"]}]}"#,
            ),
            ("form_data", r#"{"slice_id":"1"}"#),
            ("form_data", r#"{"slice_id":1,"slice_id":2}"#),
            ("form_data", "not json"),
            ("dashboard_id", "1 OR 1=1"),
            ("dashboard_id", ""),
            ("force", "yes"),
            ("tenant", "' UNION SELECT note FROM orders --"),
            ("slice_id", "1"),
        ] {
            let error = check_query_parameter(name.as_bytes(), value.as_bytes()).unwrap_err();
            assert_eq!(error.kind(), "chart_field_refused", "{name}={value}");
            assert!(error.to_string().contains(&format!("`?{name}`")), "{error}");
        }
    }

    fn dataset_edit(edit: &mut Value, table: &str) -> Result<Vec<String>, ChartDataError> {
        let rls = rls();
        let dataset = DatasetMapping {
            sql: None,
            id: 7,
            datasource: "1".into(),
            table: table.into(),
        };
        DatasetEdit {
            rls: &rls,
            dataset: &dataset,
            principal: &caller("root", &["Admin"]),
            limits: RewriteLimits::default(),
            default_schema: Dialect::Sqlite.default_schema(),
        }
        .check(edit)
    }

    #[test]
    fn a_mapped_dataset_edit_keeps_the_table_and_stores_only_checked_sql() {
        // What the 6.1 dataset editor sends for a physical dataset, trimmed.
        let mut edit = json!({
            "table_name": "orders", "schema": "main", "catalog": null, "database_id": 1,
            "sql": null, "template_params": "", "fetch_values_predicate": "amount  >  0",
            "columns": [{"column_name": "id"}, {"column_name": "big", "expression": "amount*2"}],
            "metrics": [{"metric_name": "total", "expression": "SUM( amount )"}],
            "description": "x"
        });
        let checked = dataset_edit(&mut edit, "orders").unwrap();
        assert_eq!(
            checked,
            [
                "/fetch_values_predicate",
                "/columns/1/expression",
                "/metrics/0/expression"
            ]
        );
        assert_eq!(edit["metrics"][0]["expression"], "SUM(amount)");
        assert_eq!(edit["fetch_values_predicate"], "amount > 0");
        assert!(dataset_edit(&mut json!({"schema": "main"}), "main.orders").is_ok());

        let refused = |edit: Value, table: &str| {
            dataset_edit(&mut edit.clone(), table)
                .expect_err(&edit.to_string())
                .kind()
        };
        for edit in [
            json!({"table_name": "customers"}),
            json!({"table_name": 5}),
            json!({"schema": "other"}),
            json!({"catalog": "x"}),
            json!({"database_id": 2}),
            json!({"database": {"id": "2"}}),
            json!({"database_id": 1, "database": {"id": 2}}),
            json!({"sql": "SELECT * FROM orders"}),
            json!({"template_params": "{\"a\": 1}"}),
        ] {
            assert_eq!(refused(edit, "orders"), "chart_dataset_mapped");
        }
        assert_eq!(
            refused(json!({"schema": "main"}), "archive.orders"),
            "chart_dataset_mapped"
        );
        assert_eq!(
            refused(
                json!({"metrics": [{"expression": "(SELECT sum(amount) FROM orders)"}]}),
                "orders"
            ),
            "subquery_not_allowed"
        );
        assert_eq!(
            refused(
                json!({"columns": [{"expression": "load_extension('x')"}]}),
                "orders"
            ),
            "denied_function"
        );
        assert_eq!(
            refused(json!({"columns": [{"expression": 5}]}), "orders"),
            "chart_field_refused"
        );
        assert_eq!(
            refused(json!({"columns": {}}), "orders"),
            "bad_query_context"
        );
        assert_eq!(refused(json!([]), "orders"), "bad_query_context");
    }

    fn stored_check(stored: &Value, sql: Option<&str>) -> Result<(), ChartDataError> {
        let rls = rls();
        let dataset = DatasetMapping {
            sql: sql.map(str::to_string),
            id: 7,
            datasource: "1".into(),
            table: "orders".into(),
        };
        DatasetEdit {
            rls: &rls,
            dataset: &dataset,
            principal: &caller("datagate-verifier", &["Admin"]),
            limits: RewriteLimits::default(),
            default_schema: Dialect::Sqlite.default_schema(),
        }
        .check_stored(stored)
    }

    #[test]
    fn a_stored_dataset_is_verified_by_the_rules_an_edit_keeps() {
        // `GET /api/v1/dataset/7`'s result as Superset 6.1 answers it, trimmed.
        let physical = json!({
            "id": 7, "table_name": "orders", "schema": "main", "catalog": null,
            "database": {"id": 1, "database_name": "demo", "backend": "sqlite"},
            "sql": null, "template_params": null, "fetch_values_predicate": null,
            "columns": [{"column_name": "id", "expression": null}, {"column_name": "big", "expression": "amount*2"}],
            "metrics": [{"metric_name": "count", "expression": "COUNT(*)"}],
            "extra": null, "kind": "physical",
        });
        assert_eq!(stored_check(&physical, None), Ok(()));
        let virtual_sql = "SELECT id, tenant_id, amount FROM orders";
        let mut virtual_dataset = physical.clone();
        virtual_dataset["sql"] = json!(format!("{virtual_sql}\n"));
        virtual_dataset["table_name"] = json!("orders_amounts");
        assert_eq!(stored_check(&virtual_dataset, Some(virtual_sql)), Ok(()));

        let reason = |stored: &Value, sql: Option<&str>| match stored_check(stored, sql) {
            Err(ChartDataError::DatasetMismatch {
                dataset, reason, ..
            }) => {
                assert_eq!(dataset, 7);
                reason
            }
            other => panic!("{stored}: {other:?}"),
        };
        let changed = |pointer: &str, value: Value| {
            let mut stored = physical.clone();
            *stored.pointer_mut(pointer).unwrap() = value;
            stored
        };
        let cases: Vec<(Value, Option<&str>, &str)> = vec![
            (
                changed(
                    "/metrics/0/expression",
                    json!("(SELECT group_concat(note) FROM orders)"),
                ),
                None,
                "/metrics/0/expression",
            ),
            (
                changed("/columns/1/expression", json!("amount -- hidden")),
                None,
                "/columns/1/expression",
            ),
            (
                changed("/fetch_values_predicate", json!("{{ url_param('t') }}")),
                None,
                "/fetch_values_predicate",
            ),
            (
                changed("/table_name", json!("customers")),
                None,
                "`table_name` must stay `orders`",
            ),
            (
                changed("/schema", json!("other")),
                None,
                "`schema` must stay `main`",
            ),
            (
                changed("/database/id", json!(2)),
                None,
                "the database must stay `1`",
            ),
            (
                changed("/template_params", json!("{\"tenant\": \"bob\"}")),
                None,
                "`template_params`",
            ),
            (changed("/id", json!(8)), None, "another dataset"),
            (virtual_dataset.clone(), None, "virtual dataset"),
            (
                virtual_dataset.clone(),
                Some("SELECT * FROM orders"),
                "not the mapping's `sql`",
            ),
            (physical.clone(), Some(virtual_sql), "stores none"),
            (json!([]), None, "not a dataset"),
        ];
        for (stored, sql, expected) in cases {
            let reason = reason(&stored, sql);
            assert!(reason.contains(expected), "{stored}: {reason}");
        }
        let mut no_database = physical.clone();
        no_database.as_object_mut().unwrap().remove("database");
        assert!(reason(&no_database, None).contains("no database"));
    }

    #[test]
    fn a_mapped_virtual_dataset_is_edited_only_with_its_sql_unchanged() {
        let rls = rls();
        let mapped_sql = "SELECT id, tenant_id, amount FROM orders";
        let dataset = DatasetMapping {
            sql: Some(mapped_sql.into()),
            id: 9,
            datasource: "1".into(),
            table: "orders".into(),
        };
        let check = DatasetEdit {
            rls: &rls,
            dataset: &dataset,
            principal: &caller("root", &["Admin"]),
            limits: RewriteLimits::default(),
            default_schema: Dialect::Sqlite.default_schema(),
        };
        // What the dataset editor saves: the whole dataset, its SQL as stored.
        let mut edit = json!({
            "table_name": "orders_amounts", "schema": "main", "database_id": 1,
            "sql": format!("{mapped_sql}\n"),
            "metrics": [{"metric_name": "total", "expression": "SUM(amount)"}],
        });
        assert_eq!(
            check.check(&mut edit),
            Ok(vec!["/metrics/0/expression".to_string()])
        );
        assert!(
            check
                .check(&mut json!({"description": "renamed", "table_name": "any name"}))
                .is_ok()
        );
        for sql in [
            json!("SELECT * FROM orders"),
            json!(null),
            json!(""),
            json!(7),
        ] {
            let refused = check.check(&mut json!({"sql": sql}));
            assert!(
                matches!(&refused, Err(ChartDataError::MappedDataset { reason, .. }) if reason.contains("unchanged")),
                "{sql}: {refused:?}"
            );
        }
        // The other rules still hold.
        let refused = check.check(
            &mut json!({"sql": mapped_sql, "metrics": [{"expression": "(SELECT 1 FROM orders)"}]}),
        );
        assert!(
            matches!(refused, Err(ChartDataError::Fragment { .. })),
            "{refused:?}"
        );
    }
}
