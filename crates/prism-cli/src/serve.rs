//! `prism serve`: the local web UI and JSON API over a trained model (binds 127.0.0.1 unless
//! told otherwise).

use crate::common::{frozen, load_tasks};
use anyhow::{Context, Result};
use candle_core::Device;
use clap::Args;

#[derive(Args)]
pub struct ServeArgs {
    /// A folder written by `prism train` (with prism.json).
    #[arg(long)]
    pub model: String,
    /// Address to bind; the default only accepts connections from this machine.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Concurrent model evaluations.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Longest accepted text, in characters.
    #[arg(long, default_value_t = 4000)]
    pub max_text_chars: usize,
    /// Most overlapping windows a text longer than a task's max_length may be read in
    /// (predict and explain); longer texts get 413.
    #[arg(long, default_value_t = 16)]
    pub max_windows: usize,
    /// Linear layers in bf16 on AMX or AVX512-BF16, for predictions and explanations (2-2.5x
    /// the f32 inference throughput, IG ~1.5x; see README "Performance").
    #[arg(long)]
    pub bf16: bool,
}

pub fn run(a: ServeArgs, dev: &Device) -> Result<()> {
    serve(
        &a.model,
        &a.host,
        a.port,
        a.workers,
        a.max_text_chars,
        a.max_windows,
        a.bf16,
        dev,
    )
}

fn serve(
    model: &str,
    host: &str,
    port: u16,
    workers: usize,
    max_text_chars: usize,
    max_windows: usize,
    bf16: bool,
    dev: &Device,
) -> Result<()> {
    let t0 = std::time::Instant::now();
    let (m, dir) = load_tasks(model, dev)?;
    let opts = prism_serve::ServeOptions {
        workers: workers.max(1),
        max_text_chars,
        max_windows: max_windows.max(1),
        ..Default::default()
    };
    // The server never trains: frozen parameters, so explanations skip weight gradients.
    let frozen = frozen(&m, bf16)?;
    let state = prism_serve::AppState::new(frozen, dir.clone(), opts);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((host, port))
            .await
            .with_context(|| format!("binding {host}:{port}"))?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            eprintln!("warning: listening on {addr}, reachable from other machines");
        }
        eprintln!(
            "prism serve: http://{addr}/  (model {}, loaded in {:.1} s; API at /api/openapi.json; Ctrl-C stops)",
            dir.display(),
            t0.elapsed().as_secs_f64()
        );
        prism_serve::serve(listener, state, prism_serve::shutdown_signal()).await?;
        eprintln!("prism serve: stopped");
        anyhow::Ok(())
    })
}
