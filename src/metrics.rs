//! Prometheus metrics, scraped from `GET /metrics` on the admin listener.
//!
//! The proxy counts every request by route and decision and times the decision (everything
//! from authentication to the permit); reloads count by trigger and result; refusals by
//! status and kind; upstream answers by status with their latency; requests in flight;
//! the SQL work pool's refusals and queue; the build; and (on Linux) the process's CPU,
//! memory and file descriptors. All names are prefixed `datagate_` except the standard
//! `process_*` ones. A private registry keeps tests and embedders independent.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::sql_pool::SqlPoolMetrics;

pub struct Metrics {
    registry: Registry,
    /// `route` is the route name (`unmatched` when none matched), `decision` allow/deny/error.
    pub requests: IntCounterVec,
    pub decision_seconds: HistogramVec,
    pub policy_reloads: IntCounterVec,
    pub policy_revision: IntGauge,
    /// `outcome`: rewritten, unchanged, refused; `kind`: the refusal kind (or `none`).
    pub sql_rewrites: IntCounterVec,
    pub sql_rewrite_seconds: prometheus::Histogram,
    /// `result`: hit or miss.
    pub sql_rewrite_cache: IntCounterVec,
    /// The store revision the serving snapshot was built from.
    pub store_revision: IntGauge,
    /// Admin API writes, by action and result (applied, rejected, failed).
    pub admin_writes: IntCounterVec,
    /// Store change notifications and polls, by source (notify, poll) and result.
    pub store_syncs: IntCounterVec,
    /// Snapshots swapped in after start-up, by how they were built (full, incremental).
    pub snapshot_builds: IntCounterVec,
    /// STS AssumeRole calls, by outcome (success, failure).
    pub sts_calls: IntCounterVec,
    /// STS credential cache lookups, by result (hit, miss).
    pub credential_cache: IntCounterVec,
    /// Background refreshes ahead of expiry, by outcome (refreshed, failed).
    pub credential_refreshes: IntCounterVec,
    /// Age of the STS credential served from the cache.
    pub credential_age_seconds: prometheus::Histogram,
    /// Database token cache lookups, by result (hit, miss).
    pub token_cache: IntCounterVec,
    /// Identity-provider JWKS fetches, by trigger (startup, scheduled, kid_miss) and
    /// result (updated, unchanged, failed).
    pub jwks_fetches: IntCounterVec,
    /// Failed JWKS fetches, by reason (unreachable, status, too_large, invalid, discovery).
    pub jwks_fetch_failures: IntCounterVec,
    /// Tokens naming an unknown kid, by what followed (refetched, waited, rate_limited).
    pub jwks_kid_misses: IntCounterVec,
    /// Seconds since the serving JWKS was last fetched successfully.
    pub jwks_key_set_age_seconds: prometheus::Gauge,
    /// Signing keys in the serving JWKS.
    pub jwks_keys: IntGauge,
    /// Seconds between a write's commit on some replica and this replica serving it
    /// (measured from the audit timestamp; clocks of different hosts must agree).
    pub store_propagation_seconds: prometheus::Histogram,
    /// Requests decided and not yet finished (from the parsed head to the last byte).
    pub in_flight: IntGauge,
    /// Refused requests, by HTTP status and refusal kind.
    pub refusals: IntCounterVec,
    /// Upstream responses, by status; `error` when none came.
    pub upstream_responses: IntCounterVec,
    /// From sending the request upstream to its response head, by status class.
    pub upstream_seconds: HistogramVec,
    /// The SQL work pool's refusals and queue.
    pub sql_pool: SqlPoolMetrics,
    /// Always 1; the labels say which build is running.
    pub build_info: IntGaugeVec,
    /// Client connections closed at accept, by the bound reached (global, per_ip).
    pub connections_refused: IntCounterVec,
    /// Client connections open right now.
    pub connections_open: IntGauge,
    /// OpenTelemetry spans, by outcome: `ended` (handed to the export queue), `exported`,
    /// `failed` (in a batch the collector did not take). `ended − exported − failed` is
    /// what is queued or was dropped on a full queue.
    pub trace_spans: IntCounterVec,
    /// Reads of mapped datasets from the upstream (`charts.verify`), by result: `verified`,
    /// `mismatch` (refused until the next read), `failed` (not read; the request refused).
    pub dataset_verifications: IntCounterVec,
    /// The series every request touches, resolved once ([`HotSeries`]).
    hot: HotSeries,
    /// Tells this registry's series from another's in a [`RouteLabel`] (tests and
    /// embedders build several).
    id: u64,
}

static NEXT_METRICS_ID: AtomicU64 = AtomicU64::new(0);

/// The route name of requests no route matched (or refused before one did).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// A route's name as a metric label, with its `datagate_requests_total{decision="allow"}`
/// series resolved on the route's first allowed request. Compiled with the route and
/// shared by its permits, so counting an allowed request neither copies the name nor
/// looks the series up by its labels.
#[derive(Debug)]
pub struct RouteLabel {
    name: String,
    /// The id of the [`Metrics`] the series belongs to, and the series.
    allowed: OnceLock<(u64, IntCounter)>,
}

impl RouteLabel {
    pub fn new(name: impl Into<String>) -> RouteLabel {
        RouteLabel {
            name: name.into(),
            allowed: OnceLock::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The label of [`UNMATCHED_ROUTE`].
    pub fn unmatched() -> Arc<RouteLabel> {
        static UNMATCHED: LazyLock<Arc<RouteLabel>> =
            LazyLock::new(|| Arc::new(RouteLabel::new(UNMATCHED_ROUTE)));
        UNMATCHED.clone()
    }
}

/// Children of the per-request metric families whose label values are known in
/// advance, resolved on first use: a request then bumps a counter instead of formatting
/// its labels, hashing them and taking the family's lock. Resolved lazily, so the
/// exposition lists exactly the series that were used, as before.
struct HotSeries {
    /// `datagate_upstream_responses_total` by status, 100..=999 at `status − 100`.
    upstream_by_status: Box<[OnceLock<IntCounter>]>,
    upstream_error: OnceLock<IntCounter>,
    /// `datagate_upstream_duration_seconds` by class: `1xx`..`9xx` at 1..=9, `error` at 0.
    upstream_seconds_by_class: [OnceLock<Histogram>; 10],
    decision_allow: OnceLock<Histogram>,
    sql_rewritten: OnceLock<IntCounter>,
    sql_unchanged: OnceLock<IntCounter>,
    sql_cache_hit: OnceLock<IntCounter>,
    sql_cache_miss: OnceLock<IntCounter>,
}

impl HotSeries {
    fn new() -> HotSeries {
        HotSeries {
            upstream_by_status: (100..=999).map(|_| OnceLock::new()).collect(),
            upstream_error: OnceLock::new(),
            upstream_seconds_by_class: Default::default(),
            decision_allow: OnceLock::new(),
            sql_rewritten: OnceLock::new(),
            sql_unchanged: OnceLock::new(),
            sql_cache_hit: OnceLock::new(),
            sql_cache_miss: OnceLock::new(),
        }
    }
}

/// The series pre-resolved in `slot`, resolving it on first use; without a slot, looked
/// up on every call.
fn resolved<T: Clone>(slot: Option<&OnceLock<T>>, lookup: impl FnOnce() -> T) -> Cow<'_, T> {
    match slot {
        Some(slot) => Cow::Borrowed(slot.get_or_init(lookup)),
        None => Cow::Owned(lookup()),
    }
}

/// Counts a request in flight until dropped (kept in the request's context, so every
/// way a request ends, errors and disconnects included, ends its count).
pub struct InFlight(IntGauge);

impl InFlight {
    pub fn start(metrics: &Metrics) -> InFlight {
        metrics.in_flight.inc();
        InFlight(metrics.in_flight.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "datagate_requests_total",
                "Requests seen by the proxy, by route and decision.",
            ),
            &["route", "decision"],
        )?;
        let decision_seconds = HistogramVec::new(
            HistogramOpts::new(
                "datagate_decision_duration_seconds",
                "Time from request start to the admission decision (authentication, routing, authorization).",
            )
            .buckets(vec![
                0.000_002, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5,
                0.001, 0.005, 0.025, 0.1,
            ]),
            &["decision"],
        )
        ?;
        let policy_reloads = IntCounterVec::new(
            Opts::new(
                "datagate_policy_reloads_total",
                "Policy reload attempts, by trigger and result (swapped, unchanged, failed).",
            ),
            &["trigger", "result"],
        )?;
        let policy_revision = IntGauge::new(
            "datagate_policy_revision",
            "The policy revision currently serving.",
        )?;
        let sql_rewrites = IntCounterVec::new(
            Opts::new(
                "datagate_sql_rewrites_total",
                "SQL statements through row-level security, by outcome and refusal kind.",
            ),
            &["outcome", "kind"],
        )?;
        let sql_rewrite_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "datagate_sql_rewrite_duration_seconds",
                "Time to find, analyse, rewrite and verify a request's SQL.",
            )
            .buckets(vec![
                0.000_002, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5,
                0.001, 0.005, 0.025, 0.1,
            ]),
        )?;
        let sql_rewrite_cache = IntCounterVec::new(
            Opts::new(
                "datagate_sql_rewrite_cache_total",
                "Rewrite cache lookups, by result (hit, miss).",
            ),
            &["result"],
        )?;
        let store_revision = IntGauge::new(
            "datagate_store_revision",
            "The grants store revision the serving snapshot was built from.",
        )?;
        let admin_writes = IntCounterVec::new(
            Opts::new(
                "datagate_admin_writes_total",
                "Admin API writes, by action and result (applied, rejected, failed).",
            ),
            &["action", "result"],
        )?;
        let store_syncs = IntCounterVec::new(
            Opts::new(
                "datagate_store_syncs_total",
                "Store revision checks, by source (notify, poll) and result (current, incremental, reloaded, failed).",
            ),
            &["source", "result"],
        )?;
        let snapshot_builds = IntCounterVec::new(
            Opts::new(
                "datagate_snapshot_builds_total",
                "Policy snapshots swapped in after start-up, by build (full: files and the whole store; incremental: the previous snapshot and the store rows a change touched).",
            ),
            &["build"],
        )?;
        let store_propagation_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "datagate_store_propagation_seconds",
                "Time from a store write's commit to this replica serving it.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let sts_calls = IntCounterVec::new(
            Opts::new(
                "datagate_sts_calls_total",
                "STS AssumeRole calls, by outcome.",
            ),
            &["outcome"],
        )?;
        let credential_cache = IntCounterVec::new(
            Opts::new(
                "datagate_credential_cache_total",
                "STS credential cache lookups, by result (hit, miss).",
            ),
            &["result"],
        )?;
        let credential_refreshes = IntCounterVec::new(
            Opts::new(
                "datagate_credential_refreshes_total",
                "Background STS refreshes ahead of expiry, by outcome.",
            ),
            &["outcome"],
        )?;
        let credential_age_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "datagate_credential_age_seconds",
                "Age of the cached STS credential served to a request.",
            )
            .buckets(vec![
                1.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
            ]),
        )?;
        let token_cache = IntCounterVec::new(
            Opts::new(
                "datagate_db_token_cache_total",
                "Database token cache lookups, by result (hit, miss).",
            ),
            &["result"],
        )?;
        let in_flight = IntGauge::new(
            "datagate_requests_in_flight",
            "Requests being decided or proxied right now.",
        )?;
        let refusals = IntCounterVec::new(
            Opts::new(
                "datagate_refusals_total",
                "Requests datagate refused, by HTTP status and refusal kind.",
            ),
            &["status", "kind"],
        )?;
        let upstream_responses = IntCounterVec::new(
            Opts::new(
                "datagate_upstream_responses_total",
                "Responses from the upstream, by status (`error` when none came).",
            ),
            &["status"],
        )?;
        let upstream_seconds = HistogramVec::new(
            HistogramOpts::new(
                "datagate_upstream_duration_seconds",
                "Time from sending a request upstream to its response head, by status class.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["class"],
        )?;
        let sql_pool = SqlPoolMetrics {
            rejected: IntCounterVec::new(
                Opts::new(
                    "datagate_sql_pool_rejected_total",
                    "SQL tasks refused before running, by reason (busy, caller_limit, too_large, worker_lost).",
                ),
                &["reason"],
            )?,
            queued: IntGauge::new(
                "datagate_sql_pool_queued",
                "SQL tasks waiting for a pool thread.",
            )?,
            callers: IntGauge::new(
                "datagate_sql_pool_callers",
                "Callers with SQL tasks queued or running (each held to sql.pool.per_caller_limit).",
            )?,
        };
        let build_info = IntGaugeVec::new(
            Opts::new(
                "datagate_build_info",
                "Always 1; labels name the running build.",
            ),
            &["version", "profile", "features"],
        )?;
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                if cfg!(debug_assertions) {
                    "debug"
                } else {
                    "release"
                },
                if cfg!(feature = "redshift") {
                    "redshift"
                } else {
                    ""
                },
            ])
            .set(1);
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "datagate_connections_refused_total",
                "Client connections closed at accept, by the bound reached (global, per_ip).",
            ),
            &["bound"],
        )?;
        let connections_open = IntGauge::new(
            "datagate_connections_open",
            "Client connections open on the proxy port.",
        )?;
        let trace_spans = IntCounterVec::new(
            Opts::new(
                "datagate_trace_spans_total",
                "OpenTelemetry spans, by outcome (ended: queued for export; exported; failed: in a batch the collector refused or never received).",
            ),
            &["outcome"],
        )?;
        let dataset_verifications = IntCounterVec::new(
            Opts::new(
                "datagate_dataset_verifications_total",
                "Mapped Superset datasets read from the upstream and checked against their mapping, by result (verified, mismatch, failed).",
            ),
            &["result"],
        )?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        for collector in [
            Box::new(in_flight.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(refusals.clone()),
            Box::new(upstream_responses.clone()),
            Box::new(upstream_seconds.clone()),
            Box::new(sql_pool.rejected.clone()),
            Box::new(sql_pool.queued.clone()),
            Box::new(sql_pool.callers.clone()),
            Box::new(build_info.clone()),
            Box::new(connections_refused.clone()),
            Box::new(connections_open.clone()),
            Box::new(trace_spans.clone()),
            Box::new(dataset_verifications.clone()),
        ] {
            registry.register(collector)?;
        }
        let jwks_fetches = IntCounterVec::new(
            Opts::new(
                "datagate_jwks_fetches_total",
                "Identity-provider JWKS fetches, by trigger and result (updated, unchanged, failed).",
            ),
            &["trigger", "result"],
        )?;
        let jwks_fetch_failures = IntCounterVec::new(
            Opts::new(
                "datagate_jwks_fetch_failures_total",
                "Failed identity-provider JWKS fetches, by reason.",
            ),
            &["reason"],
        )?;
        let jwks_kid_misses = IntCounterVec::new(
            Opts::new(
                "datagate_jwks_kid_misses_total",
                "Tokens naming a kid no key set holds, by what followed (refetched, waited, rate_limited).",
            ),
            &["result"],
        )?;
        let jwks_key_set_age_seconds = prometheus::Gauge::new(
            "datagate_jwks_key_set_age_seconds",
            "Seconds since the serving identity-provider JWKS was last fetched successfully.",
        )?;
        let jwks_keys = IntGauge::new(
            "datagate_jwks_keys",
            "Signing keys in the serving identity-provider JWKS.",
        )?;
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(decision_seconds.clone()),
            Box::new(policy_reloads.clone()),
            Box::new(policy_revision.clone()),
            Box::new(sql_rewrites.clone()),
            Box::new(sql_rewrite_seconds.clone()),
            Box::new(sql_rewrite_cache.clone()),
            Box::new(store_revision.clone()),
            Box::new(admin_writes.clone()),
            Box::new(store_syncs.clone()),
            Box::new(snapshot_builds.clone()),
            Box::new(store_propagation_seconds.clone()),
            Box::new(sts_calls.clone()),
            Box::new(credential_cache.clone()),
            Box::new(credential_refreshes.clone()),
            Box::new(credential_age_seconds.clone()),
            Box::new(token_cache.clone()),
            Box::new(jwks_fetches.clone()),
            Box::new(jwks_fetch_failures.clone()),
            Box::new(jwks_kid_misses.clone()),
            Box::new(jwks_key_set_age_seconds.clone()),
            Box::new(jwks_keys.clone()),
        ] {
            registry.register(collector)?;
        }
        Ok(Metrics {
            registry,
            requests,
            decision_seconds,
            policy_reloads,
            policy_revision,
            sql_rewrites,
            sql_rewrite_seconds,
            sql_rewrite_cache,
            store_revision,
            admin_writes,
            store_syncs,
            snapshot_builds,
            store_propagation_seconds,
            sts_calls,
            credential_cache,
            credential_refreshes,
            credential_age_seconds,
            token_cache,
            in_flight,
            refusals,
            upstream_responses,
            upstream_seconds,
            sql_pool,
            build_info,
            connections_refused,
            connections_open,
            trace_spans,
            dataset_verifications,
            hot: HotSeries::new(),
            id: NEXT_METRICS_ID.fetch_add(1, Ordering::Relaxed),
            jwks_fetches,
            jwks_fetch_failures,
            jwks_kid_misses,
            jwks_key_set_age_seconds,
            jwks_keys,
        })
    }

    /// Counts one refusal by its status and kind.
    pub fn count_refusal(&self, status: u16, kind: &str) {
        self.refusals
            .with_label_values(&[&status.to_string(), kind])
            .inc();
    }

    /// Records one upstream exchange: its status (`None` when no response came) and the
    /// time to the response head.
    pub fn observe_upstream(&self, status: Option<u16>, elapsed: std::time::Duration) {
        let hot = &self.hot;
        // HTTP's three-digit statuses (all pingora hands over) and `error` are
        // pre-resolved; anything else is looked up by its label, as before.
        let three_digits = status.filter(|status| (100..=999).contains(status));
        let (status_slot, class_slot) = match (status, three_digits) {
            (None, _) => (
                Some(&hot.upstream_error),
                hot.upstream_seconds_by_class.first(),
            ),
            (Some(_), Some(status)) => (
                hot.upstream_by_status.get(usize::from(status - 100)),
                hot.upstream_seconds_by_class.get(usize::from(status / 100)),
            ),
            (Some(_), None) => (None, None),
        };
        resolved(status_slot, || {
            let label = status.map_or_else(|| "error".to_string(), |status| status.to_string());
            self.upstream_responses.with_label_values(&[&label])
        })
        .inc();
        resolved(class_slot, || {
            let label = status.map_or_else(
                || "error".to_string(),
                |status| format!("{}xx", status / 100),
            );
            self.upstream_seconds.with_label_values(&[&label])
        })
        .observe(elapsed.as_secs_f64());
    }

    /// Counts one allowed request of `route`.
    pub fn count_allowed(&self, route: &RouteLabel) {
        let lookup = || self.requests.with_label_values(&[route.name(), "allow"]);
        match route.allowed.get_or_init(|| (self.id, lookup())) {
            (owner, series) if *owner == self.id => series.inc(),
            _ => lookup().inc(),
        }
    }

    /// Times one allowed request's admission decision.
    pub fn observe_allowed_decision(&self, elapsed: std::time::Duration) {
        resolved(Some(&self.hot.decision_allow), || {
            self.decision_seconds.with_label_values(&["allow"])
        })
        .observe(elapsed.as_secs_f64());
    }

    /// Counts one statement row-level security passed: rewritten or unchanged, and
    /// whether it came from the rewrite cache.
    pub fn count_sql_statement(&self, changed: bool, cache_hit: bool) {
        let hot = &self.hot;
        let (slot, outcome) = if changed {
            (&hot.sql_rewritten, "rewritten")
        } else {
            (&hot.sql_unchanged, "unchanged")
        };
        resolved(Some(slot), || {
            self.sql_rewrites.with_label_values(&[outcome, "none"])
        })
        .inc();
        let (slot, cache) = if cache_hit {
            (&hot.sql_cache_hit, "hit")
        } else {
            (&hot.sql_cache_miss, "miss")
        };
        resolved(Some(slot), || {
            self.sql_rewrite_cache.with_label_values(&[cache])
        })
        .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "metrics encoding failed");
        }
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition_lines(metrics: &Metrics, family: &str) -> Vec<String> {
        metrics
            .render()
            .lines()
            .filter(|line| line.starts_with(family))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn pre_resolved_series_are_the_labelled_series_and_only_those_used() {
        let metrics = Metrics::new().unwrap();
        let elapsed = std::time::Duration::from_millis(3);
        for status in [Some(200), Some(200), Some(503), None] {
            metrics.observe_upstream(status, elapsed);
        }
        assert_eq!(
            exposition_lines(&metrics, "datagate_upstream_responses_total{"),
            [
                "datagate_upstream_responses_total{status=\"200\"} 2",
                "datagate_upstream_responses_total{status=\"503\"} 1",
                "datagate_upstream_responses_total{status=\"error\"} 1",
            ]
        );
        assert_eq!(
            exposition_lines(&metrics, "datagate_upstream_duration_seconds_count{"),
            [
                "datagate_upstream_duration_seconds_count{class=\"2xx\"} 2",
                "datagate_upstream_duration_seconds_count{class=\"5xx\"} 1",
                "datagate_upstream_duration_seconds_count{class=\"error\"} 1",
            ]
        );
        // The family's own lookup reaches the same series the request path counts in.
        metrics.upstream_responses.with_label_values(&["200"]).inc();
        assert!(
            exposition_lines(&metrics, "datagate_upstream_responses_total{")
                .contains(&"datagate_upstream_responses_total{status=\"200\"} 3".to_string())
        );

        // Not a status pingora hands over, but labelled as before, not as `error`.
        metrics.observe_upstream(Some(42), elapsed);
        assert!(
            exposition_lines(&metrics, "datagate_upstream_duration_seconds_count{")
                .contains(&"datagate_upstream_duration_seconds_count{class=\"0xx\"} 1".to_string())
        );

        assert!(exposition_lines(&metrics, "datagate_decision_duration_seconds_count").is_empty());
        metrics.observe_allowed_decision(elapsed);
        metrics.observe_allowed_decision(elapsed);
        assert_eq!(
            exposition_lines(&metrics, "datagate_decision_duration_seconds_count"),
            ["datagate_decision_duration_seconds_count{decision=\"allow\"} 2"]
        );

        metrics.count_sql_statement(true, true);
        metrics.count_sql_statement(true, false);
        metrics.count_sql_statement(false, true);
        assert_eq!(
            exposition_lines(&metrics, "datagate_sql_rewrites_total{"),
            [
                "datagate_sql_rewrites_total{kind=\"none\",outcome=\"rewritten\"} 2",
                "datagate_sql_rewrites_total{kind=\"none\",outcome=\"unchanged\"} 1",
            ]
        );
        assert_eq!(
            exposition_lines(&metrics, "datagate_sql_rewrite_cache_total{"),
            [
                "datagate_sql_rewrite_cache_total{result=\"hit\"} 2",
                "datagate_sql_rewrite_cache_total{result=\"miss\"} 1",
            ]
        );
    }

    #[test]
    fn a_route_label_counts_in_the_registry_that_counts_it() {
        let first = Metrics::new().unwrap();
        let second = Metrics::new().unwrap();
        let chart = RouteLabel::new("chart");
        assert!(exposition_lines(&first, "datagate_requests_total{").is_empty());
        first.count_allowed(&chart);
        first.count_allowed(&chart);
        // A route compiled once and counted by two registries (tests build several)
        // counts in each, not in whichever resolved the label first.
        second.count_allowed(&chart);
        first.requests.with_label_values(&["chart", "allow"]).inc();
        assert_eq!(
            exposition_lines(&first, "datagate_requests_total{"),
            ["datagate_requests_total{decision=\"allow\",route=\"chart\"} 3"]
        );
        assert_eq!(
            exposition_lines(&second, "datagate_requests_total{"),
            ["datagate_requests_total{decision=\"allow\",route=\"chart\"} 1"]
        );
    }
}
