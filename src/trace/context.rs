//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): reading a `traceparent`
//! header ([`TraceParent::parse`]), writing one without formatting machinery
//! ([`TraceParent::header`]), and the random trace and span IDs provgate starts traces with
//! ([`IdSource`]).
//!
//! Pure values: no header map, no gate, no export. It must not import the proxy.

use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderValue;

/// The `sampled` bit of the trace flags.
pub const SAMPLED: u8 = 0x01;

/// The length of a version-00 `traceparent`: `00-{32 hex}-{16 hex}-{2 hex}`.
const LEN: usize = 55;

/// A `traceparent`'s fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    /// The span ID of the sender's span (the parent of the receiver's).
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// Reads a `traceparent` value as the W3C recommendation says a receiver must: version
    /// two lowercase hex digits and not `ff`; version `00` exactly 55 characters; a later
    /// version at least 55, with a `-` after the first four fields if longer (its extra
    /// fields are ignored); lowercase hex IDs, neither all zeros. `None`: invalid.
    pub fn parse(value: &[u8]) -> Option<TraceParent> {
        if value.len() < LEN {
            return None;
        }
        let Ok(head) = <&[u8; LEN]>::try_from(value.get(..LEN)?) else {
            return None;
        };
        let version = hex_byte(&head[0..2])?;
        if version == 0xff
            || (version == 0 && value.len() != LEN)
            || value.get(LEN).is_some_and(|&b| b != b'-')
        {
            return None;
        }
        if head[2] != b'-' || head[35] != b'-' || head[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        hex_into(&head[3..35], &mut trace_id)?;
        hex_into(&head[36..52], &mut span_id)?;
        let flags = hex_byte(&head[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }

    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The version-00 header value (what provgate sends, whatever version it received).
    pub fn header(&self) -> HeaderValue {
        let mut buf = [0u8; LEN];
        buf[0..3].copy_from_slice(b"00-");
        buf[35] = b'-';
        buf[52] = b'-';
        // Each slice is exactly twice the bytes encoded: the sizes are fixed above.
        let _ = hex::encode_to_slice(self.trace_id, &mut buf[3..35]);
        let _ = hex::encode_to_slice(self.span_id, &mut buf[36..52]);
        let _ = hex::encode_to_slice([self.flags], &mut buf[53..55]);
        // Hex digits and dashes are valid header bytes.
        HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static(""))
    }
}

/// Lowercase hex only (the recommendation forbids uppercase).
fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    let &[hi, lo] = two else {
        return None;
    };
    Some(nibble(hi)? << 4 | nibble(lo)?)
}

fn hex_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *o = hex_byte(pair)?;
    }
    Some(())
}

/// Random trace and span IDs: SplitMix64 over a counter seeded from the OS once, so a
/// request costs an atomic add and a few multiplications, no system call. IDs must be
/// unique and unpredictable enough to spread across a collector's shards; they are not
/// secrets.
pub struct IdSource {
    state: AtomicU64,
}

impl Default for IdSource {
    fn default() -> Self {
        let mut seed = [0u8; 8];
        // Without OS randomness, fall back to the clock and the process ID.
        if getrandom::fill(&mut seed).is_err() {
            seed = (crate::base::unix_now_ms() ^ u64::from(std::process::id()) << 32).to_le_bytes();
        }
        IdSource {
            state: AtomicU64::new(u64::from_le_bytes(seed)),
        }
    }
}

impl IdSource {
    fn next_u64(&self) -> u64 {
        let mut z = self
            .state
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A span ID, never all zeros.
    pub fn span_id(&self) -> [u8; 8] {
        loop {
            let id = self.next_u64();
            if id != 0 {
                return id.to_be_bytes();
            }
        }
    }

    /// A trace ID, never all zeros.
    pub fn trace_id(&self) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.next_u64().to_be_bytes());
        id[8..].copy_from_slice(&self.span_id());
        id
    }
}
