//! The pingora server settings the proxy runs with, shared by `datagate run` and the
//! load-test baseline (`examples/bare_proxy.rs`) so both are measured alike.
//!
//! Sits under the request path: `cli::run_proxy` builds the server from these settings
//! before any request arrives.

use pingora::server::configuration::ServerConf;

/// Server settings for `threads` proxy threads and an upstream keepalive pool of
/// `keepalive_pool_size` connections.
pub fn server_conf(threads: usize, keepalive_pool_size: usize) -> ServerConf {
    ServerConf {
        threads,
        upstream_keepalive_pool_size: keepalive_pool_size,
        ..Default::default()
    }
}
