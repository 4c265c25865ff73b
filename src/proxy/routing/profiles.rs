//! Route profiles: the doors of each model-server API provgate knows (`[upstream] api`), as
//! static tables written from each server's own source (see the README's profile tables):
//! every route's methods, its path pattern, its class (inference, model list, model-free,
//! management) and where it names its model; and the one matcher that compares a
//! canonical path with a pattern.
//!
//! A leaf: data and pure functions only. It must not import anything from the crate (the
//! config reads it), nor allocate when matching.

/// Method bits: a route lists the methods it answers as a set.
pub const GET: u8 = 1;
pub const HEAD: u8 = 2;
pub const POST: u8 = 4;
pub const PUT: u8 = 8;
pub const DELETE: u8 = 16;
pub const PATCH: u8 = 32;

/// The bit of one request method (0: a method no route lists).
#[inline]
pub fn method_bit(m: &http::Method) -> u8 {
    match *m {
        http::Method::GET => GET,
        http::Method::POST => POST,
        http::Method::HEAD => HEAD,
        http::Method::PUT => PUT,
        http::Method::DELETE => DELETE,
        http::Method::PATCH => PATCH,
        _ => 0,
    }
}

/// The method bits named in config (`"GET"`, `"POST"`, ...), or `None`.
pub fn parse_method(s: &str) -> Option<u8> {
    Some(match s {
        "GET" => GET,
        "HEAD" => HEAD,
        "POST" => POST,
        "PUT" => PUT,
        "DELETE" => DELETE,
        "PATCH" => PATCH,
        _ => return None,
    })
}

pub use crate::upstream::Api;

/// The route tables live here, beside the routes; the enum itself is `[upstream] api`'s.
impl Api {
    /// This API's routes, in match order (a more specific pattern before a general one).
    pub const fn routes(self) -> &'static [Route] {
        match self {
            Api::Openai => OPENAI,
            Api::KserveV1 => KSERVE_V1,
            Api::KserveV2 => KSERVE_V2,
            Api::Triton => TRITON,
            Api::Ollama => OLLAMA,
            Api::Vllm => VLLM,
            Api::Tgi => TGI,
        }
    }
}

/// How a model list answers: which field of which entries carries a model name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListShape {
    /// OpenAI: `{"data": [{"id": NAME}, ...]}`.
    OpenAi,
    /// KServe: `{"models": [NAME, ...]}`.
    Names,
    /// Ollama: `{"models": [{"name": NAME, "model": NAME}, ...]}`.
    Ollama,
    /// Triton's repository index: `[{"name": NAME, ...}, ...]`.
    Triton,
}

/// What a route is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Runs a model: the model it names is checked.
    Inference,
    /// Lists models: allowed when the caller may use any model, the answer filtered to those.
    List(ListShape),
    /// Health, metadata, server information: allowed when the caller may use any model, or
    /// (when it names one) that model.
    Free,
    /// Changes the server (loads, unloads, pulls, deletes, profiles): refused unless
    /// `[[routing.allow]]` opens it to named callers.
    Manage,
}

/// A JSON body field that names a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// `model` (OpenAI, vLLM, Ollama).
    Model,
    /// `model`, where TGI reads the value `"tgi"` as "no adapter".
    TgiModel,
    /// Ollama's deprecated `name` (show, pull, push, create, delete).
    Name,
    /// Ollama copy's `source` and `destination`.
    Source,
    Destination,
    /// vLLM's runtime LoRA routes.
    LoraName,
    /// TGI's `parameters.adapter_id`.
    AdapterId,
}

impl Field {
    /// The top-level key this field is read from.
    pub const fn key(self) -> &'static str {
        match self {
            Field::Model | Field::TgiModel => "model",
            Field::Name => "name",
            Field::Source => "source",
            Field::Destination => "destination",
            Field::LoraName => "lora_name",
            Field::AdapterId => "parameters",
        }
    }
}

/// Where a route names its model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelAt {
    /// Nowhere.
    Nothing,
    /// The `{m}` segment of its path.
    Path,
    /// These fields of its JSON body (each one present is checked).
    Body(&'static [Field]),
}

/// One door.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Method bits.
    pub methods: u8,
    /// `/`-separated segments: a literal, `{m}` (the model), `{m}SUFFIX` (the model, then a
    /// literal suffix such as `:predict`), or `{*}` (any one non-empty segment).
    pub path: &'static str,
    pub class: Class,
    pub model: ModelAt,
}

/// Compares a canonical path with a pattern: `None` when it does not match, else the `{m}`
/// segment (if the pattern has one). Allocates nothing.
#[inline]
pub fn match_path<'p>(pattern: &str, path: &'p str) -> Option<Option<&'p str>> {
    match_path_at(pattern, pattern.find('{'), path)
}

/// As [`match_path`], with the pattern's first `{` found beforehand (`None`: a literal).
#[inline]
pub fn match_path_at<'p>(
    pattern: &str,
    brace: Option<usize>,
    path: &'p str,
) -> Option<Option<&'p str>> {
    let Some(brace) = brace else {
        return (pattern == path).then_some(None);
    };
    // The literal prefix up to the first parameter must match as it is.
    if !path.starts_with(&pattern[..brace]) {
        return None;
    }
    let mut model = None;
    let (mut pats, mut segs) = (Some(pattern), Some(path));
    loop {
        match (pats.map(segment), segs.map(segment)) {
            (None, None) => return Some(model),
            (Some((p, p_rest)), Some((s, s_rest))) => {
                if let Some(rest) = p.strip_prefix("{m}") {
                    let name = s.strip_suffix(rest)?;
                    if name.is_empty() {
                        return None;
                    }
                    model = Some(name);
                } else if p == "{*}" {
                    if s.is_empty() {
                        return None;
                    }
                } else if p != s {
                    return None;
                }
                (pats, segs) = (p_rest, s_rest);
            }
            _ => return None,
        }
    }
}

/// The first `/`-separated piece of `s` and what follows its `/` (as `str::split` yields
/// them), by a plain byte loop: segments are a few bytes long, shorter than a `memchr`
/// search takes to set up.
#[inline]
fn segment(s: &str) -> (&str, Option<&str>) {
    match s.bytes().position(|b| b == b'/') {
        // `i` is the index of an ASCII `/`: both sides are on character boundaries.
        Some(i) => (s.get(..i).unwrap_or(s), s.get(i + 1..)),
        None => (s, None),
    }
}

const fn r(methods: u8, path: &'static str, class: Class, model: ModelAt) -> Route {
    Route {
        methods,
        path,
        class,
        model,
    }
}

use Class::{Free, Inference as Inf, Manage as Mgmt};
use ModelAt::{Nothing, Path};

const MODEL: ModelAt = ModelAt::Body(&[Field::Model]);
const OLLAMA_NAME: ModelAt = ModelAt::Body(&[Field::Model, Field::Name]);
const OPENAI_LIST: Class = Class::List(ListShape::OpenAi);

/// OpenAI (official SDK): JSON routes only. The multipart ones (audio transcriptions and
/// translations, image edits and variations) are not listed: refused unless opened.
/// Stored responses (`/v1/responses/{id}`) name no model and are not listed either.
pub const OPENAI: &[Route] = &[
    r(POST, "/v1/chat/completions", Inf, MODEL),
    r(POST, "/v1/completions", Inf, MODEL),
    r(POST, "/v1/embeddings", Inf, MODEL),
    r(POST, "/v1/responses", Inf, MODEL),
    r(POST, "/v1/audio/speech", Inf, MODEL),
    r(POST, "/v1/images/generations", Inf, MODEL),
    r(POST, "/v1/moderations", Inf, MODEL),
    r(GET, "/v1/models", OPENAI_LIST, Nothing),
    r(GET, "/v1/models/{m}", Free, Path),
    r(DELETE, "/v1/models/{m}", Mgmt, Path),
];

/// KServe ModelServer, V1 protocol, with its OpenAI routes under `/openai`.
pub const KSERVE_V1: &[Route] = &[
    r(GET, "/", Free, Nothing),
    r(GET, "/metrics", Free, Nothing),
    r(GET, "/v1/models", Class::List(ListShape::Names), Nothing),
    r(GET, "/v1/models/{m}", Free, Path),
    r(POST, "/v1/models/{m}:predict", Inf, Path),
    r(POST, "/v1/models/{m}:explain", Inf, Path),
    r(POST, "/openai/v1/completions", Inf, MODEL),
    r(POST, "/openai/v1/chat/completions", Inf, MODEL),
    r(POST, "/openai/v1/embeddings", Inf, MODEL),
    r(POST, "/openai/v1/rerank", Inf, MODEL),
    r(GET, "/openai/v1/models", OPENAI_LIST, Nothing),
    r(GET, "/openai/v1/models/{m}", Free, Path),
];

/// Open Inference Protocol v2 as KServe 0.21 serves it, with its repository extension.
pub const KSERVE_V2: &[Route] = &[
    r(GET, "/v2", Free, Nothing),
    r(GET, "/v2/health/live", Free, Nothing),
    r(GET, "/v2/health/ready", Free, Nothing),
    r(GET, "/v2/models", Class::List(ListShape::Names), Nothing),
    r(GET, "/v2/models/{m}", Free, Path),
    r(GET, "/v2/models/{m}/ready", Free, Path),
    r(POST, "/v2/models/{m}/infer", Inf, Path),
    r(GET, "/v2/models/{m}/versions/{*}", Free, Path),
    r(GET, "/v2/models/{m}/versions/{*}/ready", Free, Path),
    r(POST, "/v2/models/{m}/versions/{*}/infer", Inf, Path),
    r(POST, "/v2/repository/models/{m}/load", Mgmt, Path),
    r(POST, "/v2/repository/models/{m}/unload", Mgmt, Path),
];

/// Triton's HTTP/REST API: KServe v2 and its extensions. `/v2/models/stats` is matched
/// before `/v2/models/{m}`, as Triton does.
pub const TRITON: &[Route] = &[
    r(GET, "/v2", Free, Nothing),
    r(GET, "/v2/health/live", Free, Nothing),
    r(GET, "/v2/health/ready", Free, Nothing),
    r(GET, "/v2/models/stats", Free, Nothing),
    r(GET, "/v2/models/{m}", Free, Path),
    r(GET, "/v2/models/{m}/ready", Free, Path),
    r(GET, "/v2/models/{m}/config", Free, Path),
    r(GET, "/v2/models/{m}/stats", Free, Path),
    r(POST, "/v2/models/{m}/infer", Inf, Path),
    r(POST, "/v2/models/{m}/generate", Inf, Path),
    r(POST, "/v2/models/{m}/generate_stream", Inf, Path),
    r(GET, "/v2/models/{m}/versions/{*}", Free, Path),
    r(GET, "/v2/models/{m}/versions/{*}/ready", Free, Path),
    r(GET, "/v2/models/{m}/versions/{*}/config", Free, Path),
    r(GET, "/v2/models/{m}/versions/{*}/stats", Free, Path),
    r(POST, "/v2/models/{m}/versions/{*}/infer", Inf, Path),
    r(POST, "/v2/models/{m}/versions/{*}/generate", Inf, Path),
    r(
        POST,
        "/v2/models/{m}/versions/{*}/generate_stream",
        Inf,
        Path,
    ),
    r(GET, "/v2/models/{m}/trace/setting", Free, Path),
    r(POST, "/v2/models/{m}/trace/setting", Mgmt, Path),
    r(GET, "/v2/trace/setting", Free, Nothing),
    r(POST, "/v2/trace/setting", Mgmt, Nothing),
    r(GET, "/v2/logging", Free, Nothing),
    r(POST, "/v2/logging", Mgmt, Nothing),
    r(
        POST,
        "/v2/repository/index",
        Class::List(ListShape::Triton),
        Nothing,
    ),
    r(
        POST,
        "/v2/repository/{*}/index",
        Class::List(ListShape::Triton),
        Nothing,
    ),
    r(POST, "/v2/repository/models/{m}/load", Mgmt, Path),
    r(POST, "/v2/repository/models/{m}/unload", Mgmt, Path),
    r(POST, "/v2/repository/{*}/models/{m}/load", Mgmt, Path),
    r(POST, "/v2/repository/{*}/models/{m}/unload", Mgmt, Path),
    r(GET, "/v2/systemsharedmemory/status", Free, Nothing),
    r(
        GET,
        "/v2/systemsharedmemory/region/{*}/status",
        Free,
        Nothing,
    ),
    r(
        POST,
        "/v2/systemsharedmemory/region/{*}/register",
        Mgmt,
        Nothing,
    ),
    r(POST, "/v2/systemsharedmemory/unregister", Mgmt, Nothing),
    r(
        POST,
        "/v2/systemsharedmemory/region/{*}/unregister",
        Mgmt,
        Nothing,
    ),
    r(GET, "/v2/cudasharedmemory/status", Free, Nothing),
    r(GET, "/v2/cudasharedmemory/region/{*}/status", Free, Nothing),
    r(
        POST,
        "/v2/cudasharedmemory/region/{*}/register",
        Mgmt,
        Nothing,
    ),
    r(POST, "/v2/cudasharedmemory/unregister", Mgmt, Nothing),
    r(
        POST,
        "/v2/cudasharedmemory/region/{*}/unregister",
        Mgmt,
        Nothing,
    ),
];

/// Ollama (`server/routes.go`), with its OpenAI and Anthropic compatibility routes.
/// `/api/ps` lists the running models and is filtered like `/api/tags`.
pub const OLLAMA: &[Route] = &[
    r(GET | HEAD, "/", Free, Nothing),
    r(GET | HEAD, "/api/version", Free, Nothing),
    r(GET, "/api/status", Free, Nothing),
    r(POST, "/api/generate", Inf, MODEL),
    r(POST, "/api/chat", Inf, MODEL),
    r(POST, "/api/embed", Inf, MODEL),
    r(POST, "/api/embeddings", Inf, MODEL),
    r(POST, "/api/show", Free, OLLAMA_NAME),
    r(GET, "/api/ps", Class::List(ListShape::Ollama), Nothing),
    r(
        GET | HEAD,
        "/api/tags",
        Class::List(ListShape::Ollama),
        Nothing,
    ),
    r(POST, "/api/pull", Mgmt, OLLAMA_NAME),
    r(POST, "/api/push", Mgmt, OLLAMA_NAME),
    r(POST, "/api/create", Mgmt, OLLAMA_NAME),
    r(
        POST,
        "/api/copy",
        Mgmt,
        ModelAt::Body(&[Field::Source, Field::Destination]),
    ),
    r(DELETE, "/api/delete", Mgmt, OLLAMA_NAME),
    r(HEAD | POST, "/api/blobs/{*}", Mgmt, Nothing),
    r(POST, "/api/me", Mgmt, Nothing),
    r(POST, "/api/signout", Mgmt, Nothing),
    r(DELETE, "/api/user/keys/{*}", Mgmt, Nothing),
    r(POST, "/api/experimental/web_search", Mgmt, Nothing),
    r(POST, "/api/experimental/web_fetch", Mgmt, Nothing),
    r(
        GET,
        "/api/experimental/model-recommendations",
        Free,
        Nothing,
    ),
    r(POST, "/v1/chat/completions", Inf, MODEL),
    r(POST, "/v1/completions", Inf, MODEL),
    r(POST, "/v1/embeddings", Inf, MODEL),
    r(POST, "/v1/responses", Inf, MODEL),
    r(POST, "/v1/messages", Inf, MODEL),
    r(GET, "/v1/models", OPENAI_LIST, Nothing),
    r(GET, "/v1/models/{m}", Free, Path),
];

/// vLLM 0.33 (`register_api_routers`): a LoRA adapter is named in `model`. Dev-mode,
/// profiler, RL and elastic-EP routes are management. SageMaker's `/invocations` is not
/// listed: its `inject_adapter_id` can write an adapter id from outside the body into `model`.
pub const VLLM: &[Route] = &[
    r(POST, "/v1/chat/completions", Inf, MODEL),
    r(POST, "/v1/completions", Inf, MODEL),
    r(POST, "/v1/responses", Inf, MODEL),
    r(POST, "/v1/messages", Inf, MODEL),
    r(POST, "/v1/messages/count_tokens", Inf, MODEL),
    r(POST, "/v1/embeddings", Inf, MODEL),
    r(POST, "/v2/embed", Inf, MODEL),
    r(POST, "/pooling", Inf, MODEL),
    r(POST, "/classify", Inf, MODEL),
    r(POST, "/score", Inf, MODEL),
    r(POST, "/v1/score", Inf, MODEL),
    r(POST, "/rerank", Inf, MODEL),
    r(POST, "/v1/rerank", Inf, MODEL),
    r(POST, "/v2/rerank", Inf, MODEL),
    r(POST, "/tokenize", Inf, MODEL),
    r(POST, "/detokenize", Inf, MODEL),
    r(GET, "/v1/models", OPENAI_LIST, Nothing),
    r(GET, "/health", Free, Nothing),
    r(GET | POST, "/ping", Free, Nothing),
    r(GET, "/version", Free, Nothing),
    r(GET, "/load", Free, Nothing),
    r(GET, "/metrics", Free, Nothing),
    r(GET, "/tokenizer_info", Free, Nothing),
    r(GET, "/is_sleeping", Free, Nothing),
    r(GET, "/is_paused", Free, Nothing),
    r(
        POST,
        "/v1/load_lora_adapter",
        Mgmt,
        ModelAt::Body(&[Field::LoraName]),
    ),
    r(
        POST,
        "/v1/unload_lora_adapter",
        Mgmt,
        ModelAt::Body(&[Field::LoraName]),
    ),
    r(POST, "/start_profile", Mgmt, Nothing),
    r(POST, "/stop_profile", Mgmt, Nothing),
    r(POST, "/sleep", Mgmt, Nothing),
    r(POST, "/wake_up", Mgmt, Nothing),
    r(POST, "/release_kv_cache_memory", Mgmt, Nothing),
    r(POST, "/reset_prefix_cache", Mgmt, Nothing),
    r(POST, "/reset_mm_cache", Mgmt, Nothing),
    r(POST, "/reset_encoder_cache", Mgmt, Nothing),
    r(POST, "/collective_rpc", Mgmt, Nothing),
    r(GET, "/server_info", Mgmt, Nothing),
    r(POST, "/pause", Mgmt, Nothing),
    r(POST, "/resume", Mgmt, Nothing),
    r(POST, "/abort_requests", Mgmt, Nothing),
    r(POST, "/scale_elastic_ep", Mgmt, Nothing),
    r(POST, "/fault_tolerance/apply", Mgmt, Nothing),
];

const TGI_ADAPTER: ModelAt = ModelAt::Body(&[Field::AdapterId]);
const TGI_OPENAI: ModelAt = ModelAt::Body(&[Field::TgiModel]);

/// Hugging Face TGI 3.3 (`router/src/server.rs`): one base model; a LoRA adapter is named
/// by `parameters.adapter_id`, or by an OpenAI route's `model` (other than `"tgi"`).
/// `/vertex` (adapters per instance) is not listed.
pub const TGI: &[Route] = &[
    r(GET, "/", Free, Nothing),
    r(POST, "/", Inf, TGI_ADAPTER),
    r(POST, "/generate", Inf, TGI_ADAPTER),
    r(POST, "/generate_stream", Inf, TGI_ADAPTER),
    r(POST, "/v1/chat/completions", Inf, TGI_OPENAI),
    r(POST, "/v1/completions", Inf, TGI_OPENAI),
    r(
        POST,
        "/invocations",
        Inf,
        ModelAt::Body(&[Field::TgiModel, Field::AdapterId]),
    ),
    r(POST, "/tokenize", Inf, TGI_ADAPTER),
    r(POST, "/chat_tokenize", Free, Nothing),
    r(GET, "/info", Free, Nothing),
    r(GET, "/health", Free, Nothing),
    r(GET, "/ping", Free, Nothing),
    r(GET, "/metrics", Free, Nothing),
    r(GET, "/v1/models", OPENAI_LIST, Nothing),
];

#[cfg(test)]
mod tests;
