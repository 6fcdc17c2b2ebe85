//! A bare pingora pass-through, the baseline for `benches/load.sh`: the same pingora
//! version and server settings as datagate, with no authentication or policy. Usage:
//! `bare_proxy LISTEN UPSTREAM THREADS`.

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::prelude::{HttpPeer, Session};
use pingora::proxy::ProxyHttp;

/// The same allocator as the `datagate` binary, so the comparison is like for like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct PassThrough {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for PassThrough {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args
        .next()
        .ok_or("usage: bare_proxy LISTEN UPSTREAM THREADS")?;
    let upstream: SocketAddr = args.next().ok_or("missing UPSTREAM")?.parse()?;
    let threads: usize = args.next().unwrap_or_else(|| "2".to_string()).parse()?;
    let server_conf = pingora::server::configuration::ServerConf {
        threads,
        ..Default::default()
    };
    let mut server = pingora::server::Server::new_with_opt_and_conf(None, server_conf);
    server.bootstrap();
    let mut service =
        pingora::proxy::http_proxy_service(&server.configuration, PassThrough { upstream });
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever();
}
