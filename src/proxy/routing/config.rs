//! The `[routing]` section: how requests name their model. Its file struct and defaults,
//! its slice of validation (errors pushed, with their key path, into the list the
//! top-level config gathers) and the validated [`Routing`] the request path reads.
//!
//! A leaf: it imports nothing from the crate, so the top-level config can call it without
//! importing the request path back.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingFile {
    /// POST paths whose JSON body names the model in its `model` field (the OpenAI API).
    /// Their bodies are read (up to `max_body_bytes`) before the decision and forwarded
    /// unchanged. An empty list turns body inspection off.
    #[serde(default = "default_openai_paths")]
    pub openai_paths: Vec<String>,
    /// The largest body read to find `model`; a larger one is refused with 413. At most
    /// 65536: pingora 0.9 can replay at most 64 KiB of a body it has already read.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// On a single-model sidecar, a body declared larger than `max_body_bytes` (by its
    /// Content-Length) and at most this large is held back until it is whole, checked, and
    /// only then sent upstream; a larger one is refused with 413. 0: refuse them all.
    #[serde(default = "default_max_held_body")]
    pub max_held_body_bytes: usize,
    /// All bodies held back at once, together: past it, a body that would be held is
    /// refused with 413, so callers cannot make the sidecar hold unbounded memory.
    #[serde(default = "default_max_held_total")]
    pub max_held_total_bytes: usize,
    /// The OpenAI model list (`GET`): its `data` is filtered to the models this caller may
    /// use right now. Empty: no filtering.
    #[serde(default = "default_models_path")]
    pub models_path: String,
}

impl Default for RoutingFile {
    fn default() -> Self {
        RoutingFile {
            openai_paths: default_openai_paths(),
            max_body_bytes: default_max_body(),
            max_held_body_bytes: default_max_held_body(),
            max_held_total_bytes: default_max_held_total(),
            models_path: default_models_path(),
        }
    }
}

/// pingora 0.9 keeps at most this much of a request body for replay (`BODY_BUF_LIMIT`).
pub const MAX_INSPECTED_BODY: usize = 64 * 1024;

/// The largest `routing.max_held_body_bytes`.
pub const MAX_HELD_BODY: usize = 256 << 20;

fn default_openai_paths() -> Vec<String> {
    ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
        .map(String::from)
        .to_vec()
}
fn default_max_body() -> usize {
    MAX_INSPECTED_BODY
}
fn default_max_held_body() -> usize {
    8 << 20
}
fn default_max_held_total() -> usize {
    64 << 20
}
fn default_models_path() -> String {
    "/v1/models".into()
}

/// How requests name their model.
#[derive(Debug, Clone)]
pub struct Routing {
    pub openai_paths: Vec<String>,
    pub max_body_bytes: usize,
    pub max_held_body_bytes: usize,
    pub max_held_total_bytes: usize,
    pub models_path: Option<String>,
}

impl RoutingFile {
    /// Checks the section, pushing each problem (with its key path) onto `errors`, and
    /// returns the validated value; the caller refuses the whole file if `errors` is not
    /// empty.
    pub fn validate(self, errors: &mut Vec<String>) -> Routing {
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_INSPECTED_BODY {
            errors.push(format!(
                "routing.max_body_bytes: must be between 1 and {MAX_INSPECTED_BODY} (pingora replays at most 64 KiB of a body read before the decision)"
            ));
        }
        if self.max_held_body_bytes > MAX_HELD_BODY {
            errors.push(format!(
                "routing.max_held_body_bytes: at most {MAX_HELD_BODY} (each request holding a body keeps it in memory)"
            ));
        }
        if self.max_held_total_bytes < self.max_held_body_bytes {
            errors.push(
                "routing.max_held_total_bytes: must be at least routing.max_held_body_bytes".into(),
            );
        }
        for (i, p) in self.openai_paths.iter().enumerate() {
            if !p.starts_with('/') {
                errors.push(format!(
                    "routing.openai_paths[{i}]: {p:?} must start with /"
                ));
            }
        }
        if !self.models_path.is_empty() && !self.models_path.starts_with('/') {
            errors.push(format!(
                "routing.models_path: {:?} must start with / (or be empty)",
                self.models_path
            ));
        }
        Routing {
            openai_paths: self.openai_paths,
            max_body_bytes: self.max_body_bytes,
            max_held_body_bytes: self.max_held_body_bytes,
            max_held_total_bytes: self.max_held_total_bytes,
            models_path: Some(self.models_path).filter(|p| !p.is_empty()),
        }
    }
}

#[cfg(test)]
mod tests;
