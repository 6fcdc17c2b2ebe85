//! Bounded request-body reading for routes that inspect bodies.
//!
//! pingora sends request headers upstream before any body filter runs, so a decision that
//! depends on the body must read it in `request_filter`. What is read there reaches the
//! upstream through pingora's retry buffer, which holds 64 KiB; a larger body would arrive
//! at the upstream as headers without a body (measured, DESIGN.md §4). So a body larger
//! than the retry buffer is forwarded by [`super::forward`] instead, and the route's limit
//! (`routes.max_body_bytes`) is enforced here, before any upstream connection exists: over
//! the limit is a 413.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::prelude::Session;

use crate::decision::{BodyReadError, BodySource};

type BodyError = BodyReadError;

/// The client connection as [`crate::decision::admit`]'s body source.
pub struct SessionBody<'a> {
    pub session: &'a mut Session,
    pub declared_length: Option<usize>,
    /// The bytes read, kept for [`super::forward`] when pingora cannot replay them.
    pub read: Option<Bytes>,
}

#[async_trait]
impl BodySource for SessionBody<'_> {
    async fn read(&mut self, limit: usize) -> Result<Bytes, BodyReadError> {
        let body = read_bounded(self.session, self.declared_length, limit).await?;
        self.read = Some(body.clone());
        Ok(body)
    }
}

/// Reads the whole request body, refusing as soon as it exceeds `limit` bytes (or the
/// declared `Content-Length` already does).
pub async fn read_bounded(
    session: &mut Session,
    declared_length: Option<usize>,
    limit: usize,
) -> Result<Bytes, BodyError> {
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
    // pingora replays what its retry buffer holds (up to 64 KiB) through
    // `request_body_filter`, which substitutes the forwarded body; a larger body overflows
    // the buffer (`retry_buffer_truncated`) and goes through `super::forward` instead.
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
    Ok(body.freeze())
}
