//! A bare pingora pass-through, the baseline for `benches/load.sh`: the same pingora
//! version, allocator and server settings as datagate (see `datagate::server_conf`), with
//! no authentication or policy. Usage: `bare_proxy LISTEN UPSTREAM THREADS`.
//!
//! For experiments the environment can override the server settings:
//! `BARE_WORK_STEALING=0|1`, `BARE_LISTENER_TASKS=<accept tasks per listening socket>`,
//! `BARE_POOL=<upstream keepalive pool size>`, `BARE_IDLE_TIMEOUT_SECONDS=<n>` (an idle
//! timeout on pooled upstream connections), `BARE_UPSTREAM_TIMEOUT_SECONDS=<n>` (connect,
//! read and write timeouts on the upstream, as datagate always sets them: pingora wraps
//! each upstream read and write in a timer then, which is part of what datagate costs
//! over this baseline and none of its own work), `BARE_DEFAULT_MODULES=1` (pingora's
//! default downstream modules: its response-compression module, disabled; by default
//! this baseline, like datagate, adds none, see `DatagateProxy::init_downstream_modules`).

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use pingora::prelude::{HttpPeer, Session};
use pingora::proxy::ProxyHttp;

/// The same allocator as the `datagate` binary, so the comparison is like for like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct PassThrough {
    upstream: SocketAddr,
    default_modules: bool,
    idle_timeout: Option<Duration>,
    upstream_timeout: Option<Duration>,
}

#[async_trait]
impl ProxyHttp for PassThrough {
    type CTX = ();

    fn new_ctx(&self) {}

    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        if self.default_modules {
            modules.add_module(
                pingora::modules::http::compression::ResponseCompressionBuilder::enable(0),
            );
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.idle_timeout = self.idle_timeout;
        peer.options.connection_timeout = self.upstream_timeout;
        peer.options.read_timeout = self.upstream_timeout;
        peer.options.write_timeout = self.upstream_timeout;
        Ok(Box::new(peer))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args
        .next()
        .ok_or("usage: bare_proxy LISTEN UPSTREAM THREADS")?;
    let upstream: SocketAddr = args.next().ok_or("missing UPSTREAM")?.parse()?;
    let threads: usize = args.next().unwrap_or_else(|| "2".to_string()).parse()?;
    let env = |name: &str| std::env::var(name).ok();
    let mut server_conf = datagate::server::server_conf(threads, 128);
    if let Some(value) = env("BARE_WORK_STEALING") {
        server_conf.work_stealing = value == "1";
    }
    if let Some(value) = env("BARE_LISTENER_TASKS") {
        server_conf.listener_tasks_per_fd = value.parse()?;
    }
    if let Some(value) = env("BARE_POOL") {
        server_conf.upstream_keepalive_pool_size = value.parse()?;
    }
    let idle_timeout = env("BARE_IDLE_TIMEOUT_SECONDS")
        .map(|value| value.parse().map(Duration::from_secs))
        .transpose()?;
    let upstream_timeout = env("BARE_UPSTREAM_TIMEOUT_SECONDS")
        .map(|value| value.parse().map(Duration::from_secs))
        .transpose()?;
    let mut server = pingora::server::Server::new_with_opt_and_conf(None, server_conf);
    server.bootstrap();
    let mut service = pingora::proxy::http_proxy_service(
        &server.configuration,
        PassThrough {
            upstream,
            default_modules: env("BARE_DEFAULT_MODULES").is_some_and(|value| value == "1"),
            idle_timeout,
            upstream_timeout,
        },
    );
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever();
}
