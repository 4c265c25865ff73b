//! Request traces: W3C Trace Context propagation and one OTLP span per request.
//!
//! Owns the `[tracing]` section ([`config`]), the trace context values ([`context`]), the
//! [`Tracer`] the request path asks for a span's IDs and hands finished spans to, and the
//! exporter, a background service that batches spans from a bounded queue and posts them as
//! OTLP/HTTP JSON ([`export`]). The request path never waits on it: a full queue drops the
//! span and counts it.
//!
//! It reads no request, gate or decision: the proxy's `trace` room turns those into a
//! [`export::FinishedSpan`]. It must not import the proxy.

pub mod config;
pub mod context;
pub mod export;

#[cfg(test)]
mod tests;
