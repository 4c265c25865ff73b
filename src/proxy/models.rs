//! The filtered model list: the upstream's OpenAI model list (`GET [routing] models_path`),
//! collected and cut down to the models this caller may use right now (decided per model
//! in `request_filter`); too large or unreadable, an empty list (fail closed).
//!
//! Works on bytes and a set of allowed names only: it must not decide anything itself, nor
//! touch any body but a model list's.

use bytes::{Bytes, BytesMut};

/// The largest model list read back from the upstream for filtering; a larger one is
/// replaced by an empty list (fail closed).
pub const MAX_LISTING_BYTES: usize = 1 << 20;

/// Collects one chunk of the upstream's model list into `collected` (emptying `body`); at
/// the end of the stream, puts the filtered list back into `body`. `allowed` is the set of
/// models (bit `i` = model `i`) the caller may use; a list over [`MAX_LISTING_BYTES`] clears
/// it (fail closed). `names` are the configured models' names, in order.
#[inline]
pub fn collect<'a>(
    collected: &mut BytesMut,
    allowed: &mut u64,
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    names: impl Iterator<Item = &'a str> + Clone,
) {
    if let Some(chunk) = body.take() {
        if collected.len() + chunk.len() <= MAX_LISTING_BYTES {
            collected.extend_from_slice(&chunk);
        } else {
            // Too large to filter: keep nothing, answer an empty list (fail closed).
            collected.clear();
            *allowed = 0;
        }
    }
    if end_of_stream {
        let allowed = *allowed;
        *body = Some(filter_model_list(collected, |id| {
            names
                .clone()
                .enumerate()
                .any(|(i, name)| allowed & (1 << i) != 0 && name == id)
        }));
    }
}

/// An OpenAI model list (`{"object": "list", "data": [{"id": ...}, ...]}`) with only the
/// entries whose `id` is `allowed`. Anything else becomes an empty list (fail closed).
pub fn filter_model_list(body: &[u8], allowed: impl Fn(&str) -> bool) -> Bytes {
    const EMPTY: &[u8] = b"{\"object\":\"list\",\"data\":[]}";
    let Ok(mut list) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Bytes::from_static(EMPTY);
    };
    let Some(data) = list.get_mut("data").and_then(|d| d.as_array_mut()) else {
        return Bytes::from_static(EMPTY);
    };
    data.retain(|e| e.get("id").and_then(|i| i.as_str()).is_some_and(&allowed));
    serde_json::to_vec(&list).map_or(Bytes::from_static(EMPTY), Bytes::from)
}

#[cfg(test)]
mod tests;
