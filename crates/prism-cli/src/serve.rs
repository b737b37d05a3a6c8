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
    /// Also answer requests whose `Host` header is this (`name` or `name:port`, repeatable):
    /// the name a reverse proxy forwards. Any other `Host` but the bound address and
    /// `localhost` gets 403 (no DNS-rebinding page can reach the API).
    #[arg(long = "allow-host")]
    pub allow_hosts: Vec<String>,
}

pub fn run(a: ServeArgs, dev: &Device) -> Result<()> {
    serve(&a, dev)
}

fn serve(a: &ServeArgs, dev: &Device) -> Result<()> {
    let (host, port) = (a.host.as_str(), a.port);
    let t0 = std::time::Instant::now();
    let (m, dir) = load_tasks(&a.model, dev)?;
    let opts = prism_serve::ServeOptions {
        workers: a.workers.max(1),
        max_text_chars: a.max_text_chars,
        max_windows: a.max_windows.max(1),
        allow_hosts: a
            .allow_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        ..Default::default()
    };
    // The server never trains: frozen parameters, so explanations skip weight gradients.
    let frozen = frozen(&m, a.bf16)?;
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
