//! A downstream probe while pre-training (`[probe]`): at each evaluation, a linear classifier
//! (softmax regression, full-batch AdamW from zero weights on standardised features) is
//! trained on the frozen encoder's pooled features of a labelled task's training examples and
//! scored on its dev examples. Logged in `metrics.jsonl` (`"split": "probe"`) and drawn in
//! `report.html` beside perplexity, with the value of the model pre-training starts from
//! (random initialisation for a fresh model) at step 0, so a user sees whether pre-training is
//! producing usable features long before fine-tuning.

use crate::data::{read_file, Example, Fields, Target, TargetKind};
use crate::error::{Error, Result};
use crate::loss::cross_entropy;
use crate::optim::{AdamW, AdamWConfig};
use crate::rng::{rng_for, Stream};
use candle_core::{DType, Device, Tensor, Var, D};
use prism_model::{Encoder, EncoderInput, Mode, PretrainedModel, PrismTokenizer};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

fn d_train() -> usize {
    2000
}
fn d_eval() -> usize {
    500
}
fn d_steps() -> usize {
    300
}
fn d_lr() -> f64 {
    0.05
}
fn d_max_len() -> usize {
    128
}

/// How the probe pools token features.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbePooling {
    /// The mean over the real tokens.
    #[default]
    Mean,
    /// The first token (`[CLS]`).
    Cls,
}

/// `[probe]`: the labelled task and the classifier's budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// A fetched data set subset, `NAME/SUBSET` (e.g. `vader/movie_binary`): its train and dev
    /// files.
    #[serde(default)]
    pub data: Option<String>,
    #[serde(default)]
    pub train: Option<PathBuf>,
    #[serde(default)]
    pub dev: Option<PathBuf>,
    #[serde(default)]
    pub fields: Fields,
    #[serde(default)]
    pub pooling: ProbePooling,
    /// Training examples the classifier sees (a seeded subset).
    #[serde(default = "d_train")]
    pub max_train_examples: usize,
    /// Dev examples it is scored on.
    #[serde(default = "d_eval")]
    pub max_eval_examples: usize,
    /// Tokens per example.
    #[serde(default = "d_max_len")]
    pub max_length: usize,
    /// Full-batch AdamW steps of the classifier.
    #[serde(default = "d_steps")]
    pub steps: usize,
    #[serde(default = "d_lr")]
    pub lr: f64,
}

impl ProbeConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        match (&self.data, &self.train, &self.dev) {
            (Some(_), None, None) | (None, Some(_), Some(_)) => {}
            _ => {
                return Err(
                    "[probe]: give `data = \"NAME/SUBSET\"`, or both `train` and `dev` files"
                        .into(),
                )
            }
        }
        for (k, v) in [
            ("max_train_examples", self.max_train_examples),
            ("max_eval_examples", self.max_eval_examples),
            ("steps", self.steps),
        ] {
            if v == 0 {
                return Err(format!("`probe.{k}` must be at least 1"));
            }
        }
        if self.max_length < 8 {
            return Err(format!(
                "`probe.max_length` {} must be at least 8",
                self.max_length
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!(
                "`probe.lr` {} must be a finite number above 0",
                self.lr
            ));
        }
        Ok(())
    }
}

/// One probe score.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProbeResult {
    /// Dev accuracy of the linear classifier.
    pub accuracy: f64,
    /// Its accuracy on the examples it was trained on.
    pub train_accuracy: f64,
    /// The accuracy of always answering the most frequent training label.
    pub majority_accuracy: f64,
    pub train_examples: usize,
    pub dev_examples: usize,
}

/// The probe's examples, tokenised once.
pub struct Probe {
    cfg: ProbeConfig,
    train: Vec<(Vec<u32>, usize)>,
    dev: Vec<(Vec<u32>, usize)>,
    classes: usize,
    pad_id: u32,
}

fn read(path: &std::path::Path, fields: &Fields) -> Result<Vec<Example>> {
    read_file(path, fields, TargetKind::Label, false)
}

impl Probe {
    /// Read and tokenise the probe's data with the model's tokenizer.
    pub fn load(cfg: &ProbeConfig, tok: &PrismTokenizer, seed: u64) -> Result<Self> {
        let (train_path, dev_path) = match (&cfg.data, &cfg.train, &cfg.dev) {
            (Some(spec), _, _) => (
                crate::trainer::prepare::resolve_spec(spec, "train")?,
                crate::trainer::prepare::resolve_spec(spec, "dev")?,
            ),
            (None, Some(t), Some(d)) => (t.clone(), d.clone()),
            _ => return Err(Error::Config(ProbeConfig::validate(cfg).unwrap_err())),
        };
        let mut train = read(&train_path, &cfg.fields)?;
        let mut dev = read(&dev_path, &cfg.fields)?;
        let mut labels: Vec<String> = train
            .iter()
            .filter_map(|e| match &e.target {
                Target::Label(l) => Some(l.clone()),
                _ => None,
            })
            .collect();
        labels.sort();
        labels.dedup();
        if labels.len() < 2 {
            return Err(Error::File {
                path: train_path,
                msg: format!(
                    "the probe needs a classification set with at least two labels, found {labels:?}"
                ),
            });
        }
        let mut rng = rng_for(seed, Stream::Probe, 0);
        train.shuffle(&mut rng);
        dev.shuffle(&mut rng);
        train.truncate(cfg.max_train_examples);
        dev.truncate(cfg.max_eval_examples);
        let tok = tok.clone().with_max_len(cfg.max_length)?;
        let encode = |set: &[Example], path: &std::path::Path| -> Result<Vec<(Vec<u32>, usize)>> {
            set.iter()
                .map(|e| {
                    let Target::Label(l) = &e.target else {
                        return Err(Error::data(path, e.line, "label", "missing"));
                    };
                    let class = labels.iter().position(|x| x == l).ok_or_else(|| {
                        Error::data(
                            path,
                            e.line,
                            "label",
                            format!("{l:?} is not a training label ({})", labels.join(", ")),
                        )
                    })?;
                    Ok((tok.encode(&e.text, None)?.ids, class))
                })
                .collect()
        };
        Ok(Self {
            cfg: cfg.clone(),
            train: encode(&train, &train_path)?,
            dev: encode(&dev, &dev_path)?,
            classes: labels.len(),
            pad_id: tok.pad_id(),
        })
    }

    /// Pooled features of `set` from `frozen` (a [`PretrainedModel::frozen`] copy), (N, C).
    fn features(&self, frozen: &PretrainedModel, set: &[(Vec<u32>, usize)]) -> Result<Tensor> {
        let device = frozen.params.device().clone();
        let mut rows = Vec::new();
        for chunk in set.chunks(32) {
            let t = chunk.iter().map(|(ids, _)| ids.len()).max().unwrap_or(1);
            let (mut ids, mut mask) = (Vec::new(), Vec::new());
            for (x, _) in chunk {
                ids.extend_from_slice(x);
                ids.extend(std::iter::repeat_n(self.pad_id, t - x.len()));
                mask.extend(std::iter::repeat_n(1u32, x.len()));
                mask.extend(std::iter::repeat_n(0u32, t - x.len()));
            }
            let b = chunk.len();
            let ids = Tensor::from_vec(ids, (b, t), &device)?;
            let m = Tensor::from_vec(mask, (b, t), &device)?;
            let input =
                EncoderInput::new(ids.clone(), m.clone()).with_token_type_ids(ids.zeros_like()?);
            let h = frozen
                .encoder
                .forward(&input, &Mode::Eval)?
                .last_hidden_state; // (B, T, C)
            let pooled = match self.cfg.pooling {
                ProbePooling::Cls => h.narrow(1, 0, 1)?.squeeze(1)?,
                ProbePooling::Mean => {
                    let mf = m.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
                    (h.broadcast_mul(&mf)?.sum(1)?).broadcast_div(&mf.sum(1)?)?
                }
            };
            rows.push(pooled.detach());
        }
        Ok(Tensor::cat(&rows, 0)?)
    }

    /// Train the linear classifier on the model's features and score it.
    pub fn evaluate(&self, model: &PretrainedModel) -> Result<ProbeResult> {
        let device = Device::Cpu;
        // One frozen copy (no graph, weights transposed once) for both sets.
        let frozen = model.frozen()?;
        let xtr = self.features(&frozen, &self.train)?.to_device(&device)?;
        let xdev = self.features(&frozen, &self.dev)?.to_device(&device)?;
        // Standardise with the training features' statistics.
        let mean = xtr.mean_keepdim(0)?;
        let std = (xtr.broadcast_sub(&mean)?.sqr()?.mean_keepdim(0)? + 1e-6)?.sqrt()?;
        let norm =
            |x: &Tensor| -> Result<Tensor> { Ok(x.broadcast_sub(&mean)?.broadcast_div(&std)?) };
        let (xtr, xdev) = (norm(&xtr)?, norm(&xdev)?);
        let c = xtr.dim(1)?;
        let k = self.classes;
        let w = Var::zeros((c, k), DType::F32, &device)?;
        let b = Var::zeros(k, DType::F32, &device)?;
        let ytr: Vec<u32> = self.train.iter().map(|(_, y)| *y as u32).collect();
        let targets = Tensor::new(ytr.as_slice(), &device)?;
        let mut opt = AdamW::new(
            vec![
                ("probe.weight".into(), w.clone()),
                ("probe.bias".into(), b.clone()),
            ],
            AdamWConfig {
                weight_decay: 0.01,
                ..AdamWConfig::default()
            },
        );
        let logits = |x: &Tensor| -> Result<Tensor> {
            Ok(x.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?)
        };
        for _ in 0..self.cfg.steps {
            let loss = cross_entropy(&logits(&xtr)?, &targets)?;
            let grads = loss.backward()?;
            opt.step(&grads, self.cfg.lr, 1.0)?;
        }
        let accuracy = |x: &Tensor, set: &[(Vec<u32>, usize)]| -> Result<f64> {
            let pred: Vec<u32> = logits(x)?.argmax(1)?.to_vec1()?;
            let right = pred
                .iter()
                .zip(set)
                .filter(|(p, (_, y))| **p as usize == *y)
                .count();
            Ok(right as f64 / set.len().max(1) as f64)
        };
        let mut counts = vec![0usize; k];
        for (_, y) in &self.train {
            counts[*y] += 1;
        }
        let majority = counts
            .iter()
            .enumerate()
            .max_by_key(|(i, n)| (**n, std::cmp::Reverse(*i)))
            .map_or(0, |(i, _)| i);
        let majority_accuracy = self.dev.iter().filter(|(_, y)| *y == majority).count() as f64
            / self.dev.len().max(1) as f64;
        Ok(ProbeResult {
            accuracy: accuracy(&xdev, &self.dev)?,
            train_accuracy: accuracy(&xtr, &self.train)?,
            majority_accuracy,
            train_examples: self.train.len(),
            dev_examples: self.dev.len(),
        })
    }
}
