//! Forwarding an admitted request whose body pingora cannot replay.
//!
//! Sits after [`crate::decision::admit`] in `request_filter`: a body read there reaches
//! the upstream through pingora's retry buffer, which holds 64 KiB (DESIGN.md §4). When the
//! client's body was larger (the buffer reports itself truncated), the request is sent from
//! here instead, through pingora's own upstream connector: the same peer, the same
//! upstream header edits (`upstream_request_filter`), the same response phases
//! (`response_filter`, `response_body_filter`), and the forwarded body — exactly the bytes
//! datagate checked — written with its own `Content-Length`.
//!
//! Why this path rather than the alternatives (measured in the README, *Benchmarks*): a
//! pingora subrequest with a preset body would run every phase a second time (and is an
//! alpha API); a larger retry buffer needs a pingora change (cloudflare/pingora#816 is
//! open, not released).

use bytes::Bytes;
use http::header;
use pingora::http::RequestHeader;
use pingora::prelude::Session;
use pingora::proxy::ProxyHttp;
use pingora::{Error, ErrorType, Result};

use super::{DatagateProxy, RequestContext};

/// Hop-by-hop fields a proxy never forwards (RFC 9110 §7.6.1), as pingora's own proxy path
/// strips them; the framing is datagate's own.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// The client's request head as pingora's proxy path would start it: HTTP/1.1, fields the
/// client's `Connection` nominated and the hop-by-hop fields removed. A nomination that is
/// not a field name is refused, as pingora refuses it.
pub(super) fn upstream_head(client: &RequestHeader) -> Result<RequestHeader> {
    let mut request = client.clone();
    request.set_version(http::Version::HTTP_11);
    let mut nominated = Vec::new();
    for value in client.headers.get_all(header::CONNECTION) {
        let text = value.to_str().map_err(|_| {
            Error::explain(
                ErrorType::InvalidHTTPHeader,
                "unreadable `Connection` field",
            )
        })?;
        for token in text
            .split(',')
            .map(str::trim)
            .filter(|token| !token.is_empty())
        {
            let name = header::HeaderName::from_bytes(token.as_bytes()).map_err(|_| {
                Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "`Connection` nominates something that is not a field name",
                )
            })?;
            nominated.push(name);
        }
    }
    for name in &nominated {
        while request.remove_header(name).is_some() {}
    }
    for name in HOP_BY_HOP {
        while request.remove_header(name).is_some() {}
    }
    while request.remove_header(&header::CONTENT_LENGTH).is_some() {}
    Ok(request)
}

impl DatagateProxy {
    /// Sends the admitted request with `body` upstream and streams the answer back; the
    /// request is answered when this returns `Ok`. Errors go to `fail_to_proxy` like any
    /// proxy failure.
    pub(super) async fn forward_buffered(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
        body: Bytes,
    ) -> Result<bool> {
        let peer = self.upstream_peer(session, ctx).await?;
        let mut request = upstream_head(session.req_header())?;
        // `upstream_request_filter` sets `Content-Length` from the body it will replace.
        ctx.rewritten_body = Some(body.clone());
        self.upstream_request_filter(session, &mut request, ctx)
            .await?;
        ctx.rewritten_body = None;

        let (mut upstream, _reused) = self.connector.get_http_session(peer.as_ref()).await?;
        upstream.set_read_timeout(peer.options.read_timeout);
        upstream.set_write_timeout(peer.options.write_timeout);
        upstream.write_request_header(Box::new(request)).await?;
        upstream.write_request_body(body, true).await?;
        upstream.finish_request_body().await?;
        // Interim answers (100 Continue) are the upstream's business with datagate.
        let mut response = loop {
            upstream.read_response_header().await?;
            let head = upstream.response_header().ok_or_else(|| {
                Error::explain(ErrorType::InvalidHTTPHeader, "no upstream response header")
            })?;
            if !head.status.is_informational() || head.status.as_u16() == 101 {
                break head.clone();
            }
        };
        self.response_filter(session, &mut response, ctx).await?;
        let head_only = response.status.as_u16() == 204
            || response.status.as_u16() == 304
            || session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(response), false)
            .await?;
        loop {
            let mut chunk = if head_only {
                None
            } else {
                upstream.read_response_body().await?
            };
            let end = chunk.is_none() || upstream.response_done();
            self.response_body_filter(session, &mut chunk, end, ctx)?;
            session.write_response_body(chunk, end).await?;
            if end {
                break;
            }
        }
        self.connector
            .release_http_session(upstream, peer.as_ref(), peer.options.idle_timeout)
            .await;
        Ok(true)
    }
}
