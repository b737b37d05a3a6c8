//! A server on a free loopback port, and a minimal HTTP/1.1 client (so status codes and bodies
//! are seen exactly as sent).
#![allow(dead_code)]

use prism_model::tasks::MultiTaskModel;
use prism_serve::{AppState, ServeOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start(opts: ServeOptions) -> Self {
        Self::start_with(fixtures().join("tiny-bert-cls"), opts)
    }

    pub fn start_with(dir: PathBuf, opts: ServeOptions) -> Self {
        let model = MultiTaskModel::load(&dir, &candle_core::Device::Cpu).unwrap();
        let state = AppState::new(model.frozen().unwrap(), dir, opts);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(l.local_addr().unwrap()).unwrap();
                prism_serve::serve(l, state, async move {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
            });
        });
        let addr = addr_rx.recv().unwrap();
        Self {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Ask for a graceful shutdown and wait until the server has stopped.
    pub fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// One request; returns (status, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(300)))
        .unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some((ct, b)) = body {
        req.push_str(&format!(
            "Content-Type: {ct}\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    if let Some((_, b)) = body {
        // A server may answer (e.g. 413) before reading everything; ignore a broken pipe then.
        let _ = s.write_all(b);
    }
    // Read the head, then exactly the body (Content-Length or chunked): a server may keep the
    // connection open despite `Connection: close`.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            panic!(
                "connection closed before the response head: {:?}",
                String::from_utf8_lossy(&raw)
            );
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let mut body = raw[head_end..].to_vec();
    let mut fill = |body: &mut Vec<u8>, want: usize| {
        while body.len() < want {
            let n = s.read(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            body.extend_from_slice(&buf[..n]);
        }
    };
    let body = if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        fill(&mut body, len);
        body.truncate(len);
        body
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            while !body[pos..].windows(2).any(|w| w == b"\r\n") {
                let before = body.len();
                fill(&mut body, before + 1);
                assert!(body.len() > before, "truncated chunked body");
            }
            let line_end = pos + body[pos..].windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&body[pos..line_end]).trim(), 16)
                    .unwrap();
            let start = line_end + 2;
            fill(&mut body, start + size + 2);
            if size == 0 {
                break;
            }
            out.extend_from_slice(&body[start..start + size]);
            pos = start + size + 2;
        }
        out
    } else {
        let _ = s.read_to_end(&mut body);
        body
    };
    (status, String::from_utf8_lossy(&body).to_string())
}

pub fn post_json(addr: SocketAddr, path: &str, v: &serde_json::Value) -> (u16, serde_json::Value) {
    let (status, body) = http(
        addr,
        "POST",
        path,
        Some(("application/json", v.to_string().as_bytes())),
    );
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body:?}"));
    (status, v)
}

/// Peak and current resident memory of this process (kB), from /proc.
pub fn memory_kb() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("VmHWM:"), get("VmRSS:"))
}
