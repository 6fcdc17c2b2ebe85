//! OpenTelemetry traces, end to end: a real `datagate` process exports OTLP/HTTP protobuf
//! to a receiver in this test, which decodes every request with the OTLP protobuf types;
//! the demo upstream (a real HTTP server) records the `traceparent` it received. Checked:
//! one server span per request with the decision's stages and the upstream call as its
//! children; an incoming valid `traceparent` continued (its span the root's parent, its
//! `tracestate` kept), a malformed or repeated one replaced by a new trace and never
//! forwarded; the upstream always gets exactly one well-formed `traceparent` naming the
//! upstream span; attributes carry no SQL, no token and no user name; audit lines carry
//! the trace id; an unsampled incoming trace is propagated but not exported; spans queued
//! at SIGTERM or SIGINT are flushed before the process ends; `datagate_trace_spans_total`
//! counts spans ended, exported and failed (against a collector that is not there).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use support::gateway::{Gateway, GatewayOptions, repository_root};
use support::{RecordedRequest, call, clear_recorded, recorded_requests, spawn_upstream};

const ROUTES: &str = r#"
unmatched: deny
table:
  - name: chart-read
    methods: [GET]
    path: /api/v1/chart/{pk}
    permissions:
      any_of: ["can_read on Chart"]
  - name: chart-delete
    methods: [DELETE]
    path: /api/v1/chart/{pk}
    permissions:
      any_of: ["can_write on Chart"]
  - name: results-misbound
    methods: [GET]
    path: /echoed
    results:
      bind_response: [/ok/resultsKey]
  - name: results-claim
    methods: [POST]
    path: /api/run
    authenticated: true
    results:
      bind: [{json_pointer: /client_id}]
  - name: sql-run
    methods: [POST]
    path: /api/sql
    permissions:
      any_of: ["can_read on Chart"]
    sql:
      locations:
        - json_pointer: /sql
          datasource: {fixed: demo}
"#;

const GRANTS: &str = "p, role:Public, Chart, can_read\np, role:Gamma, Chart, can_read\n\
     p, role:Gamma, datasources:uid:demo, Query\n";

/// One exported span, as the receiver decoded it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: i32,
    attributes: Vec<(String, String)>,
}

impl ReceivedSpan {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }
}

/// An OTLP/HTTP traces receiver: decodes each `POST /v1/traces` body as an
/// `ExportTraceServiceRequest` and answers 200 with an empty (valid) response.
struct Receiver {
    address: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let collected = spans.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let collected = collected.clone();
                std::thread::spawn(move || serve_otlp(stream, &collected));
            }
        });
        Receiver { address, spans }
    }

    fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|span| span.trace_id == trace_id)
            .collect()
    }

    /// The spans of `trace_id` once its root span (the last to end) has arrived.
    fn wait_for_trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        assert!(
            Gateway::eventually(Duration::from_secs(30), || self
                .trace(trace_id)
                .iter()
                .any(|span| span.kind == SpanKind::Server as i32)),
            "no server span of trace {trace_id} arrived; received {:#?}",
            self.spans()
        );
        self.trace(trace_id)
    }
}

fn serve_otlp(stream: TcpStream, collected: &Mutex<Vec<ReceivedSpan>>) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut content_length = 0;
        let mut content_type = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => content_length = value.trim().parse().unwrap(),
                "content-type" => content_type = value.trim().to_string(),
                _ => {}
            }
        }
        let mut body = vec![0; content_length];
        reader.read_exact(&mut body).unwrap();
        assert!(
            request_line.starts_with("POST /v1/traces "),
            "{request_line}"
        );
        assert_eq!(content_type, "application/x-protobuf");
        let export = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        let mut decoded = Vec::new();
        for resource_spans in export.resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|resource| resource.attributes.iter())
                .find(|attribute| attribute.key == "service.name")
                .map(|attribute| text(attribute.value.as_ref()))
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    decoded.push(ReceivedSpan {
                        service: service.clone(),
                        trace_id: hex::encode(&span.trace_id),
                        span_id: hex::encode(&span.span_id),
                        parent_span_id: hex::encode(&span.parent_span_id),
                        name: span.name,
                        kind: span.kind,
                        attributes: span
                            .attributes
                            .iter()
                            .map(|attribute| {
                                (attribute.key.clone(), text(attribute.value.as_ref()))
                            })
                            .collect(),
                    });
                }
            }
        }
        collected.lock().unwrap().extend(decoded);
        writer
            .write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
            )
            .unwrap();
    }
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::IntValue(number)) => number.to_string(),
        Some(Value::BoolValue(flag)) => flag.to_string(),
        Some(Value::DoubleValue(number)) => number.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn start(upstream: SocketAddr, receiver: Option<&Receiver>) -> Gateway {
    start_with_delay(upstream, receiver, "100")
}

fn start_with_delay(
    upstream: SocketAddr,
    receiver: Option<&Receiver>,
    batch_delay_ms: &str,
) -> Gateway {
    start_exporting_to(
        upstream,
        receiver.map(|receiver| receiver.address),
        batch_delay_ms,
    )
}

fn start_exporting_to(
    upstream: SocketAddr,
    collector: Option<SocketAddr>,
    batch_delay_ms: &str,
) -> Gateway {
    Gateway::start(options_exporting_to(upstream, collector, batch_delay_ms))
}

fn options_exporting_to(
    upstream: SocketAddr,
    collector: Option<SocketAddr>,
    batch_delay_ms: &str,
) -> GatewayOptions {
    let mut options = GatewayOptions::new(upstream);
    options.routes_yaml = Some(ROUTES.to_string());
    options.log_allowed = true;
    let builtin =
        std::fs::read_to_string(repository_root().join("policies/00-builtin-hierarchy.csv"))
            .unwrap();
    let filters =
        std::fs::read_to_string(repository_root().join("policies/50-demo.rls.yaml")).unwrap();
    options.policy_files = Some(vec![
        ("00-builtin-hierarchy.csv".to_string(), builtin),
        ("10-grants.csv".to_string(), GRANTS.to_string()),
        ("50-demo.rls.yaml".to_string(), filters),
    ]);
    if let Some(collector) = collector {
        options.extra_yaml = Some(format!(
            "telemetry:\n  otlp:\n    endpoint: http://{collector}/v1/traces\n    service_name: datagate-under-test\n"
        ));
        // The SDK's batch delay (5 s by default), so the test does not wait on it.
        options.env = vec![(
            "OTEL_BSP_SCHEDULE_DELAY".to_string(),
            batch_delay_ms.to_string(),
        )];
    }
    options
}

/// A request written by hand, so it can repeat a header; the status of the answer.
fn raw_request(gateway: &Gateway, head: &str) -> u16 {
    let mut stream = TcpStream::connect(gateway.proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or(0)
}

/// The one `traceparent` the upstream received, split: (trace id, parent span id, flags).
fn forwarded_traceparent(request: &RecordedRequest) -> (String, String, String) {
    let values = request.header_values("traceparent");
    assert_eq!(values.len(), 1, "exactly one traceparent: {values:?}");
    let parts: Vec<&str> = values[0].split('-').collect();
    assert_eq!(parts.len(), 4, "{}", values[0]);
    assert_eq!(parts[0], "00");
    let lower_hex = |part: &str, length: usize| {
        part.len() == length
            && part
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
            && part.chars().any(|c| c != '0')
    };
    assert!(lower_hex(parts[1], 32), "trace id: {}", values[0]);
    assert!(lower_hex(parts[2], 16), "span id: {}", values[0]);
    assert!(parts[3] == "00" || parts[3] == "01", "flags: {}", values[0]);
    (
        parts[1].to_string(),
        parts[2].to_string(),
        parts[3].to_string(),
    )
}

fn only_request(upstream: SocketAddr) -> RecordedRequest {
    let recorded = recorded_requests(upstream);
    assert_eq!(recorded.len(), 1, "{recorded:#?}");
    clear_recorded(upstream);
    recorded.into_iter().next().unwrap()
}

const INCOMING_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const INCOMING_SPAN: &str = "00f067aa0ba902b7";
const UNSAMPLED_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

#[test]
fn requests_are_traced_and_the_upstream_continues_the_trace() {
    let receiver = Receiver::start();
    let (_upstream_process, upstream) = spawn_upstream(&[]);
    let gateway = start(upstream, Some(&receiver));

    // An unsampled incoming trace: propagated as such, never exported.
    let response = ureq::get(&gateway.url("/api/v1/chart/2"))
        .set(
            "traceparent",
            &format!("00-{UNSAMPLED_TRACE}-b7ad6b7169203331-00"),
        )
        .call()
        .unwrap();
    assert_eq!(response.status(), 200);
    let (trace_id, _, flags) = forwarded_traceparent(&only_request(upstream));
    assert_eq!((trace_id.as_str(), flags.as_str()), (UNSAMPLED_TRACE, "00"));

    // A valid incoming traceparent is continued.
    let response = ureq::get(&gateway.url("/api/v1/chart/1"))
        .set(
            "traceparent",
            &format!("00-{INCOMING_TRACE}-{INCOMING_SPAN}-01"),
        )
        .set("tracestate", "vendor=abc,other=1")
        .call()
        .unwrap();
    assert_eq!(response.status(), 200);
    let forwarded = only_request(upstream);
    let (trace_id, upstream_parent, flags) = forwarded_traceparent(&forwarded);
    assert_eq!(trace_id, INCOMING_TRACE);
    assert_eq!(flags, "01");
    assert_ne!(
        upstream_parent, INCOMING_SPAN,
        "the upstream's parent is datagate's span"
    );
    assert_eq!(
        forwarded.header_values("tracestate"),
        vec!["vendor=abc,other=1"]
    );

    let spans = receiver.wait_for_trace(INCOMING_TRACE);
    let root = spans
        .iter()
        .find(|span| span.kind == SpanKind::Server as i32)
        .unwrap();
    assert_eq!(root.parent_span_id, INCOMING_SPAN);
    assert_eq!(root.service, "datagate-under-test");
    assert_eq!(root.name, "GET chart-read");
    assert_eq!(root.attribute("http.request.method"), Some("GET"));
    assert_eq!(root.attribute("url.path"), Some("/api/v1/chart/1"));
    assert_eq!(root.attribute("datagate.route"), Some("chart-read"));
    assert_eq!(root.attribute("datagate.decision"), Some("allow"));
    assert_eq!(root.attribute("datagate.principal.kind"), Some("anonymous"));
    assert_eq!(root.attribute("http.response.status_code"), Some("200"));
    let mut children: Vec<&str> = spans
        .iter()
        .filter(|span| span.parent_span_id == root.span_id)
        .map(|span| span.name.as_str())
        .collect();
    children.sort_unstable();
    assert_eq!(
        children,
        vec!["authenticate", "authorize", "route", "upstream"]
    );
    assert_eq!(spans.len(), 5, "{spans:#?}");
    let upstream_span = spans.iter().find(|span| span.name == "upstream").unwrap();
    assert_eq!(upstream_span.kind, SpanKind::Client as i32);
    assert_eq!(
        upstream_span.span_id, upstream_parent,
        "the upstream's traceparent names the upstream span"
    );
    assert_eq!(
        upstream_span.attribute("http.response.status_code"),
        Some("200")
    );

    // A malformed traceparent starts a new trace and is not forwarded; its tracestate
    // goes with it.
    let response = ureq::get(&gateway.url("/api/v1/chart/3"))
        .set("traceparent", &format!("00-{INCOMING_TRACE}-XYZ-01"))
        .set("tracestate", "vendor=abc")
        .call()
        .unwrap();
    assert_eq!(response.status(), 200);
    let forwarded = only_request(upstream);
    let (new_trace, parent, _) = forwarded_traceparent(&forwarded);
    assert_ne!(new_trace, INCOMING_TRACE);
    assert!(forwarded.header_values("tracestate").is_empty());
    let spans = receiver.wait_for_trace(&new_trace);
    let root = spans
        .iter()
        .find(|span| span.kind == SpanKind::Server as i32)
        .unwrap();
    assert_eq!(root.parent_span_id, "", "a new trace's root has no parent");
    let upstream_span = spans.iter().find(|span| span.name == "upstream").unwrap();
    assert_eq!(upstream_span.span_id, parent);
    assert_eq!(upstream_span.parent_span_id, root.span_id);

    // Two traceparent headers are ambiguous: a new trace, neither forwarded.
    let status = raw_request(
        &gateway,
        &format!(
            "GET /api/v1/chart/4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             traceparent: 00-{INCOMING_TRACE}-{INCOMING_SPAN}-01\r\n\
             traceparent: 00-{UNSAMPLED_TRACE}-{INCOMING_SPAN}-01\r\n\r\n"
        ),
    );
    assert_eq!(status, 200);
    let (repeated_trace, _, _) = forwarded_traceparent(&only_request(upstream));
    assert_ne!(repeated_trace, INCOMING_TRACE);
    assert_ne!(repeated_trace, UNSAMPLED_TRACE);
    receiver.wait_for_trace(&repeated_trace);

    // No traceparent: a new trace, and the upstream still gets exactly one.
    let (status, _) = call("GET", &gateway.url("/api/v1/chart/5"), None, None);
    assert_eq!(status, 200);
    let (fresh_trace, _, flags) = forwarded_traceparent(&only_request(upstream));
    assert_eq!(flags, "01", "sample_ratio 1 records every new trace");
    receiver.wait_for_trace(&fresh_trace);

    // A refusal: the stage that refused is marked, nothing went upstream.
    let nobody = gateway.token("nobody", &["Nobody"], &[], None);
    let (status, _) = call(
        "DELETE",
        &gateway.url("/api/v1/chart/1"),
        Some(&nobody),
        None,
    );
    assert_eq!(status, 403);
    assert!(recorded_requests(upstream).is_empty());
    // The audit writer is a thread of its own.
    assert!(Gateway::eventually(Duration::from_secs(10), || gateway
        .audit_lines()
        .iter()
        .any(|line| line["decision"] == "deny")));
    let refusal = gateway
        .audit_lines()
        .into_iter()
        .find(|line| line["decision"] == "deny")
        .unwrap();
    let refused_trace = refusal["trace_id"].as_str().unwrap().to_string();
    let spans = receiver.wait_for_trace(&refused_trace);
    let root = spans
        .iter()
        .find(|span| span.kind == SpanKind::Server as i32)
        .unwrap();
    assert_eq!(root.attribute("datagate.decision"), Some("deny"));
    assert_eq!(root.attribute("http.response.status_code"), Some("403"));
    assert_eq!(root.attribute("datagate.principal.kind"), Some("user"));
    let authorize = spans.iter().find(|span| span.name == "authorize").unwrap();
    assert_eq!(authorize.attribute("datagate.outcome"), Some("refused"));
    assert!(spans.iter().all(|span| span.name != "upstream"));

    // SQL: read, rewritten, forwarded; the spans say how much, never what.
    let carol = gateway.token("carol-the-analyst", &["Gamma"], &[], None);
    let (status, _) = call(
        "POST",
        &gateway.url("/api/sql"),
        Some(&carol),
        Some(r#"{"sql": "SELECT id FROM orders WHERE note = 'hush-hush'"}"#),
    );
    assert_eq!(status, 200);
    let (sql_trace, _, _) = forwarded_traceparent(&only_request(upstream));
    let spans = receiver.wait_for_trace(&sql_trace);
    let mut names: Vec<&str> = spans.iter().map(|span| span.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        vec![
            "POST sql-run",
            "authenticate",
            "authorize",
            "read_body",
            "rewrite",
            "route",
            "upstream"
        ]
    );
    let root = spans
        .iter()
        .find(|span| span.kind == SpanKind::Server as i32)
        .unwrap();
    assert_eq!(root.attribute("datagate.sql.statements"), Some("1"));
    assert_eq!(root.attribute("datagate.sql.rewritten"), Some("1"));

    // Audit lines carry the trace ids.
    let audited_ids = || -> Vec<String> {
        gateway
            .audit_lines()
            .iter()
            .filter_map(|line| line["trace_id"].as_str().map(str::to_owned))
            .collect()
    };
    assert!(Gateway::eventually(Duration::from_secs(10), || {
        audited_ids().contains(&sql_trace)
    }));
    let audited = audited_ids();
    for trace in [INCOMING_TRACE, &new_trace, &fresh_trace, &sql_trace] {
        assert!(audited.iter().any(|id| id == trace), "{trace} not audited");
    }

    // No attribute anywhere holds SQL, a token or a user name.
    let everything = receiver.spans();
    for span in &everything {
        for (key, value) in &span.attributes {
            for secret in [
                "SELECT",
                "hush-hush",
                "orders",
                "carol",
                "nobody",
                &carol,
                &nobody,
            ] {
                assert!(
                    !value.contains(secret),
                    "span `{}` attribute `{key}` = `{value}` holds `{secret}`",
                    span.name
                );
            }
        }
    }
    // The unsampled trace was never exported (its request came first, so its spans
    // would have been in an earlier or the same batch as everything above).
    assert!(receiver.trace(UNSAMPLED_TRACE).is_empty());
}

#[test]
fn without_telemetry_the_clients_trace_headers_pass_through_untouched() {
    let (_upstream_process, upstream) = spawn_upstream(&[]);
    let gateway = start(upstream, None);
    let traceparent = format!("00-{INCOMING_TRACE}-{INCOMING_SPAN}-01");
    let response = ureq::get(&gateway.url("/api/v1/chart/1"))
        .set("traceparent", &traceparent)
        .call()
        .unwrap();
    assert_eq!(response.status(), 200);
    let forwarded = only_request(upstream);
    assert_eq!(forwarded.header_values("traceparent"), vec![traceparent]);
    assert!(
        gateway
            .audit_lines()
            .iter()
            .all(|line| line.get("trace_id").is_none())
    );
}

/// Spans queued when the process is told to stop reach the collector before it exits.
fn queued_spans_are_flushed_on(signal: i32) {
    let receiver = Receiver::start();
    let (_upstream_process, upstream) = spawn_upstream(&[]);
    // A batch delay far beyond the test: only the exit's flush can send these spans.
    let mut gateway = start_with_delay(upstream, Some(&receiver), "600000");
    let (status, _) = call("GET", &gateway.url("/api/v1/chart/1"), None, None);
    assert_eq!(status, 200);
    let (trace_id, _, _) = forwarded_traceparent(&only_request(upstream));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        receiver.trace(&trace_id).is_empty(),
        "exported before the exit"
    );
    // SAFETY: signalling a child process this test started.
    let signalled = unsafe { libc::kill(gateway.pid() as i32, signal) };
    assert_eq!(signalled, 0);
    let exit = gateway.process.wait_for_exit(Duration::from_secs(30));
    assert!(exit.is_some(), "still running after signal {signal}");
    if signal == libc::SIGTERM {
        assert!(exit.is_some_and(|status| status.success()), "{exit:?}");
    }
    assert!(
        receiver
            .trace(&trace_id)
            .iter()
            .any(|span| span.kind == SpanKind::Server as i32),
        "the queued spans were not flushed at exit (signal {signal})"
    );
}

#[test]
fn spans_still_queued_at_sigterm_are_exported_before_the_process_exits() {
    queued_spans_are_flushed_on(libc::SIGTERM);
}

#[test]
fn spans_still_queued_at_sigint_are_exported_before_the_process_stops() {
    queued_spans_are_flushed_on(libc::SIGINT);
}

/// `datagate_trace_spans_total{outcome}` from the gateway's metrics.
fn span_count(gateway: &Gateway, outcome: &str) -> u64 {
    let text = ureq::get(&gateway.admin_url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let prefix = format!("datagate_trace_spans_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |value| value.trim().parse().unwrap())
}

#[test]
fn span_counts_show_what_reached_the_collector_and_what_did_not() {
    let receiver = Receiver::start();
    let (_upstream_process, upstream) = spawn_upstream(&[]);
    let gateway = start(upstream, Some(&receiver));
    for _ in 0..3 {
        let (status, _) = call("GET", &gateway.url("/api/v1/chart/1"), None, None);
        assert_eq!(status, 200);
    }
    assert!(
        Gateway::eventually(Duration::from_secs(30), || span_count(&gateway, "exported")
            == receiver.spans().len() as u64
            && receiver
                .spans()
                .iter()
                .filter(|span| span.kind == SpanKind::Server as i32)
                .count()
                == 3),
        "exported {} spans by the count, the collector received {}",
        span_count(&gateway, "exported"),
        receiver.spans().len()
    );
    assert_eq!(span_count(&gateway, "ended"), receiver.spans().len() as u64);
    assert_eq!(span_count(&gateway, "failed"), 0);

    // A collector that is not there: the spans end, and their batches fail.
    let unused = TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = unused.local_addr().unwrap();
    drop(unused);
    let (_upstream_process, upstream) = spawn_upstream(&[]);
    let gateway = start_exporting_to(upstream, Some(nowhere), "100");
    let (status, _) = call("GET", &gateway.url("/api/v1/chart/1"), None, None);
    assert_eq!(status, 200);
    assert!(
        Gateway::eventually(Duration::from_secs(30), || {
            let ended = span_count(&gateway, "ended");
            ended > 0 && span_count(&gateway, "failed") == ended
        }),
        "ended {}, failed {}, exported {}",
        span_count(&gateway, "ended"),
        span_count(&gateway, "failed"),
        span_count(&gateway, "exported")
    );
    assert_eq!(span_count(&gateway, "exported"), 0);
}

#[test]
fn log_lines_about_a_request_carry_its_trace_id() {
    let receiver = Receiver::start();
    let (_upstream_process, upstream) = spawn_upstream(&[]);
    let mut options = options_exporting_to(upstream, Some(receiver.address), "100");
    options.capture_log = true;
    options
        .env
        .push(("DATAGATE_LOG".to_string(), "warn".to_string()));
    options
        .extra_yaml
        .as_mut()
        .unwrap()
        .push_str("logging:\n  format: json\n");
    let gateway = Gateway::start(options);
    // The route binds results ids at `/ok/resultsKey`; the upstream's echo has a boolean
    // at `/ok`, and datagate logs that it bound nothing.
    let (status, answer) = call("GET", &gateway.url("/echoed"), None, None);
    assert_eq!(status, 200, "{answer}");
    let (trace_id, _, _) = forwarded_traceparent(&only_request(upstream));
    let mut warning = None;
    assert!(
        Gateway::eventually(Duration::from_secs(10), || {
            warning = gateway.log_text().lines().find_map(|line| {
                let line: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|error| panic!("not a JSON log line ({error}): {line}"));
                (line["message"] == "results ids in a response were not bound").then_some(line)
            });
            warning.is_some()
        }),
        "no warning logged:\n{}",
        gateway.log_text()
    );
    let warning = warning.unwrap();
    assert_eq!(warning["span"]["trace_id"], trace_id.as_str(), "{warning}");
    assert_eq!(warning["span"]["name"], "request", "{warning}");
    assert!(
        !gateway.log_text().contains('\u{1b}'),
        "ANSI escape codes in a JSON log"
    );
}

/// Claiming a results id is a stage of its own in the trace: the owner's claim is a
/// `results` child span beside the upstream call; another caller's claim of the same id
/// is refused there (`result_owner`), and that trace has no upstream span.
#[test]
fn results_claims_are_a_traced_stage() {
    let receiver = Receiver::start();
    let (_upstream_process, upstream) = spawn_upstream(&[]);
    let gateway = start(upstream, Some(&receiver));
    let body = r#"{"client_id": "claimed-in-a-trace"}"#;
    for (who, expected) in [("alice", 200), ("bob", 403)] {
        let token = gateway.token(who, &["Gamma"], &[], None);
        let (status, answer) = call("POST", &gateway.url("/api/run"), Some(&token), Some(body));
        assert_eq!(status, expected, "{who}: {answer}");
    }
    assert_eq!(
        recorded_requests(upstream).len(),
        1,
        "only alice's claim went upstream"
    );
    let claims = || {
        gateway
            .audit_lines()
            .into_iter()
            .filter(|line| line["route"] == "results-claim")
            .collect::<Vec<_>>()
    };
    assert!(Gateway::eventually(Duration::from_secs(10), || claims()
        .len()
        == 2));
    for line in claims() {
        let trace_id = line["trace_id"].as_str().unwrap().to_string();
        let spans = receiver.wait_for_trace(&trace_id);
        let root = spans
            .iter()
            .find(|span| span.kind == SpanKind::Server as i32)
            .unwrap();
        let results = spans
            .iter()
            .find(|span| span.name == "results")
            .unwrap_or_else(|| panic!("no results span: {spans:#?}"));
        assert_eq!(results.parent_span_id, root.span_id);
        let upstream_span = spans.iter().find(|span| span.name == "upstream");
        if line["decision"] == "allow" {
            assert_eq!(results.attribute("datagate.outcome"), None, "{line}");
            assert!(upstream_span.is_some(), "{spans:#?}");
        } else {
            assert_eq!(
                results.attribute("datagate.outcome"),
                Some("refused"),
                "{line}"
            );
            assert_eq!(
                results.attribute("datagate.refusal.kind"),
                Some("result_owner"),
                "{line}"
            );
            assert!(upstream_span.is_none(), "{spans:#?}");
        }
    }
}
