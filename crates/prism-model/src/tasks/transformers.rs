//! transformers' task classes as prism tasks, both ways. A folder saved by
//! `BertForSequenceClassification.save_pretrained` (or the token-classification and QA classes,
//! for every family prism loads) is read as a one-task prism model: the head's weights are taken
//! under transformers' names, the labels from `id2label`, the kind from the architecture. And
//! one task of a prism model is written back as the folder of that class, so that
//! `AutoModelFor…` and `pipeline(...)` load it with no missing or unexpected weights.
//!
//! The heads are the same functions in both libraries (`heads::sequence`, `heads::token`,
//! `heads::span`); only the weight names differ. `HEADS` is that table, for every family.

use super::{TaskKind, TaskSpec};
use crate::error::{Error, Result};
use crate::models::bert::Flavor;
use crate::nn::Source;
use crate::ModelConfig;
use std::path::Path;

/// The task name a transformers task model is read under: the name of its `pipeline()` task.
pub fn pipeline_task(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::Classification
        | TaskKind::PairClassification
        | TaskKind::Regression
        | TaskKind::MultiLabel => "text-classification",
        TaskKind::Token => "token-classification",
        TaskKind::Qa => "question-answering",
    }
}

/// The head kinds transformers has a class for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HeadClass {
    Sequence,
    Token,
    Qa,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Bert,
    Roberta,
    /// RoBERTa's architecture and task classes under XLM-RoBERTa's and CamemBERT's names.
    XlmRoberta,
    Camembert,
    Electra,
    Distilbert,
    ModernBert,
    DebertaV2,
    Xlnet,
}

impl Family {
    fn of(config: &ModelConfig) -> Self {
        match config {
            ModelConfig::Bert(c) if c.model_type == "xlm-roberta" => Family::XlmRoberta,
            ModelConfig::Bert(c) if c.model_type == "camembert" => Family::Camembert,
            ModelConfig::Bert(c) if c.is_electra() => Family::Electra,
            ModelConfig::Bert(c) if c.model_type == "distilbert" => Family::Distilbert,
            ModelConfig::Bert(c) if c.flavor() == Flavor::Roberta => Family::Roberta,
            ModelConfig::Bert(_) => Family::Bert,
            ModelConfig::Xlnet(_) => Family::Xlnet,
            ModelConfig::ModernBert(_) => Family::ModernBert,
            ModelConfig::DebertaV2(_) => Family::DebertaV2,
        }
    }

    fn class_prefix(self) -> &'static str {
        match self {
            Family::Bert => "Bert",
            Family::Roberta => "Roberta",
            Family::XlmRoberta => "XLMRoberta",
            Family::Camembert => "Camembert",
            Family::Electra => "Electra",
            Family::Distilbert => "DistilBert",
            Family::ModernBert => "ModernBert",
            Family::DebertaV2 => "DebertaV2",
            Family::Xlnet => "XLNet",
        }
    }

    /// The encoder's key prefix inside a task class's checkpoint.
    fn base_prefix(self) -> &'static str {
        match self {
            Family::Bert => "bert.",
            // XLM-RoBERTa's and CamemBERT's task classes keep RoBERTa's attribute name.
            Family::Roberta | Family::XlmRoberta | Family::Camembert => "roberta.",
            Family::Electra => "electra.",
            Family::Distilbert => "distilbert.",
            Family::ModernBert => "model.",
            Family::DebertaV2 => "deberta.",
            Family::Xlnet => "transformer.",
        }
    }

    fn class_name(self, head: HeadClass) -> String {
        let suffix = match (head, self) {
            (HeadClass::Sequence, _) => "ForSequenceClassification",
            (HeadClass::Token, _) => "ForTokenClassification",
            // XLNetForQuestionAnswering is the beam-search head of the paper; the plain span
            // head (BERT's) is XLNetForQuestionAnsweringSimple.
            (HeadClass::Qa, Family::Xlnet) => "ForQuestionAnsweringSimple",
            (HeadClass::Qa, _) => "ForQuestionAnswering",
        };
        format!("{}{suffix}", self.class_prefix())
    }

    /// (transformers' key, prism's key under `prism.heads.<task>.`) of each head tensor
    /// (without `.weight` / `.bias`).
    fn head_keys(self, head: HeadClass) -> &'static [(&'static str, &'static str)] {
        match (head, self) {
            // BertForSequenceClassification: pooler -> dropout -> classifier.
            (HeadClass::Sequence, Family::Bert) => &[("classifier", "out_proj")],
            // ModernBertPredictionHead then `classifier`, for every head kind.
            (HeadClass::Sequence, Family::ModernBert) => &[
                ("head.dense", "head.dense"),
                ("head.norm", "head.norm"),
                ("classifier", "out_proj"),
            ],
            (HeadClass::Token, Family::ModernBert) => &[
                ("head.dense", "head.dense"),
                ("head.norm", "head.norm"),
                ("classifier", "classifier"),
            ],
            (HeadClass::Qa, Family::ModernBert) => &[
                ("head.dense", "head.dense"),
                ("head.norm", "head.norm"),
                ("classifier", "qa_outputs"),
            ],
            // RobertaClassificationHead: <s> -> dropout -> dense -> tanh -> dropout -> out_proj.
            // ElectraClassificationHead: the same layout with GELU for tanh.
            (
                HeadClass::Sequence,
                Family::Roberta | Family::XlmRoberta | Family::Camembert | Family::Electra,
            ) => &[
                ("classifier.dense", "dense"),
                ("classifier.out_proj", "out_proj"),
            ],
            // DistilBertForSequenceClassification: first token -> pre_classifier -> ReLU ->
            // dropout -> classifier.
            (HeadClass::Sequence, Family::Distilbert) => {
                &[("pre_classifier", "dense"), ("classifier", "out_proj")]
            }
            // DebertaV2ForSequenceClassification: ContextPooler (first token -> dropout ->
            // dense -> pooler_hidden_act), at the top level of the checkpoint, -> dropout ->
            // classifier.
            (HeadClass::Sequence, Family::DebertaV2) => {
                &[("pooler.dense", "dense"), ("classifier", "out_proj")]
            }
            // SequenceSummary ("last", projection, tanh) -> logits_proj.
            (HeadClass::Sequence, Family::Xlnet) => &[
                ("sequence_summary.summary", "dense"),
                ("logits_proj", "out_proj"),
            ],
            (HeadClass::Token, _) => &[("classifier", "classifier")],
            (HeadClass::Qa, _) => &[("qa_outputs", "qa_outputs")],
        }
    }

    /// Whether the class keeps BERT's pooler (the others are built with `add_pooling_layer=False`).
    fn keeps_pooler(self, head: HeadClass) -> bool {
        self == Family::Bert && head == HeadClass::Sequence
    }
}

fn head_class(kind: TaskKind) -> Option<HeadClass> {
    match kind {
        TaskKind::Classification
        | TaskKind::PairClassification
        | TaskKind::Regression
        | TaskKind::MultiLabel => Some(HeadClass::Sequence),
        TaskKind::Token => Some(HeadClass::Token),
        TaskKind::Qa => Some(HeadClass::Qa),
    }
}

fn config_fields(config: &ModelConfig) -> (&[String], &serde_json::Map<String, serde_json::Value>) {
    match config {
        ModelConfig::Bert(c) => (&c.architectures, &c.extra),
        ModelConfig::Xlnet(c) => (&c.architectures, &c.extra),
        ModelConfig::ModernBert(c) => (&c.architectures, &c.extra),
        ModelConfig::DebertaV2(c) => (&c.architectures, &c.extra),
    }
}

/// Labels in id order from `id2label` (`{"0": "negative", ...}`), else `LABEL_i` for
/// `num_labels` (transformers' defaults).
fn labels_of(
    extra: &serde_json::Map<String, serde_json::Value>,
    path: &Path,
) -> Result<Vec<String>> {
    let bad = |msg: String| Error::Config {
        path: path.to_path_buf(),
        msg,
    };
    if let Some(map) = extra.get("id2label") {
        let map = map
            .as_object()
            .ok_or_else(|| bad("`id2label` must be an object of id -> label".into()))?;
        let mut labels = vec![None; map.len()];
        for (k, v) in map {
            let i: usize = k.parse().ok().filter(|i| *i < map.len()).ok_or_else(|| {
                bad(format!(
                    "`id2label`: key \"{k}\" is not an id below {}",
                    map.len()
                ))
            })?;
            let name = v
                .as_str()
                .ok_or_else(|| bad(format!("`id2label`.\"{k}\" must be a string")))?;
            labels[i] = Some(name.to_string());
        }
        return Ok(labels.into_iter().flatten().collect());
    }
    let n = extra
        .get("num_labels")
        .and_then(|v| v.as_u64())
        .unwrap_or(2) as usize;
    Ok((0..n).map(|i| format!("LABEL_{i}")).collect())
}

/// The task a transformers task class in `config.json` stands for, with its head's tensors
/// moved from transformers' names to prism's in `source`. `None` for a bare encoder or a
/// pre-training class (`*ForMaskedLM`, `XLNetLMHeadModel`), which have no task head.
pub fn adopt(dir: &Path, config: &ModelConfig, source: &mut Source) -> Result<Option<TaskSpec>> {
    let config_path = dir.join("config.json");
    let (archs, extra) = config_fields(config);
    let Some(arch) = archs.first() else {
        return Ok(None);
    };
    let family = Family::of(config);
    let head = [HeadClass::Sequence, HeadClass::Token, HeadClass::Qa]
        .into_iter()
        .find(|h| family.class_name(*h) == *arch);
    let Some(head) = head else {
        let pretraining = arch == config.base_architecture()
            || arch.ends_with("ForMaskedLM")
            || arch.ends_with("LMHeadModel")
            || arch.ends_with("ForPreTraining");
        if pretraining {
            return Ok(None);
        }
        let known: Vec<String> = [HeadClass::Sequence, HeadClass::Token, HeadClass::Qa]
            .iter()
            .map(|h| family.class_name(*h))
            .collect();
        return Err(Error::Config {
            path: config_path,
            msg: format!(
                "`architectures`: {arch} has a head prism does not read (it reads {}, a bare {} \
                 and the masked-LM classes)",
                known.join(", "),
                config.base_architecture()
            ),
        });
    };
    let labels = labels_of(extra, &config_path)?;
    let problem = extra.get("problem_type").and_then(|v| v.as_str());
    let kind = match head {
        HeadClass::Sequence => match problem {
            Some("regression") => TaskKind::Regression,
            None if labels.len() == 1 => TaskKind::Regression,
            Some("multi_label_classification") => TaskKind::MultiLabel,
            _ => TaskKind::Classification,
        },
        HeadClass::Token => TaskKind::Token,
        HeadClass::Qa => TaskKind::Qa,
    };
    let name = pipeline_task(kind);
    for (hf, ours) in family.head_keys(head) {
        for part in ["weight", "bias"] {
            let from = format!("{hf}.{part}");
            let Some(t) = source.tensors.remove(&from) else {
                // ModernBERT's head layers may have no bias (`classifier_bias`, `norm_bias`).
                if part == "bias" && family == Family::ModernBert {
                    continue;
                }
                return Err(Error::Checkpoint {
                    path: source.path.clone(),
                    msg: format!("missing weight `{from}` of the {arch} head"),
                });
            };
            source
                .tensors
                .insert(format!("prism.heads.{name}.{ours}.{part}"), t);
        }
    }
    if family == Family::Bert
        && head == HeadClass::Sequence
        && !source.tensors.contains_key("pooler.dense.weight")
    {
        return Err(Error::Checkpoint {
            path: source.path.clone(),
            msg: format!(
                "missing weight `bert.pooler.dense.weight` (the {arch} head reads the pooler)"
            ),
        });
    }
    if !family.keeps_pooler(head) {
        // transformers builds these classes without a pooler and ignores a stale one.
        source.tensors.retain(|k, _| !k.starts_with("pooler."));
    }
    let labels = if kind == TaskKind::Regression || kind == TaskKind::Qa {
        Vec::new()
    } else {
        labels
    };
    Ok(Some(TaskSpec {
        name: name.into(),
        kind,
        labels,
        max_length: config.max_tokens().min(512),
        // transformers' question-answering pipeline overlaps windows by 128 of 384 tokens.
        doc_stride: (config.max_tokens().min(512) / 3).min(128),
        max_question_length: None,
        threshold: None,
    }))
}

/// What [`export_tensors`] wrote and left out.
pub struct Export {
    pub architecture: String,
    /// The folder's `config.json` keys that make it that class.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Checkpoint tensors under transformers' names.
    pub tensors: Vec<(String, candle_core::Tensor)>,
    /// Tensors of the prism model that the class has no place for (other tasks' heads, DANN
    /// domain heads, pre-training heads, a pooler the class does not build).
    pub dropped: Vec<String>,
}

/// One task's encoder and head under the names of transformers' class for its kind.
/// `tensors`: every tensor of the prism model by its prism checkpoint name.
pub fn export_tensors(
    config: &ModelConfig,
    spec: &TaskSpec,
    tensors: Vec<(String, candle_core::Tensor)>,
) -> Result<Export> {
    let family = Family::of(config);
    let head = head_class(spec.kind).ok_or_else(|| {
        Error::Input(format!(
            "task `{}` ({:?}) has no transformers class",
            spec.name, spec.kind
        ))
    })?;
    let prefix = format!("prism.heads.{}.", spec.name);
    let keys = family.head_keys(head);
    let mut out = Vec::new();
    let mut dropped = Vec::new();
    let mut found = 0;
    for (k, t) in tensors {
        if let Some(rest) = k.strip_prefix(&prefix) {
            let mapped = keys.iter().find_map(|(hf, ours)| {
                rest.strip_prefix(ours)
                    .and_then(|p| p.strip_prefix('.'))
                    .map(|part| format!("{hf}.{part}"))
            });
            match mapped {
                Some(name) => {
                    found += 1;
                    out.push((name, t));
                }
                None => dropped.push(k),
            }
        } else if k.starts_with("prism.")
            || crate::checkpoint::is_head_key(&k)
            || (k.starts_with("pooler.") && !family.keeps_pooler(head))
        {
            dropped.push(k);
        } else {
            let k = if family == Family::Distilbert {
                crate::models::distilbert::from_bert_key(&k)
            } else {
                k
            };
            out.push((format!("{}{k}", family.base_prefix()), t));
        }
    }
    let weights = out
        .iter()
        .filter(|(k, _)| keys.iter().any(|(hf, _)| *k == format!("{hf}.weight")))
        .count();
    let complete = if family == Family::ModernBert {
        weights == keys.len()
    } else {
        found == 2 * keys.len()
    };
    if !complete {
        return Err(Error::Input(format!(
            "task `{}`: its head is not the {} head (a head on an encoder with a pooler \
             exported as RoBERTa's, or one written by another prism version)",
            spec.name,
            family.class_name(head)
        )));
    }
    let architecture = family.class_name(head);
    let mut cfg = serde_json::Map::new();
    cfg.insert("architectures".into(), serde_json::json!([architecture]));
    match spec.kind {
        TaskKind::Classification
        | TaskKind::PairClassification
        | TaskKind::Token
        | TaskKind::MultiLabel => {
            let id2label: serde_json::Map<String, serde_json::Value> = spec
                .labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), serde_json::json!(l)))
                .collect();
            let label2id: serde_json::Map<String, serde_json::Value> = spec
                .labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), serde_json::json!(i)))
                .collect();
            cfg.insert("id2label".into(), id2label.into());
            cfg.insert("label2id".into(), label2id.into());
            if spec.kind == TaskKind::MultiLabel {
                cfg.insert("problem_type".into(), "multi_label_classification".into());
            } else if head == HeadClass::Sequence {
                cfg.insert("problem_type".into(), "single_label_classification".into());
            }
        }
        TaskKind::Regression => {
            cfg.insert("id2label".into(), serde_json::json!({"0": "LABEL_0"}));
            cfg.insert("label2id".into(), serde_json::json!({"LABEL_0": 0}));
            cfg.insert("problem_type".into(), "regression".into());
        }
        TaskKind::Qa => {}
    }
    dropped.sort();
    Ok(Export {
        architecture,
        config: cfg,
        tensors: out,
        dropped,
    })
}

/// Whether a head adopted as `adopted` can serve a task of kind `kind` (the same weights).
pub fn same_head(adopted: TaskKind, kind: TaskKind) -> bool {
    head_class(adopted) == head_class(kind)
        && (adopted == TaskKind::Regression) == (kind == TaskKind::Regression)
        && (adopted == TaskKind::MultiLabel) == (kind == TaskKind::MultiLabel)
}

/// Move an adopted head (see [`adopt`]) to the task `name` and put its output rows in the order
/// of `labels` (a permutation of the checkpoint's `id2label`), so that fine-tuning a
/// transformers task model in a config continues training its head.
pub fn retarget(
    source: &mut Source,
    adopted: &TaskSpec,
    name: &str,
    labels: &[String],
) -> Result<()> {
    let from = format!("prism.heads.{}.", adopted.name);
    let order: Option<Vec<u32>> = if adopted.labels.is_empty() {
        None
    } else {
        let mut sorted_a = adopted.labels.clone();
        let mut sorted_b = labels.to_vec();
        sorted_a.sort();
        sorted_b.sort();
        if sorted_a != sorted_b {
            return Err(Error::Checkpoint {
                path: source.path.clone(),
                msg: format!(
                    "the head's labels (id2label) are {:?}, the task `{name}` has {:?}: \
                     fine-tuning a head keeps its labels",
                    adopted.labels, labels
                ),
            });
        }
        Some(
            labels
                .iter()
                .map(|l| adopted.labels.iter().position(|a| a == l).unwrap_or(0) as u32)
                .collect(),
        )
    };
    // The output layer is the one whose rows are the labels.
    let out_layer = match adopted.kind {
        TaskKind::Token => "classifier",
        _ => "out_proj",
    };
    let keys: Vec<String> = source
        .tensors
        .keys()
        .filter(|k| k.starts_with(&from))
        .cloned()
        .collect();
    for k in keys {
        let Some(mut t) = source.tensors.remove(&k) else {
            continue;
        };
        let rest = &k[from.len()..];
        if let Some(order) = &order {
            if rest.starts_with(out_layer) {
                let idx = candle_core::Tensor::new(order.as_slice(), t.device())?;
                t = t.index_select(&idx, 0)?;
            }
        }
        source
            .tensors
            .insert(format!("prism.heads.{name}.{rest}"), t);
    }
    Ok(())
}
