//! Losses as plain functions over logits and labels: the cross-entropy family and the robust
//! losses for noisy labels (label smoothing, focal, generalized and symmetric cross-entropy),
//! plus the gradient-reversal op for domain-adversarial training. Each has a PyTorch parity
//! fixture and a finite-difference test.

mod adversarial;
mod cross_entropy;
mod grl;
mod robust;

pub use adversarial::{
    adversarial_step, project_l2, symmetric_bernoulli_kl, symmetric_kl, AdversarialConfig,
    StepLosses, TaskFns,
};
pub use cross_entropy::{
    binary_cross_entropy_with_logits, cross_entropy, log_sigmoid, log_softmax,
    masked_cross_entropy, IGNORE,
};
pub use grl::{dann_lambda, dann_step, grad_reverse, DannLosses};
pub use robust::{focal, generalized_ce, label_smoothed_ce, symmetric_ce, LossConfig};
