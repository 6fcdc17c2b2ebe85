//! Chart data, after authorization: the query context of a Superset chart-data request
//! is read from the request (JSON body, or the `form_data` field of the form body the
//! UI's "Download CSV" posts), its dataset resolved through `charts.datasets`, checked
//! and rewritten by [`crate::chart_data`], and put back into the body the upstream
//! receives. Replays of query contexts datagate cannot see are refused while filters
//! apply to the caller.

use bytes::Bytes;

use super::Refusal;
use super::authorize::{CheckOutcome, Identified, Permit};
use super::request::{ParsedBody, ParsedRequest};
use crate::chart_data::{ChartDataError, ChartDataMode, ChartRewrite, Rewriter};
use crate::state::PolicySnapshot;

/// The form field Superset reads a query context from when the body is not JSON.
const FORM_FIELD: &str = "form_data";

/// The body to forward (`None`: as read) and what was done.
#[derive(Debug, Default)]
pub struct ChartDataOutcome {
    pub body: Option<Bytes>,
    pub rewrite: Option<ChartRewrite>,
}

pub fn rewrite_chart_data(
    charts: &crate::chart_data::ChartsConfig,
    snapshot: &PolicySnapshot,
    identified: &Identified<'_>,
    permit: &Permit,
    request: &ParsedRequest,
    limits: crate::rls::RewriteLimits,
    mut trace: Option<&mut Vec<CheckOutcome>>,
) -> Result<ChartDataOutcome, Refusal> {
    let Some((route, _)) = &identified.route else {
        return Ok(ChartDataOutcome::default());
    };
    let Some(mode) = route.chart_data() else {
        return Ok(ChartDataOutcome::default());
    };
    let principal = permit.principal();
    let filtered = snapshot
        .rls
        .filters_apply(charts.datasources.as_deref(), principal);
    if let Some(trace) = trace.as_deref_mut() {
        trace.push(CheckOutcome::new(
            "chart data: row-level security filters apply to the caller",
            !filtered,
        ));
    }
    if mode == ChartDataMode::RefuseWhenFiltered {
        if filtered {
            return Err(ChartDataError::ReplayFiltered {
                route: route.name().to_string(),
            }
            .into());
        }
        return Ok(ChartDataOutcome::default());
    }
    // Superset's templating reads every query parameter (`url_param()`), and a
    // `form_data` parameter overrides the form data its helpers read.
    if filtered {
        for pair in request.query.every_pair() {
            crate::chart_data::check_query_parameter(&pair.name, &pair.value)?;
        }
    }
    let (mut context, form_span) = match &request.body {
        ParsedBody::Json(value) => (value.clone(), None),
        ParsedBody::Form(form) => {
            let (pair, text) = form
                .single_value(FORM_FIELD)
                .map_err(|error| ChartDataError::BadQueryContext(error.to_string()))?
                .ok_or_else(|| {
                    ChartDataError::BadQueryContext(format!(
                        "a form body carries the query context in `{FORM_FIELD}`"
                    ))
                })?;
            let value = crate::json_guard::parse_strict(text.as_bytes()).map_err(|error| {
                ChartDataError::BadQueryContext(format!("`{FORM_FIELD}`: {error}"))
            })?;
            (value, Some(pair.value_span.clone()))
        }
        ParsedBody::Absent => {
            return Err(
                ChartDataError::BadQueryContext("the request has no query context".into()).into(),
            );
        }
        ParsedBody::Unreadable { media_type } => {
            return Err(ChartDataError::BadQueryContext(format!(
                "a query context is JSON or a form field, not `{media_type}`"
            ))
            .into());
        }
    };
    let dataset = crate::chart_data::dataset_id(&context)?.and_then(|id| charts.dataset(id));
    let Some(dataset) = dataset else {
        if let Some(trace) = trace.as_deref_mut() {
            trace.push(CheckOutcome::new(
                format!(
                    "chart data on {} (unmapped)",
                    crate::chart_data::describe_datasource(&context)
                ),
                !filtered,
            ));
        }
        if filtered {
            return Err(ChartDataError::UnmappedDataset {
                dataset: crate::chart_data::describe_datasource(&context),
            }
            .into());
        }
        // Not filtered: forwarded as read (a JSON body in its canonical form).
        return Ok(ChartDataOutcome::default());
    };
    let subjects = principal.subjects();
    let object = crate::policy::datasource_object(&dataset.datasource);
    let allowed = snapshot
        .policy
        .allows(&subjects, &object, super::QUERY_ACTION);
    if let Some(trace) = trace.as_deref_mut() {
        trace.push(CheckOutcome::new(
            format!(
                "datasource permission `{}` on `{}` for chart data on dataset {}",
                super::QUERY_ACTION,
                dataset.datasource,
                dataset.id
            ),
            allowed,
        ));
    }
    if !allowed {
        return Err(Refusal::MissingDatasourcePermission {
            action: super::QUERY_ACTION.to_string(),
            uid: dataset.datasource.clone(),
        });
    }
    let rewriter = Rewriter {
        rls: &snapshot.rls,
        dataset,
        principal,
        limits,
        filtered,
    };
    let rewrite = rewriter.rewrite(&mut context)?;
    if let Some(trace) = trace {
        trace.push(CheckOutcome::new(format!(
                "row-level security for chart data on dataset {} ({} fragments checked, filters injected into {} queries)",
                dataset.id,
                rewrite.fragments.len(),
                rewrite.applied.len()
            ), true));
    }
    let serialised = serde_json::to_vec(&context)
        .map_err(|error| ChartDataError::BadQueryContext(format!("re-serialising: {error}")))?;
    let body = match (form_span, &request.body) {
        (Some(span), ParsedBody::Form(form)) => {
            let encoded: String = form_urlencoded::byte_serialize(&serialised).collect();
            let text = form.text();
            let (Some(before), Some(after)) = (text.get(..span.start), text.get(span.end..)) else {
                return Err(ChartDataError::BadQueryContext("form body".into()).into());
            };
            let mut output = Vec::with_capacity(before.len() + encoded.len() + after.len());
            output.extend_from_slice(before);
            output.extend_from_slice(encoded.as_bytes());
            output.extend_from_slice(after);
            output
        }
        _ => serialised,
    };
    Ok(ChartDataOutcome {
        body: Some(Bytes::from(body)),
        rewrite: Some(rewrite),
    })
}

impl From<ChartDataError> for Refusal {
    fn from(error: ChartDataError) -> Refusal {
        Refusal::ChartData(error)
    }
}
