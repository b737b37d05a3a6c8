//! Gradient methods with respect to the word-embedding output (like Captum's layer methods on
//! `word_embeddings`): saliency, gradient x input, integrated gradients, their NoiseTunnel
//! variants (SmoothGrad, SmoothGrad², VarGrad) and GradientSHAP.

mod integrated;
mod noise;
mod shap;
mod simple;

pub use integrated::{gauss_legendre, Baseline, IntegratedGradients, Rule};
pub use noise::{Base, NoiseTunnel, Smoothing};
pub use shap::{GradientShap, ShapDraws};
pub use simple::{GradientXInput, Saliency};

use candle_core::{Tensor, D};

/// Per-token L2 norm of a (1, T, C) or (T, C) tensor.
pub(crate) fn l2_per_token(t: &Tensor) -> crate::Result<Vec<f32>> {
    Ok(t.sqr()?.sum(D::Minus1)?.sqrt()?.flatten_all()?.to_vec1()?)
}

/// Per-token sum over channels.
pub(crate) fn sum_per_token(t: &Tensor) -> crate::Result<Vec<f32>> {
    Ok(t.sum(D::Minus1)?.flatten_all()?.to_vec1()?)
}
