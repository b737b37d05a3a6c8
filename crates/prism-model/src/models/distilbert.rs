//! DistilBERT (transformers' `DistilBertModel`, `model_type = "distilbert"`): BERT's post-norm
//! layer under other names, without token types or a pooler. Its config keys are read and
//! written verbatim ([`DistilBertConfig`]); the encoder runs as [`super::bert::Bert`] on the
//! BERT-shaped config [`DistilBertConfig::to_bert`] gives, with checkpoint keys renamed on load
//! ([`to_bert_key`]) and back on save ([`from_bert_key`]):
//!
//! | DistilBERT | BERT |
//! |---|---|
//! | `transformer.layer.N.attention.{q,k,v}_lin` | `encoder.layer.N.attention.self.{query,key,value}` |
//! | `transformer.layer.N.attention.out_lin` | `encoder.layer.N.attention.output.dense` |
//! | `transformer.layer.N.sa_layer_norm` | `encoder.layer.N.attention.output.LayerNorm` |
//! | `transformer.layer.N.ffn.lin1` / `lin2` | `encoder.layer.N.intermediate.dense` / `output.dense` |
//! | `transformer.layer.N.output_layer_norm` | `encoder.layer.N.output.LayerNorm` |
//!
//! Learned position embeddings are trained as BERT's; a checkpoint made with
//! `sinusoidal_pos_embds = true` (a fixed table transformers does not train) is refused for
//! now, with an error saying so.

use super::bert::BertConfig;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

fn d_vocab() -> usize {
    30522
}
fn d_pos() -> usize {
    512
}
fn d_layers() -> usize {
    6
}
fn d_heads() -> usize {
    12
}
fn d_dim() -> usize {
    768
}
fn d_hidden() -> usize {
    3072
}
fn d_dropout() -> f64 {
    0.1
}
fn d_act() -> String {
    "gelu".into()
}
fn d_init() -> f64 {
    0.02
}
fn d_qa_dropout() -> f64 {
    0.1
}
fn d_seq_dropout() -> f64 {
    0.2
}

/// `config.json` of a DistilBERT model, with transformers' key names; other keys are kept in
/// `extra` and written back unchanged.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DistilBertConfig {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub sinusoidal_pos_embds: bool,
    #[serde(default = "d_layers")]
    pub n_layers: usize,
    #[serde(default = "d_heads")]
    pub n_heads: usize,
    #[serde(default = "d_dim")]
    pub dim: usize,
    #[serde(default = "d_hidden")]
    pub hidden_dim: usize,
    #[serde(default = "d_dropout")]
    pub dropout: f64,
    #[serde(default = "d_dropout")]
    pub attention_dropout: f64,
    #[serde(default = "d_act")]
    pub activation: String,
    #[serde(default = "d_init")]
    pub initializer_range: f64,
    #[serde(default = "d_qa_dropout")]
    pub qa_dropout: f64,
    #[serde(default = "d_seq_dropout")]
    pub seq_classif_dropout: f64,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Keys of a DistilBERT config that [`DistilBertConfig::to_bert`] stores under `extra` so that
/// [`DistilBertConfig::from_bert`] can write them back.
const KEPT: [&str; 3] = ["sinusoidal_pos_embds", "qa_dropout", "seq_classif_dropout"];

impl DistilBertConfig {
    /// Check the sizes and the features prism implements.
    pub fn validate(&self) -> Result<()> {
        if self.sinusoidal_pos_embds {
            return Err(Error::InvalidConfig(
                "`sinusoidal_pos_embds` = true (a fixed sinusoidal position table that \
                 transformers does not train) is not supported yet; DistilBERT checkpoints with \
                 learned positions (the released ones) are"
                    .into(),
            ));
        }
        self.to_bert().validate()
    }

    /// The BERT-shaped config the encoder runs on: no token types (`type_vocab_size` 0),
    /// LayerNorm eps 1e-12 (DistilBERT's, fixed in its code), `model_type = "distilbert"`.
    pub fn to_bert(&self) -> BertConfig {
        let mut extra = self.extra.clone();
        extra.insert(
            "sinusoidal_pos_embds".into(),
            self.sinusoidal_pos_embds.into(),
        );
        extra.insert("qa_dropout".into(), self.qa_dropout.into());
        extra.insert(
            "seq_classif_dropout".into(),
            self.seq_classif_dropout.into(),
        );
        let architectures = extra
            .remove("architectures")
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        extra.remove("model_type");
        BertConfig {
            model_type: "distilbert".into(),
            architectures,
            vocab_size: self.vocab_size,
            hidden_size: self.dim,
            num_hidden_layers: self.n_layers,
            num_attention_heads: self.n_heads,
            intermediate_size: self.hidden_dim,
            hidden_act: self.activation.clone(),
            hidden_dropout_prob: self.dropout,
            attention_probs_dropout_prob: self.attention_dropout,
            max_position_embeddings: self.max_position_embeddings,
            type_vocab_size: 0,
            initializer_range: self.initializer_range,
            layer_norm_eps: 1e-12,
            pad_token_id: self.pad_token_id,
            position_embedding_type: "absolute".into(),
            embedding_size: None,
            extra,
        }
    }

    /// The DistilBERT config of a BERT-shaped one made by [`DistilBertConfig::to_bert`].
    pub fn from_bert(c: &BertConfig) -> Self {
        let mut extra = c.extra.clone();
        let get_f = |extra: &serde_json::Map<String, serde_json::Value>, k: &str, d: f64| {
            extra.get(k).and_then(|v| v.as_f64()).unwrap_or(d)
        };
        let sinusoidal = extra
            .get("sinusoidal_pos_embds")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let qa = get_f(&extra, "qa_dropout", d_qa_dropout());
        let seq = get_f(&extra, "seq_classif_dropout", d_seq_dropout());
        for k in KEPT {
            extra.remove(k);
        }
        extra.insert("model_type".into(), "distilbert".into());
        if !c.architectures.is_empty() {
            extra.insert("architectures".into(), c.architectures.clone().into());
        }
        Self {
            vocab_size: c.vocab_size,
            max_position_embeddings: c.max_position_embeddings,
            sinusoidal_pos_embds: sinusoidal,
            n_layers: c.num_hidden_layers,
            n_heads: c.num_attention_heads,
            dim: c.hidden_size,
            hidden_dim: c.intermediate_size,
            dropout: c.hidden_dropout_prob,
            attention_dropout: c.attention_probs_dropout_prob,
            activation: c.hidden_act.clone(),
            initializer_range: c.initializer_range,
            qa_dropout: qa,
            seq_classif_dropout: seq,
            pad_token_id: c.pad_token_id,
            extra,
        }
    }
}

/// The sub-key renames inside a layer, DistilBERT → BERT.
const LAYER_KEYS: [(&str, &str); 8] = [
    ("attention.q_lin.", "attention.self.query."),
    ("attention.k_lin.", "attention.self.key."),
    ("attention.v_lin.", "attention.self.value."),
    ("attention.out_lin.", "attention.output.dense."),
    ("sa_layer_norm.", "attention.output.LayerNorm."),
    ("ffn.lin1.", "intermediate.dense."),
    ("ffn.lin2.", "output.dense."),
    ("output_layer_norm.", "output.LayerNorm."),
];

/// A DistilBERT checkpoint key (its `distilbert.` task prefix already removed, the
/// `transformer.` one removed or not) under BERT's name; other keys unchanged.
pub fn to_bert_key(key: &str) -> String {
    let rest = key.strip_prefix("transformer.").unwrap_or(key);
    let Some(rest) = rest.strip_prefix("layer.") else {
        return key.to_string();
    };
    let Some((n, sub)) = rest.split_once('.') else {
        return key.to_string();
    };
    for (d, b) in LAYER_KEYS {
        if let Some(tail) = sub.strip_prefix(d) {
            return format!("encoder.layer.{n}.{b}{tail}");
        }
    }
    key.to_string()
}

/// A BERT-named parameter of a DistilBERT model under DistilBERT's checkpoint name.
pub fn from_bert_key(key: &str) -> String {
    let Some(rest) = key.strip_prefix("encoder.layer.") else {
        return key.to_string();
    };
    let Some((n, sub)) = rest.split_once('.') else {
        return key.to_string();
    };
    for (d, b) in LAYER_KEYS {
        if let Some(tail) = sub.strip_prefix(b) {
            return format!("transformer.layer.{n}.{d}{tail}");
        }
    }
    key.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_both_ways() {
        for (d, b) in [
            (
                "transformer.layer.3.attention.q_lin.weight",
                "encoder.layer.3.attention.self.query.weight",
            ),
            (
                "transformer.layer.0.sa_layer_norm.bias",
                "encoder.layer.0.attention.output.LayerNorm.bias",
            ),
            (
                "transformer.layer.11.ffn.lin2.weight",
                "encoder.layer.11.output.dense.weight",
            ),
            (
                "transformer.layer.1.output_layer_norm.weight",
                "encoder.layer.1.output.LayerNorm.weight",
            ),
        ] {
            assert_eq!(to_bert_key(d), b);
            assert_eq!(to_bert_key(d.strip_prefix("transformer.").unwrap()), b);
            assert_eq!(from_bert_key(b), d);
        }
        assert_eq!(
            to_bert_key("embeddings.word_embeddings.weight"),
            "embeddings.word_embeddings.weight"
        );
    }

    #[test]
    fn config_round_trips_and_refuses_sinusoidal_positions() {
        let json = r#"{"model_type":"distilbert","vocab_size":100,"dim":32,"n_layers":2,"n_heads":4,"hidden_dim":64,"max_position_embeddings":64,"qa_dropout":0.3,"tie_weights_":true}"#;
        let c: DistilBertConfig = serde_json::from_str(json).unwrap();
        let b = c.to_bert();
        assert_eq!((b.hidden_size, b.type_vocab_size), (32, 0));
        let mut back = DistilBertConfig::from_bert(&b);
        back.extra.remove("model_type");
        let mut orig = c.clone();
        orig.extra.remove("model_type");
        assert_eq!(back, orig);
        let mut s = c;
        s.sinusoidal_pos_embds = true;
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("sinusoidal_pos_embds"), "{e}");
    }
}
