//! prism-serve: a local web UI and JSON API over a trained prism model, to predict and explain.
//!
//! One binary, no network, no CDN: the page (plain JS) is embedded. Model work never runs on the
//! async runtime's threads: requests wait for one of `workers` permits and run in
//! `spawn_blocking`, so the server keeps answering (and can refuse with 503 when the queue is
//! full) while a long explanation runs. Bodies and texts have size limits with JSON errors, the
//! UI builds every token with `textContent` (never HTML), and nothing is served from disk.

pub mod api;
mod assets;

use prism_model::tasks::MultiTaskModel;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Limits and sizes of a server.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Concurrent model evaluations (each already uses every core through candle).
    pub workers: usize,
    /// Requests allowed to wait for a worker before new ones get 503.
    pub max_queue: usize,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Longest text (both texts of a pair together), characters.
    pub max_text_chars: usize,
    /// Most integrated-gradients steps a request may ask for.
    pub max_steps: usize,
    /// Most examples in one faithfulness request.
    pub max_examples: usize,
    /// Most windows a text longer than the task's max_length may be read in (predict and
    /// explain); longer texts get 413.
    pub max_windows: usize,
    /// The most attention values (layers × heads × tokens²) an explain request may ask to be
    /// returned; more is a 422 (`"attention": true` on a long text would be hundreds of MB).
    pub max_attention_values: usize,
    /// The most work one explain request may ask for, counted as tokens × methods × IG steps
    /// (summed over the windows of a long text); more is a 422 naming the three factors.
    pub max_work: usize,
    /// `Host` header values accepted besides the bound address itself (and `localhost` at its
    /// port): the names a reverse proxy forwards. Any other `Host` is refused with 403, so a page
    /// on another site cannot reach the API through DNS rebinding.
    pub allow_hosts: Vec<String>,
    /// Open connections at once; a connection beyond them is closed on accept.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, counted from when the connection is
    /// ready for one: a half-sent request is closed after it, and so is a keep-alive
    /// connection idle for this long between requests (hyper starts the timer whenever it
    /// waits for a request head).
    pub header_timeout: std::time::Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            workers: 1,
            max_queue: 1024,
            max_body_bytes: 64 * 1024,
            max_text_chars: 4000,
            max_steps: 300,
            max_examples: 16,
            max_windows: 16,
            max_attention_values: 1 << 20,
            max_work: 500_000,
            allow_hosts: Vec::new(),
            max_connections: 256,
            header_timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// What every handler shares.
pub struct AppState {
    pub model: Arc<MultiTaskModel>,
    pub model_dir: PathBuf,
    pub opts: ServeOptions,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
}

impl AppState {
    pub fn new(model: MultiTaskModel, model_dir: PathBuf, opts: ServeOptions) -> Arc<Self> {
        Arc::new(Self {
            model: Arc::new(model),
            model_dir,
            permits: Arc::new(Semaphore::new(opts.workers.max(1))),
            opts,
            waiting: AtomicUsize::new(0),
        })
    }
}

/// Serve on `listener` until `shutdown` resolves; in-flight requests finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let mut allowed = vec![local.to_string(), format!("localhost:{}", local.port())];
    if local.ip().is_unspecified() || local.ip().is_loopback() {
        allowed.push(format!("127.0.0.1:{}", local.port()));
        allowed.push(format!("[::1]:{}", local.port()));
    }
    allowed.extend(state.opts.allow_hosts.iter().cloned());
    let opts = state.opts.clone();
    let allowed = Arc::new(allowed);
    let max_body = state.opts.max_body_bytes;
    let app = api::router(state).layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let allowed = allowed.clone();
            async move { api::check_host(&allowed, max_body, req, next).await }
        },
    ));
    let limit = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors or the like: back off instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                // Over the connection limit: closed at once, nothing read.
                let Ok(permit) = limit.clone().try_acquire_owned() else { continue };
                let svc = hyper_util::service::TowerToHyperService::new(app.clone());
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(opts.header_timeout);
                let conn = graceful.watch(
                    b.serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
                );
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(permit);
                });
            }
            _ = &mut shutdown => break,
        }
    }
    // In-flight requests finish; idle keep-alive connections are closed.
    graceful.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
