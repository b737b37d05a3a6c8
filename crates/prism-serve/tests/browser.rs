//! End to end in a real browser: headless Chromium (through ChromeDriver's WebDriver protocol)
//! loads the page, types a sentence, asks for integrated gradients, and the heatmap shows one
//! cell per token; a hostile input renders as text; an empty input shows a readable error; a
//! screenshot is saved. `.ci/run` installs Debian's `chromium` and `chromium-driver` and sets
//! PRISM_REQUIRE_BROWSER=1, so there the test cannot skip; elsewhere it skips (saying so) when
//! they are missing.

use crate::common;
use base64::Engine;
use common::*;
use prism_serve::ServeOptions;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

struct Driver {
    addr: SocketAddr,
    child: Child,
    session: String,
}

impl Driver {
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        wd(self.addr, method, &path, body)
    }
    fn find(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v["value"][ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }
    fn exec(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )["value"]
            .clone()
    }
    fn click(&self, css: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/click"), Some(json!({})));
    }
    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/clear"), Some(json!({})));
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        );
    }
    fn wait(&self, script: &str, what: &str) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            if self.exec(script) == json!(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}; page state {}", self.exec("return document.body.dataset.state + ' ' + document.getElementById('error').textContent"));
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wd(
                self.addr,
                "DELETE",
                &format!("/session/{}", self.session),
                None,
            )
        }));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wd(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Value {
    let b = body.map(|v| v.to_string());
    let (_, text) = http(
        addr,
        method,
        path,
        b.as_deref().map(|s| ("application/json", s.as_bytes())),
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("webdriver {path}: {e}: {text}"))
}

fn start_driver(chromium: &PathBuf, driver: &PathBuf) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let t0 = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium.to_string_lossy(),
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,1400"]
        }
    }}});
    let v = wd(addr, "POST", "/session", Some(caps));
    let session = v["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
        .to_string();
    Driver {
        addr,
        child,
        session,
    }
}

#[test]
fn the_page_explains_a_sentence_with_integrated_gradients() {
    let (Some(chromium), Some(driver)) = (which("chromium"), which("chromedriver")) else {
        if std::env::var_os("PRISM_REQUIRE_BROWSER").is_some() {
            panic!(
                "chromium and chromedriver are required (apt-get install chromium chromium-driver)"
            );
        }
        eprintln!("SKIPPED: the browser test needs chromium and chromedriver (apt-get install chromium chromium-driver)");
        return;
    };
    let srv = Server::start(ServeOptions::default());
    let d = start_driver(&chromium, &driver);
    d.cmd(
        "POST",
        "/url",
        Some(json!({"url": format!("http://{}/", srv.addr)})),
    );
    d.wait(
        "return document.body.dataset.state === 'idle'",
        "the page to load the model",
    );
    assert_eq!(
        d.exec("return document.querySelectorAll('input[name=method]').length"),
        json!(prism_explain::METHODS.len())
    );

    // Only integrated gradients.
    d.exec("document.querySelectorAll('input[name=method]').forEach(c => { c.checked = c.value === 'ig'; }); return true;");
    let sentence = "A gorgeous, witty, seductive movie.";
    d.type_into("#text", sentence);
    d.click("#explain");
    d.wait(
        "return document.body.dataset.state === 'idle' && document.querySelectorAll('.heatmap[data-method=\"ig\"] .tok').length > 0",
        "the IG heatmap",
    );
    let cells =
        d.exec("return document.querySelectorAll('.heatmap[data-method=\"ig\"] .tok').length");
    let (_, api) = post_json(
        srv.addr,
        "/api/explain",
        &json!({"text": sentence, "methods": ["ig"], "attention": false}),
    );
    let tokens = api["tokens"].as_array().unwrap();
    assert_eq!(cells, json!(tokens.len()), "one heatmap cell per token");
    let shown = d.exec("return [...document.querySelectorAll('.heatmap[data-method=\"ig\"] .tok')].map(e => e.textContent)");
    assert_eq!(&shown, &api["attributions"][0]["tokens"]);
    // The attention grid (2 layers x 4 heads) and the rollout map are drawn.
    assert_eq!(
        d.exec("return document.querySelectorAll('.grid canvas').length"),
        json!(8)
    );
    assert_eq!(
        d.exec("return document.querySelectorAll('canvas.rollout').length"),
        json!(1)
    );
    assert_eq!(
        d.exec("return document.getElementById('error').hidden"),
        json!(true)
    );

    // Layer IG at layer 0 with the layer × token conductance and layer × head importance maps.
    d.exec("document.querySelectorAll('input[name=method]').forEach(c => { c.checked = c.value === 'layer_ig'; }); document.getElementById('layer').value = '0'; document.getElementById('layer-maps').checked = true; return true;");
    d.click("#explain");
    d.wait(
        "return document.body.dataset.state === 'idle' && document.querySelectorAll('.lmap[data-map=\"heads\"] .cell').length > 0",
        "the layer maps",
    );
    assert_eq!(
        d.exec("return document.querySelectorAll('.lmap[data-map=\"conductance\"] .cell').length"),
        json!(2 * tokens.len()),
        "a conductance cell per layer and token"
    );
    assert_eq!(
        d.exec("return document.querySelectorAll('.lmap[data-map=\"heads\"] .cell').length"),
        json!(8),
        "a head-importance cell per layer and head"
    );
    assert_eq!(
        d.exec(
            "return document.querySelectorAll('.heatmap[data-method=\"layer_ig\"] .tok').length"
        ),
        json!(tokens.len())
    );

    let shot = d.cmd("GET", "/screenshot", None);
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["value"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("prism-serve-ig.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());

    // A hostile input is shown as text and never runs.
    let hostile = "<script>window.__xss=1</script><img src=x onerror=\"window.__xss=2\"> fine";
    d.type_into("#text", hostile);
    d.click("#explain");
    d.wait(
        "return document.body.dataset.state === 'idle' && document.querySelector('.explained .muted') !== null && document.querySelector('.explained .muted').textContent.includes('<script>')",
        "the hostile input's explanation",
    );
    assert_eq!(d.exec("return window.__xss === undefined"), json!(true));
    assert_eq!(
        d.exec("return document.querySelectorAll('.explained img, .explained script').length"),
        json!(0)
    );

    // An empty input gives a readable error instead of a blank widget.
    d.type_into("#text", " ");
    d.click("#explain");
    d.wait(
        "return !document.getElementById('error').hidden && document.getElementById('error').textContent.includes('empty')",
        "the error message",
    );
}
