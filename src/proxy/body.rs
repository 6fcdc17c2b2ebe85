//! Bounded request-body reading for routes that inspect bodies.
//!
//! pingora sends request headers upstream before any body filter runs, so a decision that
//! depends on the body must read it in `request_filter`. What is read there reaches the
//! upstream only through pingora's retry buffer, which holds 64 KiB; a larger body would
//! arrive at the upstream as headers without a body (measured, DESIGN.md §4). So the limit
//! is enforced here, before any upstream connection exists: over the limit is a 413.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::prelude::Session;

use crate::decision::{BodyReadError, BodySource};

/// pingora's retry buffer size: the largest body that can be read here and still forwarded.
pub const RETRY_BUFFER_BYTES: usize = 64 * 1024;

type BodyError = BodyReadError;

/// The client connection as [`crate::decision::admit`]'s body source.
pub struct SessionBody<'a> {
    pub session: &'a mut Session,
    pub declared_length: Option<usize>,
}

#[async_trait]
impl BodySource for SessionBody<'_> {
    async fn read(&mut self, limit: usize) -> Result<Bytes, BodyReadError> {
        read_bounded(self.session, self.declared_length, limit).await
    }
}

/// Reads the whole request body, refusing as soon as it exceeds `limit` bytes (or the
/// declared `Content-Length` already does).
pub async fn read_bounded(
    session: &mut Session,
    declared_length: Option<usize>,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let limit = limit.min(RETRY_BUFFER_BYTES);
    if declared_length.is_some_and(|length| length > limit) {
        return Err(BodyError::TooLarge);
    }
    // A client that sent `Expect: 100-continue` waits for the go-ahead before sending the
    // body; datagate, not the upstream, is the one reading it now.
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session
            .as_downstream_mut()
            .write_continue_response()
            .await
            .map_err(|_| BodyError::Unreadable)?;
    }
    session.enable_retry_buffering();
    let mut body = BytesMut::with_capacity(declared_length.unwrap_or(0));
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(BodyError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(_) => return Err(BodyError::Unreadable),
        }
    }
    // The retry buffer is what pingora replays upstream; if it could not hold everything,
    // forwarding would silently drop the body.
    if session.as_downstream().retry_buffer_truncated() {
        return Err(BodyError::TooLarge);
    }
    Ok(body.freeze())
}
