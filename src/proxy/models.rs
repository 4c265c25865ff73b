//! The filtered model list: the upstream's answer to a model-list door (OpenAI
//! `/v1/models`, KServe `/v2/models`, Ollama `/api/tags`, Triton's repository index, in
//! the [`ListShape`] its profile names), collected and cut down to the models this caller
//! may use right now (decided per model in `request_filter`); too large or unreadable, an
//! empty list (fail closed).
//!
//! Works on bytes and a set of allowed names only: it must not decide anything itself, nor
//! touch any body but a model list's.

use bytes::{Bytes, BytesMut};

use crate::proxy::routing::profiles::ListShape;

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
    collect_shaped(
        collected,
        allowed,
        body,
        end_of_stream,
        names,
        ListShape::OpenAi,
    )
}

/// As [`collect`], for a list of the given shape.
#[inline]
pub fn collect_shaped<'a>(
    collected: &mut BytesMut,
    allowed: &mut u64,
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    names: impl Iterator<Item = &'a str> + Clone,
    shape: ListShape,
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
        *body = Some(filter_list(collected, shape, |id| {
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
    filter_list(body, ListShape::OpenAi, allowed)
}

/// A model list of this shape with only the entries that name an `allowed` model (an
/// Ollama name also without its default `:latest` tag). Anything else becomes an empty
/// list of the shape (fail closed).
pub fn filter_list(body: &[u8], shape: ListShape, allowed: impl Fn(&str) -> bool) -> Bytes {
    let empty: &'static [u8] = match shape {
        ListShape::OpenAi => b"{\"object\":\"list\",\"data\":[]}",
        ListShape::Names | ListShape::Ollama => b"{\"models\":[]}",
        ListShape::Triton => b"[]",
    };
    let Ok(mut list) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Bytes::from_static(empty);
    };
    let entries = match shape {
        ListShape::OpenAi => list.get_mut("data").and_then(|d| d.as_array_mut()),
        ListShape::Names | ListShape::Ollama => {
            list.get_mut("models").and_then(|d| d.as_array_mut())
        }
        ListShape::Triton => list.as_array_mut(),
    };
    let Some(entries) = entries else {
        return Bytes::from_static(empty);
    };
    let ollama = |n: &str| allowed(n) || n.strip_suffix(":latest").is_some_and(&allowed);
    entries.retain(|e| match shape {
        ListShape::OpenAi => e.get("id").and_then(|i| i.as_str()).is_some_and(&allowed),
        ListShape::Names => e.as_str().is_some_and(&allowed),
        ListShape::Triton => e.get("name").and_then(|i| i.as_str()).is_some_and(&allowed),
        // Both names must be allowed when both are given.
        ListShape::Ollama => {
            let name = e.get("name").and_then(|i| i.as_str());
            let model = e.get("model").and_then(|i| i.as_str());
            (name.is_some() || model.is_some())
                && name.is_none_or(ollama)
                && model.is_none_or(ollama)
        }
    });
    serde_json::to_vec(&list).map_or(Bytes::from_static(empty), Bytes::from)
}

#[cfg(test)]
mod tests;
