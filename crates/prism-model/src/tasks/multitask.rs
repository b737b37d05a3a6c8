//! A shared encoder with one head per task, saved as an HF folder plus `prism.json`.

use super::task::HeadShape;
use super::{Example, Feature, Prediction, Task, TaskSpec};
use crate::checkpoint::write_atomic;
use crate::error::{Error, Result};
use crate::{AnyEncoder, Encoder, Mode, ModelConfig, PretrainedModel};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `prism.json`: what prism needs beyond the HF files to use the task heads.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PrismJson {
    pub prism_version: String,
    pub tasks: Vec<TaskSpec>,
}

pub struct MultiTaskModel {
    pub base: PretrainedModel,
    pub tasks: Vec<Task>,
}

fn head_shape(base: &PretrainedModel) -> HeadShape {
    let (dropout, init_std) = match &base.config {
        ModelConfig::Bert(c) => (c.hidden_dropout_prob, c.initializer_range),
        ModelConfig::Xlnet(c) => (c.dropout, c.initializer_range),
        ModelConfig::ModernBert(c) => (
            c.extra
                .get("classifier_dropout")
                .and_then(|v| v.as_f64())
                .unwrap_or(0.0),
            c.initializer_range,
        ),
        ModelConfig::DebertaV2(c) => (c.hidden_dropout_prob, c.initializer_range),
    };
    let modern = match &base.config {
        ModelConfig::ModernBert(c) => {
            let flag = |k: &str| c.extra.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
            let act = c
                .extra
                .get("classifier_activation")
                .and_then(|v| v.as_str())
                .unwrap_or("gelu");
            Some(crate::heads::PredictionSpec {
                dense_bias: flag("classifier_bias"),
                norm_bias: c.norm_bias,
                eps: c.norm_eps,
                // An unknown activation was refused by the config's validation.
                act: crate::models::bert::Activation::parse(act)
                    .unwrap_or(crate::models::bert::Activation::Gelu),
                dropout,
                pooling: match c.extra.get("classifier_pooling").and_then(|v| v.as_str()) {
                    Some("mean") => crate::heads::Pooling::Mean,
                    _ => crate::heads::Pooling::Cls,
                },
            })
        }
        _ => None,
    };
    HeadShape {
        hidden: base.config.hidden_size(),
        has_pooler: match &base.encoder {
            AnyEncoder::Bert(b) => b.has_pooler(),
            AnyEncoder::Xlnet(_) | AnyEncoder::ModernBert(_) | AnyEncoder::DebertaV2(_) => false,
        },
        pooler_head: match &base.config {
            ModelConfig::Bert(c) => c.flavor() == crate::models::bert::Flavor::Bert,
            ModelConfig::Xlnet(_) | ModelConfig::ModernBert(_) | ModelConfig::DebertaV2(_) => false,
        },
        dense_act: match &base.config {
            ModelConfig::Bert(c) if c.is_electra() => crate::heads::DenseAct::Gelu,
            ModelConfig::Bert(c) if c.model_type == "distilbert" => crate::heads::DenseAct::Relu,
            // ContextPooler's `pooler_hidden_act` (validated: gelu, tanh or relu).
            ModelConfig::DebertaV2(c) => {
                match c.extra.get("pooler_hidden_act").and_then(|v| v.as_str()) {
                    Some("tanh") => crate::heads::DenseAct::Tanh,
                    Some("relu") => crate::heads::DenseAct::Relu,
                    _ => crate::heads::DenseAct::Gelu,
                }
            }
            _ => crate::heads::DenseAct::Tanh,
        },
        seq_dropout: match &base.config {
            ModelConfig::Bert(c) => c
                .extra
                .get("seq_classif_dropout")
                .and_then(|v| v.as_f64())
                .unwrap_or(dropout),
            // DebertaV2ForSequenceClassification: `cls_dropout`, else the hidden dropout.
            ModelConfig::DebertaV2(c) => c
                .extra
                .get("cls_dropout")
                .and_then(|v| v.as_f64())
                .unwrap_or(dropout),
            ModelConfig::Xlnet(_) | ModelConfig::ModernBert(_) => dropout,
        },
        // ContextPooler's own dropout before its dense layer (`pooler_dropout`, default 0).
        pooler_dropout: match &base.config {
            ModelConfig::DebertaV2(c) => Some(
                c.extra
                    .get("pooler_dropout")
                    .and_then(|v| v.as_f64())
                    .unwrap_or(0.0),
            ),
            _ => None,
        },
        modern,
        dropout,
        init_std,
    }
}

impl MultiTaskModel {
    /// Put heads for `specs` on `base`; heads found in the checkpoint are loaded, others are
    /// initialised from `seed`.
    pub fn new(base: PretrainedModel, specs: Vec<TaskSpec>, seed: u64) -> Result<Self> {
        base.params.reseed(seed);
        Self::with_heads(base, specs)
    }

    /// Heads for `specs` on `base`, drawing any new parameter from the store's generator as it
    /// stands (no reseed).
    fn with_heads(base: PretrainedModel, specs: Vec<TaskSpec>) -> Result<Self> {
        let tok = base.tokenizer()?.clone();
        let shape = head_shape(&base);
        let root = base.params.root();
        let tasks = specs
            .into_iter()
            .map(|s| Task::new(s, &root, &tok, shape))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { base, tasks })
    }

    /// Load a folder written by [`MultiTaskModel::save`]; a folder of a transformers task class
    /// (`BertForSequenceClassification`, `…ForTokenClassification`, `…ForQuestionAnswering`)
    /// as that one task ([`super::transformers::adopt`]); any other HF folder with no tasks.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let pj = dir.join("prism.json");
        if !pj.is_file() {
            let mut spec = None;
            let base = PretrainedModel::load_mapped(dir, device, |config, source| {
                spec = super::transformers::adopt(dir, config, source)?;
                Ok(())
            })?;
            return Self::new(base, spec.into_iter().collect(), 0);
        }
        let base = PretrainedModel::load(dir, device)?;
        let specs = {
            let text = std::fs::read_to_string(&pj).map_err(|e| Error::io(&pj, e))?;
            let p: PrismJson = serde_json::from_str(&text).map_err(|e| Error::Data {
                path: pj.clone(),
                line: e.line(),
                field: "(json)".into(),
                msg: e.to_string(),
            })?;
            p.tasks
        };
        // A task prism.json describes badly (no labels, a bad name) is its error.
        let model = Self::new(base, specs, 0).map_err(|e| match e {
            Error::InvalidConfig(msg) => Error::Config {
                path: pj.clone(),
                msg,
            },
            other => other,
        })?;
        // Every head must have come from the checkpoint: a missing head tensor means a damaged folder.
        let vars = model.base.params.vars();
        for t in &model.tasks {
            let prefix = format!("prism.heads.{}.", t.spec.name);
            let mut names = vars
                .iter()
                .map(|(k, _)| k)
                .filter(|k| k.starts_with(&prefix));
            let complete = names
                .clone()
                .next()
                .is_some_and(|_| names.all(|k| model.base.params.source_has(k)));
            if !complete {
                return Err(Error::Checkpoint {
                    path: dir.to_path_buf(),
                    msg: format!(
                        "prism.json lists task `{}` but its head weights `{prefix}*` are missing",
                        t.spec.name
                    ),
                });
            }
        }
        Ok(model)
    }

    /// The same model and heads with frozen parameters (shared storage): backward passes reach
    /// the inputs only, with no weight gradients. What explanations need, at about two thirds
    /// of the backward cost.
    pub fn frozen(&self) -> Result<Self> {
        self.rebuilt_with(self.base.frozen()?)
    }

    /// [`MultiTaskModel::frozen`] with the encoder's and heads' linear layers in bf16 on AMX,
    /// forward and input gradients (a snapshot of the weights); `frozen()` on a CPU without
    /// AMX-BF16 or another device.
    pub fn frozen_bf16(&self) -> Result<Self> {
        self.rebuilt_with(self.base.frozen_bf16()?)
    }

    fn rebuilt_with(&self, base: PretrainedModel) -> Result<Self> {
        let specs = self.tasks.iter().map(|t| t.spec.clone()).collect();
        // No reseed: the store (and its generator) is shared with the model being trained.
        Self::with_heads(base, specs)
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        self.base.save(dir)?;
        let pj = PrismJson {
            prism_version: env!("CARGO_PKG_VERSION").into(),
            tasks: self.tasks.iter().map(|t| t.spec.clone()).collect(),
        };
        let path = dir.join("prism.json");
        let text = serde_json::to_string_pretty(&pj).map_err(|e| Error::Checkpoint {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        write_atomic(&path, text.as_bytes())
    }

    /// Write task `ti` as the folder of transformers' class for its kind (`config.json` with
    /// `architectures`, `id2label`/`label2id`, `problem_type`; the encoder and the head under
    /// transformers' names; the tokenizer files), loadable by `AutoModelFor…` and `pipeline()`
    /// with no missing or unexpected weights. Returns what was written and what was left out.
    pub fn export_transformers(
        &self,
        ti: usize,
        dir: &Path,
    ) -> Result<super::transformers::Export> {
        let spec = &self.tasks[ti].spec;
        // Parameters, then the checkpoint's other head tensors (a head that became a parameter
        // is in both: its trained value wins).
        let mut tensors: Vec<(String, candle_core::Tensor)> =
            self.base.params.tensors().into_iter().collect();
        let names: std::collections::BTreeSet<String> =
            tensors.iter().map(|(k, _)| k.clone()).collect();
        tensors.extend(
            self.base
                .head_tensors
                .iter()
                .filter(|(k, _)| !names.contains(k))
                .cloned(),
        );
        let export = super::transformers::export_tensors(&self.base.config, spec, tensors)?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut map = std::collections::HashMap::new();
        for (k, v) in &export.tensors {
            map.insert(k.clone(), v.contiguous()?);
        }
        crate::checkpoint::write_safetensors(dir, &map)?;
        let mut config = self.base.config.clone();
        let (archs, extra) = match &mut config {
            ModelConfig::Bert(c) => (&mut c.architectures, &mut c.extra),
            ModelConfig::Xlnet(c) => (&mut c.architectures, &mut c.extra),
            ModelConfig::ModernBert(c) => (&mut c.architectures, &mut c.extra),
            ModelConfig::DebertaV2(c) => (&mut c.architectures, &mut c.extra),
        };
        *archs = vec![export.architecture.clone()];
        for k in ["id2label", "label2id", "problem_type", "num_labels"] {
            extra.remove(k);
        }
        for (k, v) in &export.config {
            if k != "architectures" {
                extra.insert(k.clone(), v.clone());
            }
        }
        write_atomic(&dir.join("config.json"), config.to_json()?.as_bytes())?;
        self.base.save_tokenizer(dir)?;
        Ok(export)
    }

    pub fn task_index(&self, name: &str) -> Result<usize> {
        self.tasks
            .iter()
            .position(|t| t.spec.name == name)
            .ok_or_else(|| {
                let names: Vec<_> = self.tasks.iter().map(|t| t.spec.name.as_str()).collect();
                Error::Input(format!("no task `{name}` (tasks: {})", names.join(", ")))
            })
    }

    /// Predictions of task `ti` for `examples`.
    pub fn predict(
        &self,
        ti: usize,
        examples: &[Example],
        feats: &[Feature],
        batch_size: usize,
    ) -> Result<Vec<Prediction>> {
        let dev = self.base.params.device().clone();
        let enc = &self.base.encoder;
        self.tasks[ti].predict(examples, feats, batch_size, &dev, |input| {
            enc.forward(input, &Mode::Eval)
        })
    }

    /// The prediction of task `ti` for one raw input (a text, or a pair for pair tasks; words
    /// split on whitespace for tagging).
    /// The second text task `ti` reads when a user gives `text2` for a prediction of every
    /// task: pair tasks read it; a sequence-level single-text task (classification,
    /// multi-label, regression) reads it only when it is the model's one task or was `chosen`
    /// by name, so that the other heads of a multi-task model keep predicting from the text.
    pub fn second_text<'a>(
        &self,
        ti: usize,
        text2: Option<&'a str>,
        chosen: bool,
    ) -> Option<&'a str> {
        let kind = self.tasks[ti].spec.kind;
        let single = self.tasks.len() == 1 || chosen;
        text2.filter(|_| kind.is_pair() || (single && kind.is_sequence_level()))
    }

    pub fn predict_text(&self, ti: usize, text: &str, text2: Option<&str>) -> Result<Prediction> {
        let spec = &self.tasks[ti].spec;
        if spec.kind.is_pair() && text2.is_none() {
            return Err(Error::Input(format!(
                "task `{}` ({:?}) needs a second text",
                spec.name, spec.kind
            )));
        }
        let examples = [Example::unlabelled(spec.kind, text, text2)];
        // A text longer than the task's max_length is read in overlapping windows.
        let feats = self.tasks[ti].encode_windowed(&examples, None)?;
        let mut p = self.predict(ti, &examples, &feats, 8)?;
        p.pop()
            .ok_or_else(|| Error::Input("the model returned no prediction".into()))
    }
}
