//! How the tasks of one update are combined (`[multitask]` in a fine-tuning config): loss
//! weighting and gradient surgery, the methods LibMTL collects for PyTorch, one file each and
//! registered by name in [`build`].
//!
//! With `tasks_per_update = k > 1` every micro-batch draws k distinct tasks, runs each task on
//! its own batch with one backward pass per task, and hands the method what it needs of the k
//! gradients: the task losses and the Gram matrix of the shared encoder's gradients
//! (G_ij = g_i . g_j over every parameter outside the task heads), plus each task's gradient
//! norm on the encoder's last layer (GradNorm). A method answers with coefficients: the shared
//! encoder's gradient is `sum_i shared[i] g_i`, task i's head gets `heads[i]` times its own
//! gradient. Every method here — PCGrad's projections, CAGrad's and MGDA's solutions — yields
//! the shared gradient as such a linear combination, so it is computed from the Gram matrix
//! and applied in one pass over the parameters, without flattening the gradients.
//!
//! Stateful methods (DWA's loss history, GradNorm's initial losses) update in
//! [`Weighting::observe`] from the update's losses of every rank, so data-parallel ranks and a
//! resumed run see the same state; learned weights (uncertainty, GradNorm) are parameters the
//! optimiser steps, kept in the run's checkpoint.

mod cagrad;
mod dwa;
mod equal;
mod gradnorm;
pub mod grads;
mod mgda;
mod pcgrad;
mod rlw;
pub mod simplex;
mod uncertainty;

pub use cagrad::CaGrad;
pub use dwa::Dwa;
pub use equal::Equal;
pub use gradnorm::GradNorm;
pub use mgda::Mgda;
pub use pcgrad::PcGrad;
pub use rlw::Rlw;
pub use uncertainty::Uncertainty;

use crate::error::{Error, Result};
use candle_core::{Tensor, Var};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

/// `[multitask]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultitaskConfig {
    /// Distinct tasks per micro-batch (1: one sampled task per micro-batch, as `[sampling]`
    /// draws it; more: that many distinct tasks, each on its own batch, combined by `weighting`).
    #[serde(default = "d_one")]
    pub tasks_per_update: usize,
    /// How the tasks' losses or gradients are combined: equal (each task's `weight`),
    /// uncertainty, dwa, gradnorm, rlw, pcgrad, cagrad, mgda.
    #[serde(default)]
    pub weighting: Method,
    /// DWA's temperature T.
    #[serde(default = "d_dwa_t")]
    pub dwa_temperature: f64,
    /// DWA's "epoch": the loss ratios compare the mean losses of consecutive windows of this
    /// many updates.
    #[serde(default = "d_dwa_window")]
    pub dwa_window: usize,
    /// GradNorm's asymmetry alpha.
    #[serde(default = "d_alpha")]
    pub gradnorm_alpha: f64,
    /// CAGrad's c (the radius of the ball around the mean gradient, relative to its norm).
    #[serde(default = "d_c")]
    pub cagrad_c: f64,
}

fn d_one() -> usize {
    1
}
fn d_dwa_t() -> f64 {
    2.0
}
fn d_dwa_window() -> usize {
    20
}
fn d_alpha() -> f64 {
    1.5
}
fn d_c() -> f64 {
    0.4
}

impl Default for MultitaskConfig {
    fn default() -> Self {
        Self {
            tasks_per_update: 1,
            weighting: Method::default(),
            dwa_temperature: d_dwa_t(),
            dwa_window: d_dwa_window(),
            gradnorm_alpha: d_alpha(),
            cagrad_c: d_c(),
        }
    }
}

impl MultitaskConfig {
    pub fn validate(&self, tasks: usize) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("[multitask] {m}")));
        if self.tasks_per_update == 0 || self.tasks_per_update > tasks {
            return bad(format!(
                "`tasks_per_update = {}` must be between 1 and the {tasks} tasks",
                self.tasks_per_update
            ));
        }
        if self.weighting != Method::Equal && self.tasks_per_update < 2 {
            return bad(format!(
                "`weighting = \"{}\"` combines several tasks per update: set `tasks_per_update` to 2 or more",
                self.weighting.name()
            ));
        }
        if !(self.dwa_temperature > 0.0) || self.dwa_window == 0 {
            return bad("`dwa_temperature` and `dwa_window` must be positive".into());
        }
        if !(self.gradnorm_alpha >= 0.0) || !(self.cagrad_c >= 0.0) {
            return bad("`gradnorm_alpha` and `cagrad_c` must be at least 0".into());
        }
        Ok(())
    }
}

/// The registered methods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Each task's loss times its fixed `weight` (1 by default), summed.
    #[default]
    Equal,
    /// Kendall et al. 2018: learned log-variances s_i, loss sum_i L_i / (2 e^s_i) + s_i / 2.
    Uncertainty,
    /// Liu et al. 2019, dynamic weight average: K softmax(r / T), r_i the ratio of task i's
    /// last two window losses.
    Dwa,
    /// Chen et al. 2018: weights learned so that the weighted gradient norms on the last shared
    /// layer follow each task's relative training rate.
    Gradnorm,
    /// Lin et al. 2021, random loss weighting: softmax of a standard normal draw per update.
    Rlw,
    /// Yu et al. 2020: each task's shared gradient projected off the others it conflicts with.
    Pcgrad,
    /// Liu et al. 2021, conflict-averse gradient descent.
    Cagrad,
    /// Sener & Koltun 2018: the min-norm convex combination of the shared gradients.
    Mgda,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Equal => "equal",
            Method::Uncertainty => "uncertainty",
            Method::Dwa => "dwa",
            Method::Gradnorm => "gradnorm",
            Method::Rlw => "rlw",
            Method::Pcgrad => "pcgrad",
            Method::Cagrad => "cagrad",
            Method::Mgda => "mgda",
        }
    }
}

/// What a method sees of one micro-batch's k tasks (all slices in the micro-batch's task order).
pub struct Step<'a> {
    /// Update index (0-based).
    pub step: usize,
    /// The tasks, as indices into the run's task list.
    pub tasks: &'a [usize],
    /// Their losses.
    pub losses: &'a [f64],
    /// The Gram matrix of their shared-encoder gradients, k x k.
    pub gram: &'a [Vec<f64>],
    /// Each task's gradient norm on the encoder's last layer.
    pub last_layer_norms: &'a [f64],
}

/// A method's answer for one micro-batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Combination {
    /// The shared encoder's gradient is `sum_i shared[i] g_i`.
    pub shared: Vec<f64>,
    /// Task i's head gets `heads[i]` times its own gradient.
    pub heads: Vec<f64>,
    /// The gradient of the method's own parameter ([`Weighting::param`]), one value per task of
    /// the run (zero for tasks not in this micro-batch).
    pub param_grad: Option<Vec<f32>>,
}

impl Combination {
    /// The same coefficient for the shared encoder and the heads (a loss weighting).
    pub fn weights(w: Vec<f64>) -> Self {
        Self {
            shared: w.clone(),
            heads: w,
            param_grad: None,
        }
    }
}

/// The state a stateful method keeps across updates (in the run's checkpoint).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MethodState {
    /// The method's parameter values (uncertainty, GradNorm), one per task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub param: Vec<f64>,
    /// DWA: per task, (window index, loss sum, count) of its last windows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<Vec<(usize, f64, usize)>>,
    /// GradNorm: each task's first observed loss.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub initial: Vec<Option<f64>>,
}

/// One loss-weighting or gradient-surgery method.
pub trait Weighting: Send {
    fn method(&self) -> Method;
    /// The coefficients for one micro-batch; `rng` is this micro-batch's own stream (random task
    /// orders, random weights).
    fn combine(&mut self, s: &Step, rng: &mut StdRng) -> Result<Combination>;
    /// The method's learnable parameter, one value per task, if it has one.
    fn param(&self) -> Option<&Var> {
        None
    }
    /// After an update, on every rank: each micro-batch's (task, loss) pairs, all ranks'.
    fn observe(&mut self, _step: usize, _losses: &[(usize, f64)]) {}
    fn state(&self) -> Result<MethodState> {
        Ok(MethodState::default())
    }
    fn restore(&mut self, _s: &MethodState) -> Result<()> {
        Ok(())
    }
}

/// The method `cfg` names, for a run of `tasks` tasks with fixed task weights `weights`; methods
/// with a parameter create it on `device`.
pub fn build(
    cfg: &MultitaskConfig,
    weights: &[f64],
    device: &candle_core::Device,
) -> Result<Box<dyn Weighting>> {
    let n = weights.len();
    Ok(match cfg.weighting {
        Method::Equal => Box::new(Equal::new(weights.to_vec())),
        Method::Uncertainty => Box::new(Uncertainty::new(n, device)?),
        Method::Dwa => Box::new(Dwa::new(n, cfg.dwa_window, cfg.dwa_temperature)),
        Method::Gradnorm => Box::new(GradNorm::new(n, cfg.gradnorm_alpha, device)?),
        Method::Rlw => Box::new(Rlw),
        Method::Pcgrad => Box::new(PcGrad),
        Method::Cagrad => Box::new(CaGrad::new(cfg.cagrad_c)),
        Method::Mgda => Box::new(Mgda),
    })
}

/// A parameter of one value per task, initialised to `init`.
pub(crate) fn task_param(n: usize, init: f32, device: &candle_core::Device) -> Result<Var> {
    Ok(Var::from_tensor(&Tensor::from_vec(
        vec![init; n],
        n,
        device,
    )?)?)
}

/// The values of a per-task parameter.
pub(crate) fn param_values(v: &Var) -> Result<Vec<f64>> {
    Ok(v.as_tensor()
        .to_vec1::<f32>()?
        .into_iter()
        .map(f64::from)
        .collect())
}

/// Set a per-task parameter from checkpointed values.
pub(crate) fn set_param(v: &Var, values: &[f64], what: &str) -> Result<()> {
    let n = v.as_tensor().elem_count();
    if values.len() != n {
        return Err(Error::Config(format!(
            "the checkpoint holds {} {what} values for {n} tasks",
            values.len()
        )));
    }
    let t = Tensor::from_vec(
        values.iter().map(|&x| x as f32).collect::<Vec<_>>(),
        n,
        v.as_tensor().device(),
    )?;
    v.set(&t)?;
    Ok(())
}

/// k softmax(x / t) over `x`.
pub(crate) fn scaled_softmax(x: &[f64], t: f64) -> Vec<f64> {
    let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|v| ((v - m) / t).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| x.len() as f64 * v / s).collect()
}

/// Cosine similarity of each pair (i < j) from a Gram matrix (0 where a gradient is zero).
pub fn cosines(gram: &[Vec<f64>]) -> Vec<(usize, usize, f64)> {
    let k = gram.len();
    let mut out = Vec::new();
    for i in 0..k {
        for j in i + 1..k {
            let d = (gram[i][i] * gram[j][j]).sqrt();
            out.push((i, j, if d > 0.0 { gram[i][j] / d } else { 0.0 }));
        }
    }
    out
}
