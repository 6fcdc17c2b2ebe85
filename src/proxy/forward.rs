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
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::Session;
use pingora::proxy::ProxyHttp;
use pingora::{Error, ErrorSource, ErrorType, Result, RetryType};

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

/// Connections tried for one request: pooled ones that turn out closed, then a fresh one.
const MAX_ATTEMPTS: usize = 4;

/// How an attempt on an upstream connection failed, for the retry decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AttemptFailure {
    /// The request could not be written whole (framed by its `Content-Length`, so the
    /// upstream cannot have acted on it).
    Sending,
    /// The request was written; the connection closed or reset before an answer came
    /// (pingora marks these retryable on a reused connection).
    AwaitingAnswer,
    /// Anything else — timeouts, TLS, a malformed answer — is never retried.
    Other,
}

impl AttemptFailure {
    /// Only the upstream connection's own failures count: a client that went away while
    /// its answer was written (a downstream write error) is never a reason to send the
    /// request upstream again.
    pub(super) fn of(error: &Error) -> AttemptFailure {
        if *error.esource() != ErrorSource::Upstream {
            return AttemptFailure::Other;
        }
        match (error.etype(), &error.retry) {
            (ErrorType::WriteError, _) => AttemptFailure::Sending,
            (_, RetryType::ReusedOnly) => AttemptFailure::AwaitingAnswer,
            _ => AttemptFailure::Other,
        }
    }
}

/// Whether a request whose attempt failed is sent again on another connection. Only a
/// pooled connection's failure can be the keep-alive race a retry is for (the upstream
/// closed it as datagate reused it), and only a body that can be sent again (held whole)
/// is. A request the upstream may have received whole is sent again only when its method
/// is idempotent, as pingora and nginx decide; one that could not be written whole is
/// sent again whatever its method.
pub(super) fn may_retry(
    failure: AttemptFailure,
    reused: bool,
    idempotent: bool,
    replayable: bool,
) -> bool {
    reused
        && replayable
        && match failure {
            AttemptFailure::Sending => true,
            AttemptFailure::AwaitingAnswer => idempotent,
            AttemptFailure::Other => false,
        }
}

/// Writes the request and its body, and reads the final response head (interim answers,
/// `100 Continue`, are the upstream's business with datagate).
async fn send_and_read_head(
    upstream: &mut pingora::protocols::http::client::HttpSession,
    request: &RequestHeader,
    body: &Bytes,
) -> Result<ResponseHeader> {
    upstream
        .write_request_header(Box::new(request.clone()))
        .await?;
    upstream.write_request_body(body.clone(), true).await?;
    upstream.finish_request_body().await?;
    loop {
        upstream.read_response_header().await?;
        let head = upstream.response_header().ok_or_else(|| {
            Error::explain(ErrorType::InvalidHTTPHeader, "no upstream response header")
        })?;
        if !head.status.is_informational() || head.status.as_u16() == 101 {
            return Ok(head.clone());
        }
    }
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

        // A kept-alive connection the upstream closed as it was taken from the pool fails
        // before any answer: tried again on another connection when [`may_retry`] says so
        // (the body is in memory). A failure on a fresh connection is final.
        let idempotent = session.req_header().method.is_idempotent();
        let mut attempts = 0;
        let (mut upstream, mut response) = loop {
            attempts += 1;
            let (mut upstream, reused) = self
                .connector
                .get_http_session(peer.as_ref())
                .await
                .map_err(Error::into_up)?;
            upstream.set_read_timeout(peer.options.read_timeout);
            upstream.set_write_timeout(peer.options.write_timeout);
            // Every failure here is the upstream connection's: answered as pingora answers
            // one (502, 504).
            match send_and_read_head(&mut upstream, &request, &body)
                .await
                .map_err(Error::into_up)
            {
                Ok(response) => break (upstream, response),
                Err(mut error) => {
                    let retry = may_retry(AttemptFailure::of(&error), reused, idempotent, true);
                    if !retry || attempts >= MAX_ATTEMPTS {
                        error.set_retry(false);
                        return Err(error);
                    }
                }
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
                upstream
                    .read_response_body()
                    .await
                    .map_err(Error::into_up)?
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

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(etype: ErrorType, source: ErrorSource, retry: RetryType) -> AttemptFailure {
        let mut error = Error::new(etype);
        error.esource = source;
        error.retry = retry;
        AttemptFailure::of(&error)
    }

    #[test]
    fn only_the_upstreams_failures_on_a_pooled_connection_are_retried() {
        use AttemptFailure::{AwaitingAnswer, Other, Sending};
        assert_eq!(
            failure(ErrorType::WriteError, ErrorSource::Upstream, false.into()),
            Sending
        );
        assert_eq!(
            failure(
                ErrorType::ConnectionClosed,
                ErrorSource::Upstream,
                RetryType::ReusedOnly
            ),
            AwaitingAnswer
        );
        // The client went away while its answer was written: never a retry.
        assert_eq!(
            failure(ErrorType::WriteError, ErrorSource::Downstream, false.into()),
            Other
        );
        assert_eq!(
            failure(
                ErrorType::WriteTimedout,
                ErrorSource::Upstream,
                false.into()
            ),
            Other
        );
        assert_eq!(
            failure(ErrorType::ReadTimedout, ErrorSource::Upstream, false.into()),
            Other
        );
        for (failure, reused, idempotent, replayable, retried) in [
            (Sending, true, false, true, true),
            (Sending, false, false, true, false),
            (Sending, true, true, false, false),
            (AwaitingAnswer, true, true, true, true),
            (AwaitingAnswer, true, false, true, false),
            (AwaitingAnswer, false, true, true, false),
            (Other, true, true, true, false),
        ] {
            assert_eq!(
                may_retry(failure, reused, idempotent, replayable),
                retried,
                "{failure:?} reused {reused} idempotent {idempotent} replayable {replayable}"
            );
        }
    }
}
