//! The `[routing]` section: how requests name their model and which doors are open. Its
//! file struct and defaults, its slice of validation (errors pushed, with their key path,
//! into the list the top-level config gathers) and the validated [`Routing`] the request
//! path reads: the door table compiled from the `[upstream] api` profiles (plus any
//! `openai_paths` and `models_path` of older configs) and the `[[routing.allow]]` rules.
//!
//! A leaf but for `profiles` (itself a leaf): it imports nothing else from the crate, so
//! the top-level config can call it without importing the request path back.

use std::borrow::Cow;

use serde::Deserialize;

use super::profiles::{
    match_path, match_path_at, parse_method, Api, Class, Field, ListShape, ModelAt, Route, GET,
    POST,
};

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
    /// Routes opened to named callers (`[[routing.allow]]`): management routes, or routes
    /// no profile lists. Every call through one is audited with its caller.
    #[serde(default)]
    pub allow: Vec<AllowFile>,
}

/// One `[[routing.allow]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowFile {
    /// The route, as the profiles write it: literal segments, `{m}` or `{*}` for any one
    /// segment (e.g. `/v2/repository/models/{m}/load`). Matched on the canonical path.
    pub route: String,
    /// The methods it is open to (`GET`, `POST`, ...).
    pub methods: Vec<String>,
    /// The callers it is open to: `sub` values, with a trailing `*` for a prefix.
    pub callers: Vec<String>,
    /// The issuer those callers' tokens must come from (default: any configured issuer).
    #[serde(default)]
    pub issuer: Option<String>,
}

impl Default for RoutingFile {
    fn default() -> Self {
        RoutingFile {
            openai_paths: default_openai_paths(),
            max_body_bytes: default_max_body(),
            max_held_body_bytes: default_max_held_body(),
            max_held_total_bytes: default_max_held_total(),
            models_path: default_models_path(),
            allow: Vec::new(),
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

/// One door of the model server, as compiled for this sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Door {
    pub methods: u8,
    pub path: Cow<'static, str>,
    /// Where `path`'s first parameter starts (`None`: a literal path), found once.
    pub brace: Option<usize>,
    /// How many segments `path` has (its `/`s, saturating): a path matches only a pattern
    /// with as many, so most doors are passed over on one comparison.
    pub segments: u8,
    pub class: Class,
    pub model: ModelAt,
}

impl Door {
    /// The body fields that name this door's model, when its model is checked (inference
    /// and model-free routes; a management route's names are not read).
    #[inline]
    pub fn body_fields(&self) -> &'static [Field] {
        match (self.class, self.model) {
            (Class::Inference | Class::Free, ModelAt::Body(f)) => f,
            _ => &[],
        }
    }
}

/// A route opened to named callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    pub route: String,
    pub methods: u8,
    pub callers: Vec<String>,
    pub issuer: Option<String>,
}

/// What the door table says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found<'p> {
    /// A listed door (its index), with the model its path names.
    Door(usize, Option<&'p str>),
    /// No listed door for this method and path.
    Unlisted,
}

/// How requests name their model, and which doors there are.
#[derive(Debug, Clone)]
pub struct Routing {
    pub openai_paths: Vec<String>,
    pub max_body_bytes: usize,
    pub max_held_body_bytes: usize,
    pub max_held_total_bytes: usize,
    pub models_path: Option<String>,
    /// Every listed door, in match order.
    pub doors: Vec<Door>,
    pub allow: Vec<AllowRule>,
}

impl Routing {
    /// The door a request (method bit, canonical path) goes through. Comparisons only.
    #[inline]
    pub fn find<'p>(&self, method: u8, path: &'p str) -> Found<'p> {
        let segments = segments(path);
        for (i, d) in self.doors.iter().enumerate() {
            if d.methods & method == 0 || d.segments != segments {
                continue;
            }
            if let Some(model) = match_path_at(&d.path, d.brace, path) {
                return Found::Door(i, model);
            }
        }
        Found::Unlisted
    }

    /// The `[[routing.allow]]` rule that opens this request's route, if any.
    pub fn opened(&self, method: u8, path: &str) -> Option<&AllowRule> {
        self.allow
            .iter()
            .find(|r| r.methods & method != 0 && match_path(&r.route, path).is_some())
    }
}

/// A path's segment count as doors store it. Every pattern's `{m}`, `{*}` or literal
/// segment matches exactly one segment of the path, so equal counts are necessary for a
/// match. A count past 255 saturates: no pattern has that many, so such a path is unlisted.
#[inline]
fn segments(path: &str) -> u8 {
    let n = path.bytes().filter(|&b| b == b'/').count();
    u8::try_from(n).unwrap_or(u8::MAX)
}

/// The doors of these profiles, in order, each (method, path) once; then any extra
/// `openai_paths` (POST, `model` in the body) and `models_path` (an OpenAI list).
pub fn compile_doors(
    apis: &[Api],
    openai_paths: &[String],
    models_path: Option<&str>,
) -> Vec<Door> {
    let mut doors: Vec<Door> = Vec::new();
    let mut add = |methods: u8, path: Cow<'static, str>, class: Class, model: ModelAt| {
        let mut methods = methods;
        for d in &doors {
            if d.path == path {
                methods &= !d.methods;
            }
        }
        if methods != 0 {
            doors.push(Door {
                methods,
                brace: path.find('{'),
                segments: segments(&path),
                path,
                class,
                model,
            });
        }
    };
    for api in apis {
        for &Route {
            methods,
            path,
            class,
            model,
        } in api.routes()
        {
            add(methods, Cow::Borrowed(path), class, model);
        }
    }
    for p in openai_paths {
        add(
            POST,
            Cow::Owned(p.clone()),
            Class::Inference,
            ModelAt::Body(&[Field::Model]),
        );
    }
    if let Some(p) = models_path {
        add(
            GET,
            Cow::Owned(p.to_string()),
            Class::List(ListShape::OpenAi),
            ModelAt::Nothing,
        );
    }
    doors
}

impl RoutingFile {
    /// Checks the section, pushing each problem (with its key path) onto `errors`, and
    /// returns the validated value; the caller refuses the whole file if `errors` is not
    /// empty.
    pub fn validate(self, apis: &[Api], errors: &mut Vec<String>) -> Routing {
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
        let mut allow = Vec::new();
        for (i, a) in self.allow.into_iter().enumerate() {
            if !a.route.starts_with('/') {
                errors.push(format!(
                    "routing.allow[{i}].route: {:?} must start with /",
                    a.route
                ));
            }
            let mut methods = 0;
            for m in &a.methods {
                match parse_method(m) {
                    Some(b) => methods |= b,
                    None => errors.push(format!(
                        "routing.allow[{i}].methods: unknown method {m:?} (GET, HEAD, POST, PUT, DELETE, PATCH)"
                    )),
                }
            }
            if a.methods.is_empty() {
                errors.push(format!("routing.allow[{i}].methods: name at least one"));
            }
            if a.callers.is_empty() || a.callers.iter().any(|c| c.is_empty() || c == "*") {
                errors.push(format!(
                    "routing.allow[{i}].callers: name the callers (no empty list, no bare *)"
                ));
            }
            allow.push(AllowRule {
                route: a.route,
                methods,
                callers: a.callers,
                issuer: a.issuer,
            });
        }
        let models_path = Some(self.models_path).filter(|p| !p.is_empty());
        let doors = compile_doors(apis, &self.openai_paths, models_path.as_deref());
        Routing {
            doors,
            allow,
            openai_paths: self.openai_paths,
            max_body_bytes: self.max_body_bytes,
            max_held_body_bytes: self.max_held_body_bytes,
            max_held_total_bytes: self.max_held_total_bytes,
            models_path,
        }
    }
}

#[cfg(test)]
mod tests;
