//! Request bodies on the request path: reading an OpenAI body (up to `[routing]
//! max_body_bytes`) to find the model it names before the decision, and holding back a
//! larger one on a single-model sidecar until it is whole ([`HeldBody`]), within a budget
//! shared by every request ([`HeldBudget`], [`HeldPermit`]).
//!
//! Reads and keeps bytes only: which model they name is `routing`'s to say, and whether
//! the request may go on is the decision's. Every other body passes through untouched.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;

use crate::proxy::routing::config::{Routing, MAX_INSPECTED_BODY};
use crate::proxy::routing::profiles::Field;
use crate::proxy::routing::{names_in_body, Named};

/// A budget of bytes shared by every held body: taken whole when a body is to be held,
/// given back when the permit drops (the body went upstream, was refused, or the request
/// ended in any other way).
#[derive(Debug)]
pub struct HeldBudget {
    used: AtomicUsize,
    limit: usize,
    /// `provgate_held_body_bytes`, kept equal to `used`.
    gauge: prometheus::IntGauge,
}

impl HeldBudget {
    pub fn new(limit: usize, gauge: prometheus::IntGauge) -> HeldBudget {
        HeldBudget {
            used: AtomicUsize::new(0),
            limit,
            gauge,
        }
    }

    /// `n` more bytes, if they fit.
    pub fn take(self: &Arc<Self>, n: usize) -> Option<HeldPermit> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let next = used.checked_add(n).filter(|&v| v <= self.limit)?;
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.gauge.add(n as i64);
                    return Some(HeldPermit {
                        budget: self.clone(),
                        n,
                    });
                }
                Err(now) => used = now,
            }
        }
    }

    /// A buffer for a body of declared length `n`, with `n` bytes of the budget reserved
    /// up front (a declared length is not yet a body: the buffer grows as the body comes);
    /// `None` if they do not fit.
    pub fn hold(self: &Arc<Self>, n: usize) -> Option<HeldBody> {
        let permit = self.take(n)?;
        Some(HeldBody {
            buf: BytesMut::with_capacity(n.min(MAX_INSPECTED_BODY * 2)),
            _permit: permit,
        })
    }
}

/// Bytes taken from a [`HeldBudget`], given back on drop.
#[derive(Debug)]
pub struct HeldPermit {
    budget: Arc<HeldBudget>,
    n: usize,
}

impl Drop for HeldPermit {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.n, Ordering::AcqRel);
        self.budget.gauge.sub(self.n as i64);
    }
}

/// A body being held back, with its share of the budget.
pub struct HeldBody {
    buf: BytesMut,
    _permit: HeldPermit,
}

impl HeldBody {
    /// Keeps one chunk of the body back (nothing goes upstream: `body` is left empty) and
    /// says whether the body is now whole. pingora frames the body by its Content-Length,
    /// which was checked against `max` (`[routing] max_held_body_bytes`); a body beyond it
    /// is an error, which only guards that promise.
    pub fn push(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        max: usize,
    ) -> pingora::Result<bool> {
        if let Some(chunk) = body.take() {
            if self.buf.len() + chunk.len() > max {
                return Err(pingora::Error::explain(
                    pingora::ErrorType::InvalidHTTPHeader,
                    "held request body over routing.max_held_body_bytes",
                ));
            }
            self.buf.extend_from_slice(&chunk);
        }
        if !end_of_stream {
            // An empty chunk sends nothing and does not end the upstream body.
            *body = Some(Bytes::new());
        }
        Ok(end_of_stream)
    }

    /// The whole body; its share of the budget goes back.
    pub fn into_bytes(self) -> Bytes {
        self.buf.freeze()
    }
}

/// Reads the JSON body of a request whose door names its model in `fields`, up to the
/// routing limit, and returns the model(s) it names (`models`: how many the sidecar guards). pingora keeps what was read (at
/// most 64 KiB, which the limit cannot exceed) in its retry buffer and sends exactly those
/// bytes upstream after the decision: the body is forwarded unchanged, and nothing reaches
/// the upstream before.
pub async fn read_body_model(
    session: &mut Session,
    routing: &Routing,
    fields: &[Field],
    models: usize,
    enforce: bool,
) -> pingora::Result<Named> {
    let limit = routing.max_body_bytes;
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = declared.filter(|&n| n > limit) {
        // One model: the body can follow the headers upstream, held back until whole.
        if models == 1 && n <= routing.max_held_body_bytes {
            return Ok(Named::Held(n));
        }
        return Ok(Named::BodyTooLarge);
    }
    // A body without a length may turn out larger than pingora can replay; in dry-run it
    // must still reach the server, so it is not read at all.
    if declared.is_none() && !enforce {
        return Ok(Named::Nothing);
    }
    session.enable_retry_buffering();
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(chunk) = session.read_request_body().await? {
        total += chunk.len();
        if total > limit {
            return Ok(Named::BodyTooLarge);
        }
        match (&first, &mut joined) {
            (None, _) => first = Some(chunk),
            (Some(f), None) => {
                let mut b = BytesMut::with_capacity(declared.unwrap_or(limit).min(limit));
                b.extend_from_slice(f);
                b.extend_from_slice(&chunk);
                joined = Some(b);
            }
            (Some(_), Some(b)) => b.extend_from_slice(&chunk),
        }
    }
    let body: &[u8] = match (&joined, &first) {
        (Some(b), _) => b,
        (None, Some(f)) => f,
        (None, None) => &[],
    };
    Ok(names_in_body(body, fields))
}

#[cfg(test)]
mod tests;
