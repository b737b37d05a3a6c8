//! Gradients with respect to the word-embedding output, optionally with every parameter's
//! gradient too. Integrated gradients, SmoothGrad and adversarial training (FGM, PGD, FreeLB,
//! SMART) all build on this one utility.
//!
//! candle keeps gradients only for `Var`s, so the graph is cut at the embedding output: the
//! forward runs from a fresh `Var` holding the embeddings, and when parameter gradients are
//! wanted, the embedding table's share is recovered with a second backward pass from
//! `sum(e * g)`, whose gradient with respect to the table is exactly the chain rule's.

use crate::error::Result;
use crate::models::{Encoder, EncoderInput, EncoderOutput};
use crate::nn::Mode;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// The result of [`embedding_gradients`].
pub struct EmbeddingGrads {
    /// The scalar the gradients are of.
    pub loss: Tensor,
    /// The word-embedding output the forward pass started from, detached. (B, T, C)
    pub embeddings: Tensor,
    /// d loss / d embeddings. (B, T, C)
    pub grad: Tensor,
    /// Every parameter's gradient, when asked for (including the word-embedding table's).
    pub params: Option<GradStore>,
    /// The forward pass's output, detached from nothing (callers may reuse it).
    pub output: EncoderOutput,
}

/// Run `model` from `embeds` (or from its own lookup of `input.input_ids` when `None`), take
/// `loss_fn` of the output, and return d loss / d embeddings, plus parameter gradients when
/// `with_params` is set.
///
/// `embeds` may be a perturbed or interpolated embedding (B, T, C); if it is still attached to
/// the embedding table (e.g. `lookup + delta`), the table's gradient flows through it.
pub fn embedding_gradients<E, F>(
    model: &E,
    input: &EncoderInput,
    mode: &Mode,
    embeds: Option<&Tensor>,
    with_params: bool,
    loss_fn: F,
) -> Result<EmbeddingGrads>
where
    E: Encoder + ?Sized,
    F: FnOnce(&EncoderOutput) -> Result<Tensor>,
{
    embedding_gradients_with(model, input, mode, embeds, with_params, loss_fn)
}

/// [`embedding_gradients`] whose `loss_fn` fails with the caller's own error type `Er` (an
/// attribution target, a task loss); its errors come back unchanged.
pub fn embedding_gradients_with<E, F, Er>(
    model: &E,
    input: &EncoderInput,
    mode: &Mode,
    embeds: Option<&Tensor>,
    with_params: bool,
    loss_fn: F,
) -> std::result::Result<EmbeddingGrads, Er>
where
    E: Encoder + ?Sized,
    F: FnOnce(&EncoderOutput) -> std::result::Result<Tensor, Er>,
    Er: From<crate::Error> + From<candle_core::Error>,
{
    let attached = match embeds {
        Some(e) => e.clone(),
        None => model.word_embeddings(&input.input_ids)?,
    };
    let cut = Var::from_tensor(&attached.detach())?;
    let output = model.forward_from_word_embeddings(cut.as_tensor(), input, mode)?;
    let loss = loss_fn(&output)?;
    let mut grads = loss.backward()?;
    let grad = match grads.remove(cut.as_tensor()) {
        Some(g) => g,
        None => cut.as_tensor().zeros_like()?,
    };
    let params = if with_params {
        let upstream = (attached * grad.detach())?.sum_all()?.backward()?;
        grads.extend(upstream)?;
        Some(grads)
    } else {
        None
    };
    Ok(EmbeddingGrads {
        loss,
        embeddings: cut.as_detached_tensor(),
        grad,
        params,
        output,
    })
}
