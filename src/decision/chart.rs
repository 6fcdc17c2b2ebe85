//! Chart data, after authorization: the query context of a Superset chart-data request
//! is read from the request (JSON body, or the `form_data` field of the form body the
//! UI's "Download CSV" posts; for samples, assembled from the query string and the body
//! as Superset's `get_samples` does), its dataset resolved through `charts.datasets`, checked
//! and rewritten by [`crate::chart_data`], and put back into the body the upstream
//! receives. Replays of query contexts datagate cannot see are refused while filters
//! apply to the caller. Requests that change a mapped dataset (`guard_dataset`) or could
//! overwrite one (`refuse_when_mapped`) are checked here too, for every caller: the
//! mapping is only true while the dataset keeps its table and its stored SQL is checked.

use std::ops::Range;

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

/// `verifier`: with `charts.verify`, a filtered caller's chart data on a mapped dataset
/// needs the dataset's kept verdict; without one the answer is `VerificationPending`, and
/// the caller verifies the dataset and asks again.
#[allow(clippy::too_many_arguments)]
pub fn rewrite_chart_data(
    charts: &crate::chart_data::ChartsConfig,
    verifier: Option<&crate::dataset_verify::DatasetVerifier>,
    method: &str,
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
    match mode {
        ChartDataMode::Inject | ChartDataMode::Samples => {}
        ChartDataMode::RefuseWhenFiltered => {
            if filtered {
                return Err(ChartDataError::ReplayFiltered {
                    route: route.name().to_string(),
                }
                .into());
            }
            return Ok(ChartDataOutcome::default());
        }
        ChartDataMode::RefuseWhenMapped => {
            if let Some(trace) = trace.as_deref_mut() {
                trace.push(CheckOutcome::new(
                    "chart data: no dataset is mapped to a protected table (`charts.datasets`)",
                    charts.datasets.is_empty(),
                ));
            }
            if !charts.datasets.is_empty() {
                return Err(ChartDataError::OverwritesMappedDatasets {
                    route: route.name().to_string(),
                }
                .into());
            }
            return Ok(ChartDataOutcome::default());
        }
        ChartDataMode::GuardDataset => {
            let guarded = GuardedRequest {
                method,
                identified,
                request,
            };
            return guard_dataset(charts, snapshot, &guarded, permit, limits, trace);
        }
    }
    // Superset's templating reads every query parameter (`url_param()`), and a
    // `form_data` parameter overrides the form data its helpers read.
    let samples = mode == ChartDataMode::Samples;
    if filtered {
        for pair in request.query.every_pair() {
            if samples {
                crate::chart_data::check_samples_query_parameter(&pair.name, &pair.value)?;
            } else {
                crate::chart_data::check_query_parameter(&pair.name, &pair.value)?;
            }
        }
    }
    let (mut context, form_span) = if samples {
        (samples_context(request)?, None)
    } else {
        body_object(request, FORM_FIELD)?.ok_or_else(|| {
            ChartDataError::BadQueryContext("the request has no query context".into())
        })?
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
    // The mapping decides which filters apply, so it must hold for a filtered caller.
    if filtered && let Some(verifier) = verifier {
        let verdict = verifier.verdict(dataset.id);
        if let Some(trace) = trace.as_deref_mut()
            && !matches!(verdict, Err(ChartDataError::VerificationPending { .. }))
        {
            trace.push(CheckOutcome::new(
                format!(
                    "dataset {} as the upstream stores it matches its mapping to `{}`",
                    dataset.id, dataset.table
                ),
                verdict.is_ok(),
            ));
        }
        verdict?;
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
    let forwarded = if samples {
        crate::chart_data::samples_payload(&context)?
    } else {
        &context
    };
    Ok(ChartDataOutcome {
        body: Some(reencoded(forwarded, form_span, request)?),
        rewrite: Some(rewrite),
    })
}

/// A samples request as a query context (see [`crate::chart_data::samples_context`]):
/// the dataset from the query string, each parameter read once as Superset reads it, and
/// the JSON body as its query. Superset reads only a JSON body here (`request.json`).
fn samples_context(request: &ParsedRequest) -> Result<serde_json::Value, ChartDataError> {
    let single = |name: &str| {
        request
            .query
            .single_value(name)
            .map(|found| found.map(|(_, text)| text))
            .map_err(|error| ChartDataError::BadQueryContext(error.to_string()))
    };
    let payload = match &request.body {
        ParsedBody::Json(value) => value.clone(),
        _ => {
            return Err(ChartDataError::BadQueryContext(
                "the samples request's body is a JSON object".into(),
            ));
        }
    };
    crate::chart_data::samples_context(
        single("datasource_id")?.as_deref(),
        single("datasource_type")?.as_deref(),
        payload,
    )
}

/// A JSON object read from a body, and the span of the form value it came from.
type BodyObject = (serde_json::Value, Option<Range<usize>>);

/// The JSON object a request carries: the JSON body, or the JSON in form field `field`
/// (with the span of its value, to put the checked object back in its place). `None`:
/// no body.
fn body_object(request: &ParsedRequest, field: &str) -> Result<Option<BodyObject>, ChartDataError> {
    match &request.body {
        ParsedBody::Json(value) => Ok(Some((value.clone(), None))),
        ParsedBody::Form(form) => {
            let (pair, text) = form
                .single_value(field)
                .map_err(|error| ChartDataError::BadQueryContext(error.to_string()))?
                .ok_or_else(|| {
                    ChartDataError::BadQueryContext(format!(
                        "a form body carries the JSON in `{field}`"
                    ))
                })?;
            let value = crate::json_guard::parse_strict(text.as_bytes())
                .map_err(|error| ChartDataError::BadQueryContext(format!("`{field}`: {error}")))?;
            Ok(Some((value, Some(pair.value_span.clone()))))
        }
        ParsedBody::Absent => Ok(None),
        ParsedBody::Unreadable { media_type } => Err(ChartDataError::BadQueryContext(format!(
            "the body is JSON or a form field, not `{media_type}`"
        ))),
    }
}

/// `value` serialised where it was read from: the whole body, or its form field.
fn reencoded(
    value: &serde_json::Value,
    form_span: Option<Range<usize>>,
    request: &ParsedRequest,
) -> Result<Bytes, ChartDataError> {
    let serialised = serde_json::to_vec(value)
        .map_err(|error| ChartDataError::BadQueryContext(format!("re-serialising: {error}")))?;
    let body = match (form_span, &request.body) {
        (Some(span), ParsedBody::Form(form)) => {
            let encoded: String = form_urlencoded::byte_serialize(&serialised).collect();
            let text = form.text();
            let (Some(before), Some(after)) = (text.get(..span.start), text.get(span.end..)) else {
                return Err(ChartDataError::BadQueryContext("form body".into()));
            };
            let mut output = Vec::with_capacity(before.len() + encoded.len() + after.len());
            output.extend_from_slice(before);
            output.extend_from_slice(encoded.as_bytes());
            output.extend_from_slice(after);
            output
        }
        _ => serialised,
    };
    Ok(Bytes::from(body))
}

/// The form field the legacy `/datasource/save/` posts the dataset in.
const DATASET_FORM_FIELD: &str = "data";

/// Every dataset a dataset-changing request could name to Superset: the `pk` path
/// parameter, the bulk delete's Rison list in `q`, and the `id` of the dataset object
/// in the body (the legacy save form's). All of them, not the first found: a `q` added
/// to the save form's URL must not stand in for the body's `id`, which is what Superset
/// reads there.
fn named_datasets(
    identified: &Identified<'_>,
    request: &ParsedRequest,
    body: Option<&serde_json::Value>,
) -> Result<Vec<u64>, ChartDataError> {
    let invalid =
        |what: &str| ChartDataError::BadQueryContext(format!("{what} is not a dataset id"));
    let mut ids = Vec::new();
    if let Some((_, params)) = &identified.route
        && let Some(pk) = params.lookup("pk")
    {
        let id = match pk {
            crate::route::ParamValue::Text(text) => text.parse().ok(),
            crate::route::ParamValue::NotUtf8 { .. } => None,
        };
        ids.push(id.ok_or_else(|| invalid("the path's `pk`"))?);
    }
    if let Some((_, text)) = request
        .query
        .single_value("q")
        .map_err(|error| ChartDataError::BadQueryContext(error.to_string()))?
    {
        let list = crate::route::rison::parse(&text)
            .map_err(|error| ChartDataError::BadQueryContext(format!("`q`: {error}")))?;
        for id in list.as_array().ok_or_else(|| invalid("`q`"))? {
            ids.push(id.as_u64().ok_or_else(|| invalid("an item of `q`"))?);
        }
    }
    if let Some(id) = body.and_then(|body| body.get("id")) {
        ids.push(id.as_u64().ok_or_else(|| invalid("the body's `id`"))?);
    }
    if ids.is_empty() {
        return Err(ChartDataError::BadQueryContext(
            "the request names no dataset".into(),
        ));
    }
    Ok(ids)
}

/// A dataset-changing request as the guard reads it.
#[derive(Clone, Copy)]
struct GuardedRequest<'a> {
    method: &'a str,
    identified: &'a Identified<'a>,
    request: &'a ParsedRequest,
}

/// `chart_data: {mode: guard_dataset}`: edits and deletes of datasets mapped in
/// `charts.datasets`, for every caller (see [`crate::chart_data::DatasetEdit`]).
/// Datasets that are not mapped are Superset's to decide.
fn guard_dataset(
    charts: &crate::chart_data::ChartsConfig,
    snapshot: &PolicySnapshot,
    guarded: &GuardedRequest<'_>,
    permit: &Permit,
    limits: crate::rls::RewriteLimits,
    trace: Option<&mut Vec<CheckOutcome>>,
) -> Result<ChartDataOutcome, Refusal> {
    let GuardedRequest {
        method,
        identified,
        request,
    } = *guarded;
    if charts.datasets.is_empty() {
        return Ok(ChartDataOutcome::default());
    }
    let (mut edit, form_span) = match body_object(request, DATASET_FORM_FIELD)? {
        Some((value, span)) => (Some(value), span),
        None => (None, None),
    };
    let ids = named_datasets(identified, request, edit.as_ref())?;
    let mapped = ids.iter().find_map(|id| charts.dataset(*id));
    if let Some(trace) = trace {
        trace.push(CheckOutcome::new(
            format!(
                "dataset change: {}",
                match mapped {
                    Some(dataset) =>
                        format!("dataset {} is mapped to `{}`", dataset.id, dataset.table),
                    None => "no dataset it names is mapped".to_string(),
                }
            ),
            true,
        ));
    }
    let Some(dataset) = mapped else {
        return Ok(ChartDataOutcome::default());
    };
    let check = crate::chart_data::DatasetEdit {
        rls: &snapshot.rls,
        dataset,
        principal: permit.principal(),
        limits,
        default_schema: snapshot
            .rls
            .dialect(&dataset.datasource)
            .and_then(crate::rls::Dialect::default_schema),
    };
    // Only an edit (`PUT`, the legacy form's `POST`) of one dataset can be checked;
    // deletes, and anything else a route lets through, are refused.
    if !matches!(method, "PUT" | "POST") {
        return Err(check.delete_refused().into());
    }
    if ids.iter().any(|id| *id != dataset.id) {
        return Err(check
            .refused("the request names other datasets too, so the edit's target is unclear")
            .into());
    }
    let Some(edit) = edit.as_mut() else {
        return Err(ChartDataError::BadQueryContext("a dataset edit has a body".into()).into());
    };
    check.check(edit)?;
    Ok(ChartDataOutcome {
        body: Some(reencoded(edit, form_span, request)?),
        rewrite: None,
    })
}

impl From<ChartDataError> for Refusal {
    fn from(error: ChartDataError) -> Refusal {
        Refusal::ChartData(error)
    }
}
