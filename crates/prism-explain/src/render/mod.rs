//! Rendering attributions: a self-contained HTML report (no network; inline CSS, SVG and a few
//! lines of JS for the attention grid) and SVG export of one heatmap. Every token and text is
//! HTML-escaped; data for the script is embedded as JSON with `<` escaped.

use crate::faithfulness::Faithfulness;
use crate::Attributions;
use serde::Serialize;
use std::fmt::Write as _;

pub use prism_model::html::escape;

/// Everything shown for one example.
#[derive(Clone, Debug, Serialize)]
pub struct ExampleView {
    pub text: String,
    pub text2: Option<String>,
    /// The prediction, e.g. `positive (0.93)`.
    pub prediction: String,
    pub attributions: Vec<Attributions>,
    /// `[layer][head][query][key]`, when attention is shown.
    pub attention: Option<Vec<Vec<Vec<Vec<f32>>>>>,
    /// Layer conductance (layer × token) and head importance (layer × head), when shown.
    pub layers: Option<crate::layer::LayerMaps>,
}

/// Background colour for a score relative to the largest magnitude: red supports the target,
/// blue opposes it.
fn color(score: f32, max: f32) -> String {
    let a = if max > 0.0 {
        (score.abs() / max).min(1.0)
    } else {
        0.0
    };
    if score >= 0.0 {
        format!("rgba(214,39,40,{a:.3})")
    } else {
        format!("rgba(31,119,180,{a:.3})")
    }
}

fn max_abs(a: &Attributions) -> f32 {
    a.scores.iter().fold(
        0.0f32,
        |m, s| if s.is_finite() { m.max(s.abs()) } else { m },
    )
}

/// One method's tokens as coloured spans.
pub fn heatmap_html(a: &Attributions) -> String {
    let max = max_abs(a);
    let mut s = String::from("<div class=\"heat\">");
    for (tok, score) in a.tokens.iter().zip(&a.scores) {
        let _ = write!(
            s,
            "<span class=\"tok\" style=\"background:{}\" title=\"{:.4}\">{}</span> ",
            color(*score, max),
            score,
            escape(tok)
        );
    }
    s.push_str("</div>");
    s
}

/// One method's tokens as an SVG strip (for papers and slides).
pub fn heatmap_svg(a: &Attributions) -> String {
    let max = max_abs(a);
    let widths: Vec<f32> = a
        .tokens
        .iter()
        .map(|t| 8.0 * t.chars().count().max(1) as f32 + 10.0)
        .collect();
    let total: f32 = widths.iter().sum::<f32>() + 10.0;
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{total:.0}\" height=\"44\" font-family=\"monospace\" font-size=\"13\"><text x=\"5\" y=\"12\" font-size=\"10\">{} — {}</text>", escape(&a.method), escape(&a.target));
    let mut x = 5.0;
    for ((tok, score), w) in a.tokens.iter().zip(&a.scores).zip(&widths) {
        let _ = write!(s, "<rect x=\"{x:.1}\" y=\"18\" width=\"{:.1}\" height=\"22\" fill=\"{}\"/><text x=\"{:.1}\" y=\"34\">{}</text>", w - 2.0, color(*score, max), x + 4.0, escape(tok));
        x += w;
    }
    s.push_str("</svg>");
    s
}

/// JSON safe to embed inside a `<script>` element.
fn script_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v)
        .unwrap_or_else(|_| "null".into())
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}.ex{border-top:1px solid #ccc;padding:1em 0}.method{display:grid;grid-template-columns:9em 1fr;gap:.5em;align-items:baseline;margin:.3em 0}.name{font-weight:600;font-size:90%}.tok{padding:1px 2px;border-radius:3px;line-height:1.9}.grid{display:grid;gap:2px;margin:.5em 0}.grid canvas{cursor:zoom-in;border:1px solid #eee}#big{position:fixed;top:5%;left:50%;transform:translateX(-50%);background:#fff;border:1px solid #888;padding:8px;display:none;z-index:9}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}.lmap td{min-width:1.6em;font-size:80%}.lmap th{font-size:80%;font-weight:500}";

const SCRIPT: &str = r#"
function draw(c, m, cell) {
  const t = m.length; c.width = t * cell; c.height = t * cell;
  const g = c.getContext('2d');
  for (let i = 0; i < t; i++) for (let j = 0; j < t; j++) {
    const v = m[i][j] / 255; g.fillStyle = 'rgba(31,119,180,' + v.toFixed(3) + ')';
    g.fillRect(j * cell, i * cell, cell, cell);
  }
}
document.querySelectorAll('script.att').forEach(function (el) {
  const d = JSON.parse(el.textContent); const grid = document.getElementById(el.dataset.grid);
  grid.style.gridTemplateColumns = 'repeat(' + d.att[0].length + ', auto)';
  d.att.forEach(function (layer, l) { layer.forEach(function (m, h) {
    const c = document.createElement('canvas'); c.title = 'layer ' + l + ', head ' + h;
    draw(c, m, 3); grid.appendChild(c);
    c.onclick = function () {
      const big = document.getElementById('big'); big.innerHTML = '';
      const cap = document.createElement('div'); cap.textContent = c.title + ' (click to close); rows: query, columns: key';
      const bc = document.createElement('canvas'); draw(bc, m, Math.max(8, Math.floor(600 / m.length)));
      const toks = document.createElement('div'); toks.textContent = d.tokens.join(' ');
      big.append(cap, bc, toks); big.style.display = 'block'; big.onclick = function () { big.style.display = 'none'; };
    };
  }); });
});
"#;

/// The whole report.
pub fn html_report(
    title: &str,
    examples: &[ExampleView],
    faithfulness: Option<&[(String, Faithfulness)]>,
) -> String {
    let mut h = format!("<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body><h1>{}</h1>", escape(title), escape(title));
    h.push_str("<p>Red supports the explained output, blue opposes it; each method's colours are scaled to its largest magnitude. Hover a token for its score.</p>");
    if let Some(rows) = faithfulness {
        h.push_str(&faithfulness_html(rows));
    }
    for (i, ex) in examples.iter().enumerate() {
        let _ = write!(
            h,
            "<div class=\"ex\"><h2>Example {}</h2><p>{}",
            i + 1,
            escape(&ex.text)
        );
        if let Some(t2) = &ex.text2 {
            let _ = write!(h, "<br><i>{}</i>", escape(t2));
        }
        let _ = write!(
            h,
            "</p><p>prediction: <b>{}</b></p>",
            escape(&ex.prediction)
        );
        for a in &ex.attributions {
            let delta = a
                .delta
                .map(|d| format!(" (delta {d:+.2e})"))
                .unwrap_or_default();
            let _ = write!(
                h,
                "<div class=\"method\"><span class=\"name\">{}{}</span>{}</div>",
                escape(&a.method),
                escape(&delta),
                heatmap_html(a)
            );
        }
        if let Some(att) = &ex.attention {
            let tokens = ex
                .attributions
                .first()
                .map(|a| a.tokens.clone())
                .unwrap_or_default();
            let open = if i == 0 { " open" } else { "" };
            let _ = write!(h, "<details{open}><summary>attention: layers (rows) x heads (columns), click one to enlarge</summary><div class=\"grid\" id=\"grid{i}\"></div></details>");
            // Quantised to 0..255: the page stays small (20 examples of MiniLM attention
            // would be 24 MB as full-precision JSON) and the colour scale has 256 levels anyway.
            let q: Vec<Vec<Vec<Vec<u8>>>> = att
                .iter()
                .map(|l| {
                    l.iter()
                        .map(|hd| {
                            hd.iter()
                                .map(|r| {
                                    r.iter()
                                        .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
                                        .collect()
                                })
                                .collect()
                        })
                        .collect()
                })
                .collect();
            let _ = write!(
                h,
                "<script type=\"application/json\" class=\"att\" data-grid=\"grid{i}\">{}</script>",
                script_json(&serde_json::json!({"att": q, "tokens": tokens}))
            );
        }
        if let Some(maps) = &ex.layers {
            h.push_str(&layer_maps_html(maps));
        }
        h.push_str("</div>");
    }
    let _ = write!(
        h,
        "<div id=\"big\"></div><script>{SCRIPT}</script></body></html>\n"
    );
    h
}

/// Layer conductance as a layer × token table and head importance as a layer × head table,
/// each cell coloured by its value (conductance relative to its largest magnitude, head
/// importance on its per-layer normalised 0..1 scale) with the value as its tooltip.
pub fn layer_maps_html(maps: &crate::layer::LayerMaps) -> String {
    let mut h = String::from("<details open><summary>layer conductance: layers (rows) × tokens (columns)</summary><table class=\"lmap\"><tr><th></th>");
    for t in &maps.tokens {
        let _ = write!(h, "<th>{}</th>", escape(t));
    }
    h.push_str("</tr>");
    let max = maps.conductance.iter().flatten().fold(0f32, |m, v| {
        if v.is_finite() {
            m.max(v.abs())
        } else {
            m
        }
    });
    for (l, row) in maps.conductance.iter().enumerate() {
        let _ = write!(h, "<tr><th>layer {l}</th>");
        for v in row {
            let _ = write!(
                h,
                "<td style=\"background:{}\" title=\"{v:.4}\"></td>",
                color(*v, max)
            );
        }
        h.push_str("</tr>");
    }
    h.push_str("</table></details><details open><summary>head importance (Michel et al. 2019, normalised per layer): layers (rows) × heads (columns)</summary><table class=\"lmap\"><tr><th></th>");
    let heads = maps.head_importance.scores.first().map_or(0, |r| r.len());
    for hd in 0..heads {
        let _ = write!(h, "<th>{hd}</th>");
    }
    h.push_str("</tr>");
    for (l, (row, raw)) in maps
        .head_importance
        .scores
        .iter()
        .zip(&maps.head_importance.raw)
        .enumerate()
    {
        let _ = write!(h, "<tr><th>layer {l}</th>");
        for (v, r) in row.iter().zip(raw) {
            let _ = write!(
                h,
                "<td style=\"background:{}\" title=\"{v:.3} (|Σ A·dF/dA| = {r:.3e})\">{v:.2}</td>",
                color(*v, 1.0)
            );
        }
        h.push_str("</tr>");
    }
    h.push_str("</table></details>");
    h
}

/// The faithfulness table.
pub fn faithfulness_html(rows: &[(String, Faithfulness)]) -> String {
    let mut h = String::from("<h2>Faithfulness</h2><table><tr><th>method</th><th>comprehensiveness ↑</th><th>sufficiency ↓</th><th>deletion AUC ↓</th><th>insertion AUC ↑</th></tr>");
    for (name, f) in rows {
        let _ = write!(h, "<tr><td style=\"text-align:left\">{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td></tr>", escape(name), f.comprehensiveness, f.sufficiency, f.deletion_auc, f.insertion_auc);
    }
    h.push_str("</table>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(tokens: &[&str]) -> Attributions {
        Attributions {
            tokens: tokens.iter().map(|s| s.to_string()).collect(),
            offsets: vec![(0, 0); tokens.len()],
            sequence_ids: vec![Some(0); tokens.len()],
            scores: (0..tokens.len()).map(|i| i as f32 - 1.0).collect(),
            method: "ig".into(),
            target: "class <b>".into(),
            output: 0.5,
            delta: Some(1e-3),
            output_kind: crate::Output::Prob,
            foil: None,
            windows: None,
        }
    }

    #[test]
    fn every_token_is_escaped() {
        let a = attr(&["<script>", "alert(1)", "</script>"]);
        let ex = ExampleView {
            text: "<script>alert(1)</script>".into(),
            text2: None,
            prediction: "<img>".into(),
            attributions: vec![a.clone()],
            attention: Some(vec![vec![vec![vec![1.0; 3]; 3]]]),
            layers: Some(crate::layer::LayerMaps {
                tokens: a.tokens.clone(),
                conductance: vec![vec![0.5, -0.25, 0.0]],
                head_importance: crate::layer::HeadImportance {
                    scores: vec![vec![0.6, 0.8]],
                    raw: vec![vec![0.3, 0.4]],
                },
            }),
        };
        let h = html_report("t", &[ex], None);
        assert!(!h.contains("<script>alert"), "unescaped token in HTML");
        assert!(h.contains("&lt;script&gt;"));
        // The layer maps: a row per layer, one cell per token and per head.
        assert!(h.contains("layer conductance") && h.contains("head importance"));
        assert!(h.contains("title=\"-0.2500\"") && h.contains(">0.80</td>"));
        // The only script elements are ours.
        assert_eq!(h.matches("<script").count(), 2);
        assert!(!h.contains("</script>\"") && !h.contains("\"</script>"));
        let svg = heatmap_svg(&a);
        assert!(!svg.contains("<script>") && svg.contains("&lt;/script&gt;"));
    }
}
