//! The JSON API: `GET /api/model`, `POST /api/predict`, `POST /api/explain`,
//! `POST /api/faithfulness`, `GET /api/openapi.json`, and the embedded page at `/`.
//! Every error is `{"error": "..."}` with a 4xx status for bad requests.

use crate::{assets, AppState};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prism_explain::faithfulness::{self, Faithfulness};
use prism_explain::{
    aggregate_words, attention, method_with, ExplainModel, Method, MethodOptions, Target,
};
use prism_model::tasks::MultiTaskModel;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// An error answer: status and a readable message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    fn bad(msg: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: msg.into(),
        }
    }
    fn unprocessable(msg: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: msg.into(),
        }
    }
    fn internal(msg: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: msg.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": self.message}))).into_response()
    }
}

/// Refuse a request whose `Host` header is not one the server answers to (403: the defence
/// against DNS rebinding, where a page on another site resolves its own name to 127.0.0.1),
/// or whose declared `Content-Length` is over the body limit (413, before reading it).
pub async fn check_host(
    allowed: &[String],
    max_body: usize,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = req
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.to_ascii_lowercase());
    match host {
        Some(h) if allowed.iter().any(|a| a.eq_ignore_ascii_case(&h)) => {
            // A declared body over the limit is refused before a byte of it is read.
            let declared = req
                .headers()
                .get(axum::http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            match declared {
                Some(n) if n > max_body as u64 => ApiError {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    message: format!(
                        "the body is {n} bytes; the limit is {max_body} (`max_body_bytes`)"
                    ),
                }
                .into_response(),
                _ => next.run(req).await,
            }
        }
        other => ApiError {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "`Host: {}` is not this server (it answers to {}; pass --allow-host NAME for a \
                 proxy's name)",
                other.unwrap_or_default(),
                allowed.join(", ")
            ),
        }
        .into_response(),
    }
}

/// A request body as `T`, only from a JSON object: serde would read a struct from an array of
/// its fields in order too (`["text"]` as `{"text": ...}`), which the API does not promise.
fn object<T: serde::de::DeserializeOwned>(Json(v): Json<Value>) -> Result<T, ApiError> {
    if !v.is_object() {
        let kind = match &v {
            Value::Array(_) => "an array",
            Value::String(_) => "a string",
            Value::Number(_) => "a number",
            Value::Bool(_) => "a boolean",
            _ => "null",
        };
        return Err(ApiError::unprocessable(format!(
            "invalid request: the body must be a JSON object, not {kind}"
        )));
    }
    serde_json::from_value(v).map_err(|e| ApiError::unprocessable(format!("invalid request: {e}")))
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        Self {
            status: r.status(),
            message: format!("invalid request: {}", r.body_text()),
        }
    }
}

impl From<prism_explain::Error> for ApiError {
    fn from(e: prism_explain::Error) -> Self {
        match e {
            prism_explain::Error::Invalid(_) | prism_explain::Error::UnknownMethod { .. } => {
                Self::bad(e.to_string())
            }
            prism_explain::Error::Model(m) => m.into(),
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<prism_model::Error> for ApiError {
    fn from(e: prism_model::Error) -> Self {
        match e {
            prism_model::Error::Input(_)
            | prism_model::Error::InvalidConfig(_)
            | prism_model::Error::Data { .. } => Self::bad(e.to_string()),
            other => Self::internal(other.to_string()),
        }
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.opts.max_body_bytes;
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/style.css", get(style_css))
        .route("/api/model", get(model_info))
        .route("/api/openapi.json", get(openapi))
        .route("/api/predict", post(predict))
        .route("/api/explain", post(explain))
        .route("/api/faithfulness", post(faithfulness_table))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn asset(ct: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, ct),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'",
            ),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", assets::INDEX_HTML)
}
async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", assets::APP_JS)
}
async fn style_css() -> Response {
    asset("text/css; charset=utf-8", assets::STYLE_CSS)
}
async fn openapi() -> Response {
    asset("application/json", assets::OPENAPI_JSON)
}
async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "no such page or endpoint (see /api/openapi.json)".into(),
    }
}

/// Run model work on a blocking thread once a worker is free; 503 when too many wait.
async fn run_model<T: Send + 'static>(
    s: &Arc<AppState>,
    f: impl FnOnce(&MultiTaskModel) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let queued = s.waiting.fetch_add(1, Ordering::SeqCst);
    if queued >= s.opts.max_queue {
        s.waiting.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("busy: {queued} requests are waiting; try again shortly"),
        });
    }
    let permit = s.permits.clone().acquire_owned().await;
    s.waiting.fetch_sub(1, Ordering::SeqCst);
    let permit = permit.map_err(|_| ApiError::internal("the server is shutting down"))?;
    let model = s.model.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f(&model)
    })
    .await
    .map_err(|e| ApiError::internal(format!("model worker failed: {e}")))?
}

/// A text read in more windows than `--max-windows` allows is refused (413).
fn check_windows(max_windows: usize, n: usize) -> Result<(), ApiError> {
    if n > max_windows {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!(
                "the text is read in {n} windows of the task's max_length; the limit is \
                 {max_windows}"
            ),
        });
    }
    Ok(())
}

fn check_text(s: &AppState, text: &str, text2: Option<&str>) -> Result<(), ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::bad("`text` is empty"));
    }
    let n = text.chars().count() + text2.map_or(0, |t| t.chars().count());
    if n > s.opts.max_text_chars {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!(
                "the text has {n} characters; the limit is {}",
                s.opts.max_text_chars
            ),
        });
    }
    Ok(())
}

#[derive(Serialize)]
struct TaskInfo {
    name: String,
    kind: prism_model::tasks::TaskKind,
    labels: Vec<String>,
    pair: bool,
}

async fn model_info(State(s): State<Arc<AppState>>) -> Json<Value> {
    let m = &s.model;
    let z = m.base.config.sizes();
    let tasks: Vec<TaskInfo> = m
        .tasks
        .iter()
        .map(|t| TaskInfo {
            name: t.spec.name.clone(),
            kind: t.spec.kind,
            labels: t.spec.labels.clone(),
            pair: t.spec.kind.is_pair(),
        })
        .collect();
    Json(json!({
        // The folder's name only: an absolute path tells a page more about the machine than
        // it needs.
        "model_dir": s.model_dir.file_name().map(|n| n.to_string_lossy().to_string()),
        "model_type": m.base.config.model_type(),
        "architecture": m.base.config.base_architecture(),
        "hidden_size": z.hidden,
        "layers": z.layers,
        "heads": z.heads,
        "max_tokens": m.base.config.max_tokens(),
        "parameters": m.base.num_parameters(),
        "tasks": tasks,
        "methods": prism_explain::METHODS,
        "limits": {
            "max_body_bytes": s.opts.max_body_bytes,
            "max_text_chars": s.opts.max_text_chars,
            "max_steps": s.opts.max_steps,
            "max_examples": s.opts.max_examples,
            "max_windows": s.opts.max_windows,
            "max_attention_values": s.opts.max_attention_values,
            "max_work": s.opts.max_work,
        },
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    pub text: String,
    #[serde(default)]
    pub text2: Option<String>,
    /// Only this task (default: every head).
    #[serde(default)]
    pub task: Option<String>,
}

async fn predict(
    State(s): State<Arc<AppState>>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Value> {
    let req: PredictRequest = object(body?)?;
    check_text(&s, &req.text, req.text2.as_deref())?;
    if let Some(t) = &req.task {
        s.model.task_index(t)?;
    }
    let max_windows = s.opts.max_windows;
    let out = run_model(&s, move |m| {
        let mut rows = Vec::new();
        for (ti, t) in m.tasks.iter().enumerate() {
            if req.task.as_ref().is_some_and(|n| *n != t.spec.name) {
                continue;
            }
            if t.spec.kind.is_pair() && req.text2.is_none() {
                rows.push(json!({"task": t.spec.name, "kind": t.spec.kind, "skipped": "this task needs a second text (text2)"}));
                continue;
            }
            let text2 = m.second_text(ti, req.text2.as_deref(), false);
            if t.spec.kind.is_sequence_level() {
                let n = t.tokenizer().encode_long(&req.text, text2, None)?.len();
                check_windows(max_windows, n)?;
            }
            let p = m.predict_text(ti, &req.text, text2)?;
            rows.push(json!({"task": t.spec.name, "kind": t.spec.kind, "prediction": p}));
        }
        Ok(json!({ "predictions": rows }))
    })
    .await?;
    Ok(Json(out))
}

fn default_methods() -> Vec<String> {
    vec!["ig".into(), "saliency".into()]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    pub text: String,
    #[serde(default)]
    pub text2: Option<String>,
    #[serde(default)]
    pub task: Option<String>,
    /// A class or tag name, `value`, `start:N`, `end:N`, `N:TAG` (default: the prediction).
    #[serde(default)]
    pub target: Option<String>,
    /// `prob` (default), `logit` or `log_prob` of a class or tag target.
    #[serde(default)]
    pub output: Option<String>,
    /// A contrasted class or tag: F = output(target) − output(foil).
    #[serde(default)]
    pub foil: Option<String>,
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Integrated-gradients steps (default 50).
    #[serde(default)]
    pub steps: Option<usize>,
    /// Sum sub-word scores into words.
    #[serde(default)]
    pub words: bool,
    /// Return every layer's attention and the rollout matrix (only on request: layers × heads
    /// × tokens² values, capped by the server's `max_attention_values`).
    #[serde(default)]
    pub attention: bool,
    /// The encoder layer (0-based) of the layer methods (default: the last).
    #[serde(default)]
    pub layer: Option<usize>,
    /// Return layer conductance per layer and token and head importance per layer and head.
    #[serde(default)]
    pub layer_maps: bool,
    #[serde(default)]
    pub seed: u64,
}

fn build_methods(
    names: &[String],
    steps: Option<usize>,
    seed: u64,
    layer: Option<usize>,
    max_steps: usize,
) -> Result<Vec<Box<dyn Method>>, ApiError> {
    if names.is_empty() {
        return Err(ApiError::bad("`methods` is empty"));
    }
    if names.len() > prism_explain::METHODS.len() {
        return Err(ApiError::bad("too many methods"));
    }
    if let Some(dup) = names
        .iter()
        .enumerate()
        .find_map(|(i, n)| names[..i].contains(n).then_some(n))
    {
        return Err(ApiError::bad(format!("method `{dup}` is asked for twice")));
    }
    let steps = steps.unwrap_or(50);
    if steps == 0 || steps > max_steps {
        return Err(ApiError::bad(format!("`steps` must be in 1..={max_steps}")));
    }
    let opts = MethodOptions {
        seed,
        steps,
        layer,
        ..Default::default()
    };
    names.iter().map(|n| Ok(method_with(n, &opts)?)).collect()
}

fn round4(v: f32) -> f32 {
    (v * 1e4).round() / 1e4
}

async fn explain(
    State(s): State<Arc<AppState>>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Value> {
    let req: ExplainRequest = object(body?)?;
    check_text(&s, &req.text, req.text2.as_deref())?;
    let methods = build_methods(
        &req.methods,
        req.steps,
        req.seed,
        req.layer,
        s.opts.max_steps,
    )?;
    let max_windows = s.opts.max_windows;
    let (max_att, max_work) = (s.opts.max_attention_values, s.opts.max_work);
    let n_methods = methods.len();
    let steps = req.steps.unwrap_or(50);
    let out = run_model(&s, move |model| {
        let output = match req.output.as_deref() {
            None => prism_explain::Output::Prob,
            Some(o) => prism_explain::Output::parse(o)?,
        };
        let mut m = ExplainModel::new(model, req.task.as_deref())?.with_output(output);
        if m.kind().is_pair() && req.text2.is_none() {
            return Err(ApiError::bad(
                "this task reads a pair of texts: give the second as `text2`",
            ));
        }
        // A text longer than the task's max_length is explained in overlapping windows (half
        // a window shared), stitched over the whole text; attention comes from the first.
        let w = m.encode_windows(&req.text, req.text2.as_deref(), None)?;
        check_windows(max_windows, w.len())?;
        let x = w.windows[0].clone();
        // The work asked for, before any of it is done.
        let tokens: usize = w.windows.iter().map(|x| x.enc.ids.len()).sum();
        let work = tokens * n_methods * steps;
        if work > max_work {
            return Err(ApiError::unprocessable(format!(
                "this explanation is {tokens} tokens × {n_methods} methods × {steps} steps = \
                 {work} units of work, above the server's limit of {max_work}: ask for fewer \
                 methods or steps, or a shorter text"
            )));
        }
        if req.attention {
            let (layers, heads) = prism_model::Encoder::layers_and_heads(&model.base.encoder);
            let t = x.enc.ids.len();
            let values = layers * heads * t * t;
            if values > max_att {
                return Err(ApiError::unprocessable(format!(
                    "`attention` for {t} tokens is {layers} layers × {heads} heads × {t}² = \
                     {values} values, above the server's limit of {max_att}: ask without \
                     `attention` or for a shorter text"
                )));
            }
        }
        let target: Target = match &req.target {
            None if w.len() > 1 => m.default_target_windows(&w)?,
            None => m.default_target(&x)?,
            Some(t) => m.parse_target(t)?,
        };
        m.foil = req
            .foil
            .as_deref()
            .map(|f| m.parse_foil(f, &target))
            .transpose()?;
        let texts: Vec<String> = x.texts.clone();
        let tref: Vec<&str> = texts.iter().map(|t| t.as_str()).collect();
        let mut attributions = Vec::new();
        let mut seconds = serde_json::Map::new();
        for method in &methods {
            let t0 = Instant::now();
            let a = m.attribute_windows(method.as_ref(), &w, &target)?;
            seconds.insert(method.name().into(), json!(t0.elapsed().as_secs_f64()));
            attributions.push(if req.words {
                aggregate_words(&a, &tref)
            } else {
                a
            });
        }
        let (att, roll) = if req.attention {
            let maps = attention::attention_maps(&m, &x)?;
            let roll: Vec<Vec<f32>> = attention::rollout(&maps)
                .into_iter()
                .map(|r| r.into_iter().map(round4).collect())
                .collect();
            let maps: Vec<Vec<Vec<Vec<f32>>>> = maps
                .into_iter()
                .map(|l| {
                    l.into_iter()
                        .map(|h| {
                            h.into_iter()
                                .map(|r| r.into_iter().map(round4).collect())
                                .collect()
                        })
                        .collect()
                })
                .collect();
            (json!(maps), json!(roll))
        } else {
            (Value::Null, Value::Null)
        };
        let layer_maps = if req.layer_maps {
            let ig = prism_explain::gradient::IntegratedGradients {
                steps: req.steps.unwrap_or(50),
                ..Default::default()
            };
            Some(prism_explain::layer::LayerMaps::compute(
                &m, &x, &target, &ig,
            )?)
        } else {
            None
        };
        let spec = &model.tasks[m.task].spec;
        Ok(json!({
            "task": spec.name,
            "kind": spec.kind,
            "target": m.describe(&target),
            "output": attributions.first().map(|a| a.output),
            "output_kind": m.output_for(&target),
            "foil": m.foil.as_ref().map(|_| attributions.first().and_then(|a| a.foil.clone())),
            "tokens": w.full.tokens,
            // The attention grid and rollout are the first window's.
            "attention_tokens": x.enc.tokens,
            "windows": w.len(),
            "attributions": attributions,
            "attention": att,
            "rollout": roll,
            "layer_maps": layer_maps,
            "seconds": seconds,
        }))
    })
    .await?;
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaithExample {
    pub text: String,
    #[serde(default)]
    pub text2: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaithfulnessRequest {
    pub examples: Vec<FaithExample>,
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    #[serde(default)]
    pub steps: Option<usize>,
    /// The encoder layer (0-based) of the layer methods (default: the last).
    #[serde(default)]
    pub layer: Option<usize>,
    #[serde(default)]
    pub seed: u64,
}

#[derive(Serialize)]
struct FaithRow {
    method: String,
    #[serde(flatten)]
    scores: Faithfulness,
}

async fn faithfulness_table(
    State(s): State<Arc<AppState>>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Value> {
    let req: FaithfulnessRequest = object(body?)?;
    if req.examples.is_empty() || req.examples.len() > s.opts.max_examples {
        return Err(ApiError::bad(format!(
            "`examples` must hold 1 to {} texts",
            s.opts.max_examples
        )));
    }
    for e in &req.examples {
        check_text(&s, &e.text, e.text2.as_deref())?;
    }
    let methods = build_methods(
        &req.methods,
        req.steps,
        req.seed,
        req.layer,
        s.opts.max_steps,
    )?;
    let out = run_model(&s, move |model| {
        let m = ExplainModel::new(model, req.task.as_deref())?;
        let mut rows: Vec<(String, Vec<Faithfulness>)> = methods
            .iter()
            .map(|mm| (mm.name().to_string(), Vec::new()))
            .chain(std::iter::once(("random".to_string(), Vec::new())))
            .collect();
        for (i, e) in req.examples.iter().enumerate() {
            let x = m.encode(&e.text, e.text2.as_deref())?;
            let target = m.default_target(&x)?;
            for (mi, method) in methods.iter().enumerate() {
                let a = method.attribute(&m, &x, &target)?;
                rows[mi]
                    .1
                    .push(faithfulness::evaluate(&m, &x, &target, &a, 32)?);
            }
            let r = faithfulness::random_attributions(&m, &x, &target, req.seed + i as u64);
            let last = rows.len() - 1;
            rows[last]
                .1
                .push(faithfulness::evaluate(&m, &x, &target, &r, 32)?);
        }
        let table: Vec<FaithRow> = rows
            .iter()
            .map(|(n, r)| FaithRow {
                method: n.clone(),
                scores: faithfulness::mean(r),
            })
            .collect();
        Ok(json!({"examples": req.examples.len(), "table": table}))
    })
    .await?;
    Ok(Json(out))
}
