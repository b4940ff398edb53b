//! The OpenAI-compatible front door: `POST /v1/chat/completions`, `POST /v1/completions`,
//! `GET /v1/models`, `GET /health`, over the same [`GuardServer`] as the gRPC API (its
//! validation, admission, deadlines and errors), so an application built on an OpenAI SDK
//! switches to guarded generation by changing its base URL.
//!
//! Standard fields map onto [`pb::SearchParams`] (`max_tokens`/`max_completion_tokens`,
//! `temperature`, `top_p`, `seed`); the guard's own parameters travel in an `inferenceguard`
//! object (SDKs send it with `extra_body`), with the names of `SearchParams` plus `method`,
//! `cost_model`, `reward_model` and `critic`. Fields the guard cannot honour (`n` > 1, `stop`,
//! `tools`, `logprobs`, `response_format` other than text, penalties, `logit_bias`) are a 400
//! naming the field, never silently dropped.
//!
//! Streaming (`stream: true`) releases no text before the search has chosen and scored the
//! answer: while it searches, SSE comments (`: step 3 ...`) keep the connection alive and
//! show progress; then the chosen answer goes out in `chat.completion.chunk`s, and
//! `data: [DONE]`. A client that disconnects cancels the search.

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use ig_proto::v1 as pb;
use ig_proto::v1::guard_service_server::GuardService;
use serde::Deserialize;
use serde_json::{json, Value};
use tonic::Code;
use tonic_types::StatusExt;

use crate::auth::TokenAuth;
use crate::guard::GuardServer;
use crate::search::Method;

/// Largest request body, in bytes (a chat of `max_chat_messages` messages of
/// `max_prompt_bytes` in all, with JSON around it).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// Characters of the answer per streamed chunk.
const STREAM_CHUNK_CHARS: usize = 32;

#[derive(Clone)]
struct Api {
    guard: GuardServer,
    auth: Option<TokenAuth>,
    max_body_bytes: usize,
}

/// The HTTP routes over `guard`, with `auth` (the gRPC API's token store) when tokens are
/// configured.
pub fn router(guard: GuardServer, auth: Option<TokenAuth>, max_body_bytes: usize) -> Router {
    let api = Api { guard, auth, max_body_bytes };
    Router::<Api>::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        // A larger body is refused while it is read; the handlers word that as a 413.
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(api)
}

/// An error in OpenAI's shape.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<String>,
    code: Option<String>,
}

impl ApiError {
    fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        let param = param.into();
        Self { status: StatusCode::BAD_REQUEST, kind: "invalid_request_error", message: format!("{param}: {}", message.into()), param: Some(param), code: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}});
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert("www-authenticate", axum::http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The HTTP face of a guard status: the code clients expect, the same message, and the
/// parameter in OpenAI's names.
fn from_status(status: &tonic::Status) -> ApiError {
    let (http, kind) = match status.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => (StatusCode::BAD_REQUEST, "invalid_request_error"),
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "authentication_error"),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "permission_error"),
        Code::NotFound => (StatusCode::NOT_FOUND, "not_found_error"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable_error"),
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "timeout_error"),
        Code::Cancelled => (StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST), "cancelled"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
    };
    let details = status.get_error_details();
    let field = details.bad_request().and_then(|b| b.field_violations.first()).map(|v| v.field.clone());
    let param = field.as_deref().map(openai_param);
    let mut message = status.message().to_string();
    if let (Some(f), Some(p)) = (&field, &param) {
        if let Some(rest) = message.strip_prefix(&format!("{f}: ")) {
            message = format!("{p}: {rest}");
        }
    }
    let code = details.error_info().map(|i| i.reason.to_lowercase());
    ApiError { status: http, kind, message, param, code }
}

/// A `GenerateRequest` field path in the names of the HTTP request.
fn openai_param(field: &str) -> String {
    match field {
        "params.max_new_tokens" => "max_tokens".into(),
        "params.temperature" => "temperature".into(),
        "params.top_p" => "top_p".into(),
        "params.seed" => "seed".into(),
        "policy_model" => "model".into(),
        "prompt_chat" | "prompt_chat.messages" => "messages".into(),
        "prompt_text" => "prompt".into(),
        f => match f.strip_prefix("params.") {
            Some(p) => format!("inferenceguard.{p}"),
            None => format!("inferenceguard.{f}"),
        },
    }
}

/// The guard's own parameters (`extra_body={"inferenceguard": {...}}`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GuardFields {
    method: Option<String>,
    cost_model: Option<String>,
    reward_model: Option<String>,
    critic: Option<String>,
    samples_count: Option<i32>,
    beam_width: Option<i32>,
    chunk_tokens: Option<i32>,
    max_resamples: Option<i32>,
    resample_penalty: Option<f32>,
    safety_budget: Option<f64>,
    unsafe_penalty: Option<f64>,
    lagrange_lambda: Option<f64>,
    args_top_k: Option<i32>,
    args_weight: Option<f64>,
    recontrol_steps: Option<i32>,
    recontrol_step_size: Option<f32>,
}

/// A message's content: a string, or text parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct MessageIn {
    role: String,
    content: Option<Content>,
}

/// `stop`: a string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// The fields of both endpoints' requests the guard reads or refuses (one struct, not a
/// flattened one: flattening loses the path of a field that fails to parse).
#[derive(Debug, Deserialize)]
struct Common {
    /// `/v1/chat/completions`.
    messages: Option<Vec<MessageIn>>,
    /// `/v1/completions`.
    prompt: Option<Value>,
    model: Option<String>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<i64>,
    n: Option<u32>,
    stop: Option<Stop>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    user: Option<String>,
    logprobs: Option<Value>,
    top_logprobs: Option<Value>,
    tools: Option<Value>,
    functions: Option<Value>,
    response_format: Option<Value>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    logit_bias: Option<Value>,
    inferenceguard: Option<GuardFields>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Parses a JSON body; errors name the field (`temperature`, `inferenceguard.samples_count`).
fn parse<T: serde::de::DeserializeOwned>(body: &[u8], limit: usize) -> Result<T, ApiError> {
    if body.len() > limit {
        return Err(too_large(body.len(), limit));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError { status: StatusCode::BAD_REQUEST, kind: "invalid_request_error", message: format!("the body is not valid JSON: {inner}"), param: None, code: None }
        } else if path == "." {
            ApiError::invalid("body", inner.to_string())
        } else {
            ApiError::invalid(path, inner.to_string())
        }
    })
}

fn too_large(got: usize, limit: usize) -> ApiError {
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        kind: "invalid_request_error",
        message: format!("body: at most {limit} bytes, got {got}"),
        param: None,
        code: Some("body_too_large".into()),
    }
}

impl Common {
    /// Refuses what the guard cannot honour, naming the field.
    fn check_supported(&self) -> Result<(), ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("n", "only 1 is supported (the guard returns its one chosen answer)"));
        }
        let stop_set = match &self.stop {
            None => false,
            Some(Stop::One(s)) => !s.is_empty(),
            Some(Stop::Many(v)) => !v.is_empty(),
        };
        if stop_set {
            return Err(ApiError::invalid("stop", "stop sequences are not supported: the answer is scored whole, as generated"));
        }
        let set = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null() && *v != Value::Bool(false));
        for (name, value) in [("logprobs", &self.logprobs), ("top_logprobs", &self.top_logprobs), ("tools", &self.tools), ("functions", &self.functions)] {
            if set(value) {
                return Err(ApiError::invalid(name, "not supported"));
            }
        }
        if self.logit_bias.as_ref().is_some_and(|v| v.as_object().is_some_and(|o| !o.is_empty())) {
            return Err(ApiError::invalid("logit_bias", "not supported"));
        }
        if let Some(f) = &self.response_format {
            if f.get("type").and_then(Value::as_str) != Some("text") {
                return Err(ApiError::invalid("response_format", "only {\"type\": \"text\"} is supported"));
            }
        }
        for (name, value) in [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)] {
            if value.is_some_and(|v| v != 0.0) {
                return Err(ApiError::invalid(name, "not supported (only 0)"));
            }
        }
        Ok(())
    }

    /// The gRPC request for `prompt`.
    fn request(self, prompt: pb::generate_request::Prompt) -> Result<pb::GenerateRequest, ApiError> {
        self.check_supported()?;
        let g = self.inferenceguard.unwrap_or_default();
        let method = match g.method.as_deref() {
            None => pb::Method::InferenceGuard,
            Some(name) => {
                let m = Method::ALL.iter().find(|m| m.name() == name).ok_or_else(|| {
                    let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
                    ApiError::invalid("inferenceguard.method", format!("unknown method {name:?}; one of {}", names.join(", ")))
                })?;
                crate::guard::wire_method(*m)
            }
        };
        let max_new_tokens = match (self.max_tokens, self.max_completion_tokens) {
            (Some(a), Some(b)) if a != b => return Err(ApiError::invalid("max_completion_tokens", format!("differs from max_tokens ({b} vs {a}); give one"))),
            (a, b) => a.or(b).map(|v| i32::try_from(v).unwrap_or(i32::MAX)),
        };
        if let Some(user) = &self.user {
            tracing::info!(user = %user, "OpenAI request");
        }
        Ok(pb::GenerateRequest {
            prompt: Some(prompt),
            method: method as i32,
            params: Some(pb::SearchParams {
                samples_count: g.samples_count,
                beam_width: g.beam_width,
                chunk_tokens: g.chunk_tokens,
                max_new_tokens,
                max_resamples: g.max_resamples,
                resample_penalty: g.resample_penalty,
                temperature: self.temperature,
                top_p: self.top_p,
                seed: self.seed,
                safety_budget: g.safety_budget,
                unsafe_penalty: g.unsafe_penalty,
                lagrange_lambda: g.lagrange_lambda,
                args_top_k: g.args_top_k,
                args_weight: g.args_weight,
                recontrol_steps: g.recontrol_steps,
                recontrol_step_size: g.recontrol_step_size,
            }),
            policy_model: self.model.unwrap_or_default(),
            cost_model: g.cost_model.unwrap_or_default(),
            reward_model: g.reward_model.unwrap_or_default(),
            critic: g.critic.unwrap_or_default(),
        })
    }
}

fn chat_prompt(messages: Vec<MessageIn>) -> Result<pb::generate_request::Prompt, ApiError> {
    let messages = messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, p) in parts.into_iter().enumerate() {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            (kind, _) => return Err(ApiError::invalid(format!("messages[{i}].content[{j}]"), format!("only text parts are supported, got {kind:?}"))),
                        }
                    }
                    text
                }
            };
            Ok(pb::ChatMessage { role: m.role, content })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(pb::generate_request::Prompt::PromptChat(pb::ChatPrompt { messages }))
}

fn text_prompt(prompt: Value) -> Result<pb::generate_request::Prompt, ApiError> {
    let text = match prompt {
        Value::String(s) => s,
        Value::Array(mut v) if v.len() == 1 && v[0].is_string() => v.remove(0).as_str().unwrap_or_default().to_string(),
        _ => return Err(ApiError::invalid("prompt", "a string (or a list of one string)")),
    };
    Ok(pb::generate_request::Prompt::PromptText(text))
}

impl Api {
    /// The caller, when tokens are configured.
    fn authenticate(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if let Some(auth) = &self.auth {
            auth.authenticate(headers.get("authorization").map(|v| v.as_bytes())).map_err(|why| ApiError {
                status: StatusCode::UNAUTHORIZED,
                kind: "authentication_error",
                message: why.into(),
                param: None,
                code: Some("invalid_api_key".into()),
            })?;
        }
        Ok(())
    }
}

/// Which endpoint answers, for the response objects.
#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Completion,
}

/// The body, or the refusal of one over the limit (413) or unreadable (400).
fn body_of(api: &Api, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "invalid_request_error",
            message: format!("body: at most {} bytes (max_message_bytes)", api.max_body_bytes),
            param: None,
            code: Some("body_too_large".into()),
        },
        _ => ApiError { status: StatusCode::BAD_REQUEST, kind: "invalid_request_error", message: format!("body: {rejection}"), param: None, code: None },
    })
}

async fn chat_completions(State(api): State<Api>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    handle(api, headers, body, Kind::Chat).await
}

async fn completions(State(api): State<Api>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    handle(api, headers, body, Kind::Completion).await
}

async fn handle(api: Api, headers: HeaderMap, body: Result<Bytes, BytesRejection>, kind: Kind) -> Response {
    let handled = async {
        api.authenticate(&headers)?;
        let body = body_of(&api, body)?;
        let mut req: Common = parse(&body, api.max_body_bytes)?;
        let prompt = match kind {
            Kind::Chat => chat_prompt(req.messages.take().ok_or_else(|| ApiError::invalid("messages", "required"))?)?,
            Kind::Completion => text_prompt(req.prompt.take().ok_or_else(|| ApiError::invalid("prompt", "required"))?)?,
        };
        answer(&api, req, prompt, kind).await
    };
    handled.await.unwrap_or_else(IntoResponse::into_response)
}

async fn answer(api: &Api, common: Common, prompt: pb::generate_request::Prompt, kind: Kind) -> Result<Response, ApiError> {
    let stream = common.stream;
    let include_usage = common.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let request = common.request(prompt)?;
    let id = format!("{}-{:016x}", if matches!(kind, Kind::Chat) { "chatcmpl" } else { "cmpl" }, rand_id());
    if !stream {
        // Dropped when the client disconnects: the search is cancelled with it.
        let reply = api.guard.generate(tonic::Request::new(request)).await.map_err(|s| from_status(&s))?;
        let result = reply.into_inner().result.ok_or_else(|| from_status(&tonic::Status::internal("the guard returned no result")))?;
        return Ok(Json(completion(&id, kind, &result)).into_response());
    }
    let events = api.guard.generate_stream(tonic::Request::new(pb::GenerateStreamRequest {
        prompt: request.prompt.map(|p| match p {
            pb::generate_request::Prompt::PromptText(t) => pb::generate_stream_request::Prompt::PromptText(t),
            pb::generate_request::Prompt::PromptChat(c) => pb::generate_stream_request::Prompt::PromptChat(c),
        }),
        method: request.method,
        params: request.params,
        policy_model: request.policy_model,
        cost_model: request.cost_model,
        reward_model: request.reward_model,
        critic: request.critic,
    }));
    // Errors found before the search starts (validation, admission, unknown models) are
    // still an HTTP status; later ones arrive as an SSE error event.
    let events = events.await.map_err(|s| from_status(&s))?.into_inner();
    Ok(Sse::new(sse(events, id, kind, include_usage)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

fn sse(
    events: impl Stream<Item = Result<pb::GenerateStreamResponse, tonic::Status>> + Send + 'static,
    id: String,
    kind: Kind,
    include_usage: bool,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    events.flat_map(move |event| {
        let out: Vec<Event> = match event {
            Ok(pb::GenerateStreamResponse { event: Some(pb::generate_stream_response::Event::Step(s)) }) => {
                // Progress, not text: nothing a later step could take back.
                let safe = s.safe_fraction.map_or_else(|| "-".to_string(), |f| format!("{f:.3}"));
                vec![Event::default().comment(format!("step {} candidates {} safe_fraction {safe}", s.step_index, s.candidate_count))]
            }
            Ok(pb::GenerateStreamResponse { event: Some(pb::generate_stream_response::Event::Result(r)) }) => {
                let mut out: Vec<Event> = chunks(&id, kind, &r, include_usage).into_iter().map(|c| Event::default().data(c.to_string())).collect();
                out.push(Event::default().data("[DONE]"));
                out
            }
            Ok(_) => vec![],
            Err(status) => {
                let e = from_status(&status);
                vec![Event::default().data(json!({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}}).to_string())]
            }
        };
        futures::stream::iter(out.into_iter().map(Ok))
    })
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn finish_reason(r: &pb::GenerationResult) -> &'static str {
    if r.finish_reason == pb::FinishReason::Stop as i32 {
        "stop"
    } else {
        "length"
    }
}

fn usage(r: &pb::GenerationResult) -> Value {
    let completion = r.token_ids.len() as i64;
    json!({
        "prompt_tokens": r.prompt_token_count,
        "completion_tokens": completion,
        "total_tokens": r.prompt_token_count as i64 + completion,
        // Every token the search drew, across all its candidates.
        "generated_tokens": r.generated_token_count,
    })
}

/// What the guard adds to a response: the answer's scores and how it was found.
fn guard_fields(r: &pb::GenerationResult) -> Value {
    let model = |m: &Option<pb::ModelRef>| m.as_ref().map(|m| json!({"name": m.name, "model_id": m.model_id}));
    let models = r.models.as_ref();
    let seconds = |ns: i64| ns as f64 / 1e9;
    let t = r.timings.unwrap_or_default();
    json!({
        "method": Method::ALL.iter().find(|m| crate::guard::wire_method(**m) as i32 == r.method).map(|m| m.name()),
        "cost": r.cost,
        "reward": r.reward,
        "safe": r.safe,
        "z": r.z,
        "min_z": r.min_z,
        "steps": r.step_count,
        "candidates": r.candidate_count,
        "models": {
            "policy": models.and_then(|m| model(&m.policy)),
            "cost": models.and_then(|m| model(&m.cost)),
            "reward": models.and_then(|m| model(&m.reward)),
            "critic": models.and_then(|m| model(&m.critic)),
        },
        "timings": {"policy_s": seconds(t.policy_ns), "cost_s": seconds(t.cost_ns), "reward_s": seconds(t.reward_ns), "critic_s": seconds(t.critic_ns), "total_s": seconds(t.total_ns)},
        "params": r.params.as_ref().map(|p| serde_json::to_value(search_params_json(p)).unwrap_or(Value::Null)),
    })
}

fn search_params_json(p: &pb::SearchParams) -> Value {
    json!({
        "samples_count": p.samples_count, "beam_width": p.beam_width, "chunk_tokens": p.chunk_tokens,
        "max_new_tokens": p.max_new_tokens, "max_resamples": p.max_resamples, "resample_penalty": p.resample_penalty,
        "temperature": p.temperature, "top_p": p.top_p, "seed": p.seed, "safety_budget": p.safety_budget,
        "unsafe_penalty": p.unsafe_penalty, "lagrange_lambda": p.lagrange_lambda, "args_top_k": p.args_top_k,
        "args_weight": p.args_weight, "recontrol_steps": p.recontrol_steps, "recontrol_step_size": p.recontrol_step_size,
    })
}

fn model_name(r: &pb::GenerationResult) -> String {
    r.models.as_ref().and_then(|m| m.policy.as_ref()).map(|p| p.name.clone()).unwrap_or_default()
}

fn completion(id: &str, kind: Kind, r: &pb::GenerationResult) -> Value {
    let choice = match kind {
        Kind::Chat => json!({"index": 0, "message": {"role": "assistant", "content": r.text}, "finish_reason": finish_reason(r), "logprobs": null}),
        Kind::Completion => json!({"index": 0, "text": r.text, "finish_reason": finish_reason(r), "logprobs": null}),
    };
    json!({
        "id": id,
        "object": match kind { Kind::Chat => "chat.completion", Kind::Completion => "text_completion" },
        "created": now(),
        "model": model_name(r),
        "choices": [choice],
        "usage": usage(r),
        "inferenceguard": guard_fields(r),
    })
}

/// The chosen answer as stream chunks: the role, the text in pieces, the finish reason
/// (with the guard's fields), and the usage when asked.
fn chunks(id: &str, kind: Kind, r: &pb::GenerationResult, include_usage: bool) -> Vec<Value> {
    let (object, created, model) = (match kind { Kind::Chat => "chat.completion.chunk", Kind::Completion => "text_completion" }, now(), model_name(r));
    let chunk = |choice: Value| json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]});
    let piece = |text: &str| match kind {
        Kind::Chat => json!({"index": 0, "delta": {"content": text}, "finish_reason": null}),
        Kind::Completion => json!({"index": 0, "text": text, "finish_reason": null}),
    };
    let mut out = Vec::new();
    if matches!(kind, Kind::Chat) {
        out.push(chunk(json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null})));
    }
    let chars: Vec<char> = r.text.chars().collect();
    for part in chars.chunks(STREAM_CHUNK_CHARS) {
        out.push(chunk(piece(&part.iter().collect::<String>())));
    }
    let mut last = chunk(match kind {
        Kind::Chat => json!({"index": 0, "delta": {}, "finish_reason": finish_reason(r)}),
        Kind::Completion => json!({"index": 0, "text": "", "finish_reason": finish_reason(r)}),
    });
    last["inferenceguard"] = guard_fields(r);
    out.push(last);
    if include_usage {
        let mut u = json!({"id": id, "object": object, "created": created, "model": model, "choices": []});
        u["usage"] = usage(r);
        out.push(u);
    }
    out
}

async fn models(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Err(e) = api.authenticate(&headers) {
        return e.into_response();
    }
    let all = api.guard.list(pb::ModelRole::Unspecified);
    let of = |role: pb::ModelRole| -> Vec<Value> {
        all.iter()
            .filter(|m| m.role == role as i32)
            .map(|m| json!({"name": m.name, "default": m.registry_default, "ready_replicas": m.ready_replica_count, "replicas": m.replica_count}))
            .collect()
    };
    let data: Vec<Value> = all
        .iter()
        .filter(|m| m.role == pb::ModelRole::Policy as i32)
        .map(|m| {
            json!({
                "id": m.name, "object": "model", "created": 0, "owned_by": "inferenceguard",
                "inferenceguard": {"default": m.registry_default, "ready_replicas": m.ready_replica_count, "replicas": m.replica_count},
            })
        })
        .collect();
    let l = api.guard.limits();
    Json(json!({
        "object": "list",
        "data": data,
        "inferenceguard": {
            "cost_models": of(pb::ModelRole::Cost),
            "reward_models": of(pb::ModelRole::Reward),
            "critics": of(pb::ModelRole::Critic),
            "methods": Method::ALL.iter().map(|m| m.name()).collect::<Vec<_>>(),
            "limits": {
                "max_body_bytes": api.max_body_bytes,
                "max_prompt_bytes": l.max_prompt_bytes,
                "max_chat_messages": l.max_chat_messages,
                "max_samples_count": l.max_samples_count,
                "max_new_tokens": l.max_new_tokens,
                "max_resamples": l.max_resamples,
                "max_duration_seconds": l.max_duration.as_secs_f64(),
                "max_concurrent_requests": l.max_concurrent_requests,
            },
        },
    }))
    .into_response()
}

/// 200 when every default role (policy, cost, reward) has a ready replica, else 503 naming
/// what is missing.
async fn health(State(api): State<Api>) -> Response {
    let all = api.guard.list(pb::ModelRole::Unspecified);
    let missing: Vec<&str> = [(pb::ModelRole::Policy, "policy"), (pb::ModelRole::Cost, "cost"), (pb::ModelRole::Reward, "reward")]
        .into_iter()
        .filter(|(role, _)| !all.iter().any(|m| m.role == *role as i32 && m.registry_default && m.ready_replica_count > 0))
        .map(|(_, name)| name)
        .collect();
    if missing.is_empty() {
        Json(json!({"status": "ok"})).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unavailable", "not_ready": missing}))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_name_the_bad_field() {
        let limit = 1 << 20;
        let e = parse::<Common>(b"{not json", limit).unwrap_err();
        assert_eq!((e.status, e.param.clone()), (StatusCode::BAD_REQUEST, None));
        let e = parse::<Common>(br#"{"messages": [], "temperature": "hot"}"#, limit).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"), "{e:?}");
        let e = parse::<Common>(br#"{"messages": [], "inferenceguard": {"sample_count": 4}}"#, limit).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("inferenceguard.sample_count"), "{e:?}");
        let e = parse::<Common>(br#"{"messages": [{"role": "user", "content": 7}]}"#, limit).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content"), "{e:?}");
        let e = parse::<Common>(br#"{"messages": []}"#, 10).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        let ok: Common = parse(br#"{"model": "p", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "n": 1, "stop": []}"#, limit).unwrap();
        assert!(ok.check_supported().is_ok());
        let two: Common = parse(br#"{"messages": [], "n": 2}"#, limit).unwrap();
        assert_eq!(two.check_supported().unwrap_err().param.as_deref(), Some("n"));
    }

    #[test]
    fn guard_fields_and_statuses_speak_openai() {
        assert_eq!(openai_param("params.max_new_tokens"), "max_tokens");
        assert_eq!(openai_param("params.samples_count"), "inferenceguard.samples_count");
        assert_eq!(openai_param("cost_model"), "inferenceguard.cost_model");
        let mut details = tonic_types::ErrorDetails::new();
        details.add_bad_request_violation("params.samples_count", "must be in [1, 512]");
        let status = tonic::Status::with_error_details(Code::InvalidArgument, "params.samples_count: must be in [1, 512]", details);
        let e = from_status(&status);
        assert_eq!((e.status, e.param.as_deref(), e.message.as_str()), (StatusCode::BAD_REQUEST, Some("inferenceguard.samples_count"), "inferenceguard.samples_count: must be in [1, 512]"));
        for (code, http) in [
            (Code::NotFound, 404),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Unauthenticated, 401),
            (Code::Internal, 500),
        ] {
            assert_eq!(from_status(&tonic::Status::new(code, "x")).status.as_u16(), http, "{code:?}");
        }
    }
}

/// The HTTP API's TLS listener for [`axum::serve`]: connections whose handshake completed
/// ([`ig_serve::tls::ServerTls::incoming`]: each handshake on its own task, bounded in time,
/// so a client that connects and stalls delays nobody).
pub struct TlsListener {
    incoming: tokio_stream::wrappers::ReceiverStream<std::io::Result<ig_serve::tls::ServerTlsStream>>,
    local: std::net::SocketAddr,
}

impl TlsListener {
    /// Accepts on `listener` with `tls` (HTTP/2 and HTTP/1.1 offered).
    pub fn new(listener: tokio::net::TcpListener, tls: &ig_serve::tls::ServerTls) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        Ok(Self { incoming: tls.incoming(listener), local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = ig_serve::tls::ServerTlsStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(stream)) => {
                    let peer = stream.get_ref().0.peer_addr().unwrap_or(self.local);
                    return (stream, peer);
                }
                // Failed handshakes are logged and counted where they happen.
                Some(Err(_)) => continue,
                // The acceptor stopped (it never does while the listener is held): no more
                // connections.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
