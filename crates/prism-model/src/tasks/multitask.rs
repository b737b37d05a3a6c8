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
    };
    HeadShape {
        hidden: base.config.hidden_size(),
        has_pooler: match &base.encoder {
            AnyEncoder::Bert(b) => b.has_pooler(),
            AnyEncoder::Xlnet(_) => false,
        },
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

    /// Load a folder written by [`MultiTaskModel::save`] (or any HF folder, with no tasks).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let base = PretrainedModel::load(dir, device)?;
        let pj = dir.join("prism.json");
        let specs = if pj.is_file() {
            let text = std::fs::read_to_string(&pj).map_err(|e| Error::io(&pj, e))?;
            let p: PrismJson = serde_json::from_str(&text).map_err(|e| Error::Data {
                path: pj.clone(),
                line: e.line(),
                field: "(json)".into(),
                msg: e.to_string(),
            })?;
            p.tasks
        } else {
            Vec::new()
        };
        let model = Self::new(base, specs, 0)?;
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
    pub fn predict_text(&self, ti: usize, text: &str, text2: Option<&str>) -> Result<Prediction> {
        let spec = &self.tasks[ti].spec;
        if spec.kind.is_pair() && text2.is_none() {
            return Err(Error::Input(format!(
                "task `{}` ({:?}) needs a second text",
                spec.name, spec.kind
            )));
        }
        let examples = [Example::unlabelled(spec.kind, text, text2)];
        let feats = self.tasks[ti].encode(&examples)?;
        let mut p = self.predict(ti, &examples, &feats, 8)?;
        p.pop()
            .ok_or_else(|| Error::Input("the model returned no prediction".into()))
    }
}
