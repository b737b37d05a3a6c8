//! Supervised tasks on top of prism-model's task heads: labels to training targets
//! ([`featurize`]), padded batches, each kind's loss, and metrics on predictions ([`score`]).
//! What a saved model needs to *run* a task (specs, heads, decoding) lives in
//! `prism_model::tasks`.

mod featurize;
pub mod metrics;
mod score;

pub use crate::loss::{cross_entropy, log_softmax, masked_cross_entropy};
pub use featurize::{Batch, BatchTargets};
pub use prism_model::tasks::{Feature, FeatureTarget, Prediction, Task, TaskKind, TaskSpec};
pub use score::{EvalResult, Evaluate};

use crate::error::Result;
use crate::loss::LossConfig;
use candle_core::{Device, Tensor};
use prism_model::tasks::Example;
use prism_model::{EncoderOutput, Mode};
use std::path::Path;

/// What training adds to a model's task: targets from labels, batches, losses and metrics.
pub trait Supervised {
    /// Turn examples into features with their training targets. `path` names the file for
    /// error messages (an unknown label is an error naming its line and field).
    fn featurize(&self, examples: &[Example], path: &Path) -> Result<Vec<Feature>>;
    /// [`Supervised::featurize`] for evaluation: a sequence-level text longer than the task's
    /// `max_length` becomes overlapping windows (half a window shared), their probabilities
    /// averaged into the example's prediction, as `prism predict` and `prism serve` read it.
    fn featurize_for_eval(&self, examples: &[Example], path: &Path) -> Result<Vec<Feature>>;
    /// Pad features into a batch with its targets.
    fn batch(&self, feats: &[&Feature], device: &Device) -> Result<Batch>;
    /// The training loss of a batch (mean over examples, or tokens for tagging).
    fn loss(
        &self,
        loss: &LossConfig,
        enc: &EncoderOutput,
        batch: &Batch,
        mode: &Mode,
    ) -> Result<Tensor>;
    /// The loss of the head's output ([`Task::logits`]) for a batch; `loss` chooses the
    /// classification loss.
    fn loss_from_logits(&self, loss: &LossConfig, logits: &Tensor, batch: &Batch)
        -> Result<Tensor>;
    /// A symmetric divergence between two outputs of the head, for SMART and R-Drop:
    /// symmetric KL for classification, squared difference for regression.
    fn divergence(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// Metrics of predictions against the examples' targets.
    fn score(&self, examples: &[Example], preds: &[Prediction]) -> EvalResult;
}
