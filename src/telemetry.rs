//! OpenTelemetry traces of the request path, exported over OTLP/HTTP (protobuf); off
//! unless `telemetry.otlp` is configured.
//!
//! Sits beside the request path, not in it: the proxy starts a [`RequestTrace`] in
//! `request_filter` (continuing a valid incoming W3C `traceparent`, else a new trace),
//! turns the decision's stage timings ([`crate::decision::StageTiming`]) into child spans
//! once `admit` returns, opens the `upstream` span in `upstream_request_filter` — its
//! context is the one `traceparent` the upstream receives, every client copy removed — and
//! ends the spans in `response_filter` and `logging`. Ended spans go to the SDK's batch
//! processor (a bounded queue drained by its own thread, dropping when full), which
//! exports through a hyper client on a small runtime of its own, so a slow or absent
//! collector never holds up a request. `datagate_trace_spans_total` counts spans ended,
//! exported and failed, so a collector that is down, or a queue that overflows, shows.
//!
//! Attributes never carry secrets, identities or SQL: method, canonical path (never the
//! query string, which can hold SQL), route name, decision, refusal kind (never the
//! message, which can quote the request), status, policy revision, the caller's kind,
//! statement counts. The audit line carries the trace id, so a trace leads to who called;
//! datagate's own log lines about a request are written in a `request` span naming it.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use serde::Deserialize;

use crate::decision::{Stage, StageTiming};

/// `telemetry` in the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP trace export; none when absent.
    #[serde(default)]
    pub otlp: Option<OtlpConfig>,
}

/// `telemetry.otlp`: where and how traces are exported.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's traces URL, used as given (e.g. `http://127.0.0.1:4318/v1/traces`).
    pub endpoint: String,
    /// Only `http/protobuf` is built.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The share of new traces recorded (0 to 1); an incoming `traceparent`'s sampled
    /// flag is followed.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// How long one export may take.
    #[serde(default = "default_timeout", with = "crate::config::duration_text")]
    pub timeout: Duration,
    /// PEM certificates trusted for an `https` endpoint (default: the system's roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

pub const PROTOCOL_HTTP_PROTOBUF: &str = "http/protobuf";

fn default_protocol() -> String {
    PROTOCOL_HTTP_PROTOBUF.to_string()
}

fn default_service_name() -> String {
    "datagate".to_string()
}

fn default_sample_ratio() -> f64 {
    1.0
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl OtlpConfig {
    /// Semantic checks; the error names the key under `telemetry.otlp`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let endpoint = url::Url::parse(&self.endpoint).map_err(|error| {
            (
                "telemetry.otlp.endpoint",
                format!("`{}` is not a URL: {error}", self.endpoint),
            )
        })?;
        if !matches!(endpoint.scheme(), "http" | "https") || endpoint.host_str().is_none() {
            return Err((
                "telemetry.otlp.endpoint",
                format!("`{}` must be an http:// or https:// URL", self.endpoint),
            ));
        }
        if self.protocol != PROTOCOL_HTTP_PROTOBUF {
            return Err((
                "telemetry.otlp.protocol",
                format!(
                    "`{}` is not supported; only `{PROTOCOL_HTTP_PROTOBUF}` is built",
                    self.protocol
                ),
            ));
        }
        if self.service_name.trim().is_empty() {
            return Err(("telemetry.otlp.service_name", "must not be empty".into()));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err((
                "telemetry.otlp.sample_ratio",
                format!("{} is not between 0 and 1", self.sample_ratio),
            ));
        }
        if self.timeout.is_zero() {
            return Err(("telemetry.otlp.timeout", "must be greater than zero".into()));
        }
        Ok(())
    }
}

/// Why trace export could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("the OTLP exporter's runtime could not start: {0}")]
    Runtime(std::io::Error),
    #[error("the OTLP endpoint's TLS settings: {0}")]
    Tls(String),
    #[error("the OTLP exporter could not be built: {0}")]
    Exporter(String),
}

/// The tracer and its exporter, for the life of the process.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    /// Drives the exporter's HTTP client; shut down without waiting when dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Telemetry {
    /// Starts the exporter; spans are batched and sent from then on.
    pub fn start(
        config: &OtlpConfig,
        base_dir: &std::path::Path,
        spans: prometheus::IntCounterVec,
    ) -> Result<Telemetry, TelemetryError> {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("datagate-otlp")
            .enable_all()
            .build()
            .map_err(TelemetryError::Runtime)?;
        let ca_file = config.ca_file.as_ref().map(|path| {
            if path.is_absolute() {
                path.clone()
            } else {
                base_dir.join(path)
            }
        });
        let connector =
            crate::authn::https_connector(ca_file.as_deref()).map_err(TelemetryError::Tls)?;
        let client = OnRuntime {
            client: opentelemetry_http::hyper::HyperClient::new(connector, config.timeout, None),
            runtime: runtime.handle().clone(),
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(config.endpoint.clone())
            .with_timeout(config.timeout)
            .with_http_client(client)
            .build()
            .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
        let exporter = CountingExporter {
            inner: exporter,
            spans: spans.clone(),
        };
        let provider = SdkTracerProvider::builder()
            .with_span_processor(CountingProcessor {
                inner: BatchSpanProcessor::builder(exporter).build(),
                spans,
            })
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(config.service_name.clone())
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        let tracer = provider.tracer("datagate");
        Ok(Telemetry {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
            runtime: Some(runtime),
        })
    }

    /// The trace of one request: a server span continuing the request's `traceparent`
    /// when it is one valid header, else the root of a new trace.
    pub fn start_request(&self, method: &str, headers: &http::HeaderMap) -> RequestTrace {
        let parent = self.propagator.extract(&ClientTraceHeaders::read(headers));
        let root = self.tracer.build_with_context(
            SpanBuilder::from_name(format!("{method} datagate"))
                .with_kind(SpanKind::Server)
                .with_attributes([KeyValue::new("http.request.method", method.to_string())]),
            &parent,
        );
        let context = parent.with_span(root);
        // At the highest level, so that whatever `DATAGATE_LOG` lets through is inside it.
        let log_span = tracing::error_span!(
            "request",
            trace_id = %context.span().span_context().trace_id()
        );
        RequestTrace {
            context,
            log_span,
            anchor: (Instant::now(), SystemTime::now()),
            upstream: None,
            method: method.to_string(),
            tracer: self.tracer.clone(),
            propagator: self.propagator.clone(),
        }
    }

    /// Sends what is still queued (at most `timeout`); called once, when the process ends.
    pub fn shutdown(&self, timeout: Duration) {
        if let Err(error) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!(%error, "traces still queued at exit were not all exported");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The batch processor, counting the spans handed to it.
#[derive(Debug)]
struct CountingProcessor<P> {
    inner: P,
    spans: prometheus::IntCounterVec,
}

impl<P: SpanProcessor> SpanProcessor for CountingProcessor<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, context: &Context) {
        self.inner.on_start(span, context);
    }
    fn on_end(&self, span: SpanData) {
        self.spans.with_label_values(&["ended"]).inc();
        self.inner.on_end(span);
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting the spans of each batch by how its export ended.
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    spans: prometheus::IntCounterVec,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let count = batch.len() as u64;
        let result = self.inner.export(batch).await;
        let outcome = if result.is_ok() { "exported" } else { "failed" };
        self.spans.with_label_values(&[outcome]).inc_by(count);
        result
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A client that runs another on the exporter's runtime: the SDK's batch thread awaits
/// exports with a plain executor, and hyper's connections need a Tokio reactor.
#[derive(Debug)]
struct OnRuntime<C> {
    client: C,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl<C> opentelemetry_http::HttpClient for OnRuntime<C>
where
    C: opentelemetry_http::HttpClient + Clone + 'static,
{
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move { client.send_bytes(request).await })
            .await
            .map_err(|error| Box::new(error) as opentelemetry_http::HttpError)?
    }
}

/// The client's trace headers as W3C Trace Context reads them: a `traceparent` only when
/// there is exactly one (two are ambiguous, and the trace restarts), every `tracestate`
/// joined into one list.
struct ClientTraceHeaders {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl ClientTraceHeaders {
    fn read(headers: &http::HeaderMap) -> ClientTraceHeaders {
        let texts = |name: &str| -> Vec<&str> {
            headers
                .get_all(name)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .collect()
        };
        let parents = texts(TRACEPARENT);
        let states = texts(TRACESTATE);
        ClientTraceHeaders {
            traceparent: match (
                parents.as_slice(),
                headers.get_all(TRACEPARENT).iter().count(),
            ) {
                ([one], 1) => Some((*one).to_string()),
                _ => None,
            },
            tracestate: (!states.is_empty()).then(|| states.join(",")),
        }
    }
}

impl Extractor for ClientTraceHeaders {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent.as_deref(),
            TRACESTATE => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The trace headers for the upstream, as (name, value); an empty `tracestate` is not sent.
#[derive(Default)]
struct UpstreamTraceHeaders(Vec<(&'static str, String)>);

impl Injector for UpstreamTraceHeaders {
    fn set(&mut self, key: &str, value: String) {
        let name = match key {
            TRACEPARENT => TRACEPARENT,
            TRACESTATE if !value.is_empty() => TRACESTATE,
            _ => return,
        };
        self.0.push((name, value));
    }
}

/// What the root span says about the decided request.
pub struct DecisionSummary<'a> {
    pub route: &'a str,
    pub canonical_path: Option<&'a str>,
    pub allowed: bool,
    /// The refusal's stable kind, or `none`.
    pub refusal_kind: Option<&'a str>,
    /// `user`, `service_account` or `anonymous`.
    pub principal_kind: Option<&'static str>,
    pub policy_revision: u64,
    pub statements: usize,
    pub statements_rewritten: usize,
}

/// One request's spans, carried between pingora's phases.
pub struct RequestTrace {
    /// The root span, as a context its children are built in.
    context: Context,
    /// The root's start, on both clocks: stage timings are `Instant`s, spans want
    /// wall-clock times.
    anchor: (Instant, SystemTime),
    /// The upstream call in progress, as a context holding its span.
    upstream: Option<Context>,
    /// datagate's own log lines about this request are written inside this span, so
    /// they carry its `trace_id`.
    log_span: tracing::Span,
    method: String,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl RequestTrace {
    /// The span the request's log lines are written in (it names the trace id).
    pub fn log_span(&self) -> &tracing::Span {
        &self.log_span
    }

    /// The trace id, as the audit line carries it (32 hex digits).
    pub fn trace_id(&self) -> String {
        self.context.span().span_context().trace_id().to_string()
    }

    fn wall_time(&self, at: Instant) -> SystemTime {
        let (instant, system) = self.anchor;
        match at.checked_duration_since(instant) {
            Some(after) => system + after,
            None => system - instant.duration_since(at),
        }
    }

    /// The decision's stages as child spans of the root, with their own start and end.
    pub fn record_stages(&self, stages: &[StageTiming], refusal_kind: Option<&str>) {
        for timing in stages {
            let mut attributes = Vec::new();
            if timing.refused {
                attributes.push(KeyValue::new("datagate.outcome", "refused"));
                if let Some(kind) = refusal_kind {
                    attributes.push(KeyValue::new("datagate.refusal.kind", kind.to_string()));
                }
            }
            let mut span = self.tracer.build_with_context(
                SpanBuilder::from_name(timing.stage.name())
                    .with_kind(SpanKind::Internal)
                    .with_start_time(self.wall_time(timing.started))
                    .with_attributes(attributes),
                &self.context,
            );
            span.end_with_timestamp(self.wall_time(timing.ended));
        }
    }

    /// The decision's outcome on the root span.
    pub fn record_decision(&self, summary: &DecisionSummary<'_>) {
        let span = self.context.span();
        // `{method} {route}`: low-cardinality, as HTTP server spans are named.
        span.update_name(format!("{} {}", self.method, summary.route));
        let mut attributes = vec![
            KeyValue::new("datagate.route", summary.route.to_string()),
            KeyValue::new(
                "datagate.decision",
                if summary.allowed { "allow" } else { "deny" },
            ),
            KeyValue::new(
                "datagate.policy_revision",
                i64::try_from(summary.policy_revision).unwrap_or(i64::MAX),
            ),
        ];
        if let Some(path) = summary.canonical_path {
            attributes.push(KeyValue::new("url.path", path.to_string()));
        }
        if let Some(kind) = summary.refusal_kind {
            attributes.push(KeyValue::new("datagate.refusal.kind", kind.to_string()));
        }
        if let Some(kind) = summary.principal_kind {
            attributes.push(KeyValue::new("datagate.principal.kind", kind));
        }
        if summary.statements > 0 {
            attributes.push(KeyValue::new(
                "datagate.sql.statements",
                summary.statements as i64,
            ));
            attributes.push(KeyValue::new(
                "datagate.sql.rewritten",
                summary.statements_rewritten as i64,
            ));
        }
        span.set_attributes(attributes);
    }

    /// Opens the `upstream` span (a retry ends the previous one) and returns the trace
    /// headers the upstream gets: exactly one `traceparent`, naming this span.
    pub fn start_upstream(&mut self) -> Vec<(&'static str, String)> {
        self.end_upstream(None);
        let span = self.tracer.build_with_context(
            SpanBuilder::from_name(Stage::Upstream.name()).with_kind(SpanKind::Client),
            &self.context,
        );
        let context = self.context.with_span(span);
        let mut headers = UpstreamTraceHeaders::default();
        self.propagator.inject_context(&context, &mut headers);
        self.upstream = Some(context);
        headers.0
    }

    /// Ends the `upstream` span with the response's status, or as failed (`None`).
    pub fn end_upstream(&mut self, status: Option<u16>) {
        let Some(context) = self.upstream.take() else {
            return;
        };
        let span = context.span();
        match status {
            Some(status) => {
                span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
                if status >= 500 {
                    span.set_status(Status::error(format!("upstream answered {status}")));
                }
            }
            None => span.set_status(Status::error("no response from the upstream")),
        }
        span.end();
    }

    /// Ends the request: the status the client got (0: none was sent).
    pub fn finish(mut self, status: u16) {
        self.end_upstream(None);
        let span = self.context.span();
        if status > 0 {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        if status >= 500 || status == 0 {
            span.set_status(Status::error(if status == 0 {
                "no response was sent".to_string()
            } else {
                format!("answered {status}")
            }));
        }
        span.end();
    }
}
