//! datagate: a policy sidecar for data APIs.
//!
//! It runs as a pingora reverse proxy in front of a BI or SQL-over-HTTP service and
//! decides, for every request, who is calling ([`authn`]), which endpoint it is
//! ([`route`]), and whether the grants allow it ([`policy`]), before any byte reaches the
//! upstream. The request path is [`decision::admit`]; [`proxy`] glues it to pingora, [`admin`]
//! serves health, metrics and policy administration, [`state`] holds the hot-swappable
//! policy snapshot and [`reload`] decides when to rebuild it.

pub mod admin;
pub mod audit;
pub mod authn;
pub mod chart_data;
pub mod cli;
pub mod config;
pub mod connection_guard;
pub mod creds;
pub mod dataset_verify;
pub mod decision;
pub mod export;
pub mod http_error;
pub mod json_guard;
pub mod lifecycle;
pub mod metrics;
pub mod migrate;
pub mod policy;
pub mod policy_test;
pub mod principal;
pub mod proxy;
pub mod reload;
pub mod replication;
pub mod rls;
pub mod route;
pub mod server;
pub mod snapshot;
pub mod sources;
pub mod sql_location;
pub mod sql_pool;
pub mod state;
pub mod store;
pub mod telemetry;
