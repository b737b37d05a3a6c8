//! Activation checkpointing (transformers' `gradient_checkpointing_enable()`,
//! `torch.utils.checkpoint`): while [`gradient_checkpointing`]'s guard lives, a training forward
//! pass keeps only each encoder layer's input; the layer's activations (its q/k/v, attention
//! probabilities, feed-forward intermediates) are dropped as soon as its output is known, and the
//! backward pass recomputes them one layer at a time.
//!
//! Each layer becomes one [`Recompute`] op over the layer's inputs. Its forward runs the layer
//! and keeps the output values only. Its backward runs the layer again from fresh `Var`s holding
//! the inputs, with the same dropout masks (the [`Mode`]'s generator is replayed from the state it
//! had before the layer) under the same mixed precision, then a nested backward pass from
//! `sum(y * dy)`: that gives the inputs' gradients, returned to the outer pass, and the layer's
//! parameter gradients, handed to the outer pass with `candle_core::backprop::contribute` (a
//! patch of the vendored candle, see vendor/README.md). The gradients are those of the
//! uncheckpointed pass (tested).

use crate::error::Result;
use crate::nn::Mode;
use crate::ops::bf16;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, Var};
use std::cell::Cell;
use std::sync::{Arc, Mutex};

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(false) };
}

/// Activation checkpointing for the training forward passes run on this thread while the guard
/// lives (the one training loop holds it around each micro-batch's forward and backward when
/// `gradient_checkpointing = true`). Evaluation passes and passes that track no gradient are
/// unaffected.
#[must_use = "checkpointing lasts as long as the guard"]
pub struct Checkpointing {
    before: bool,
}

/// Start (or, with `false`, suspend) [`Checkpointing`] on this thread.
pub fn gradient_checkpointing(enabled: bool) -> Checkpointing {
    Checkpointing {
        before: ENABLED.with(|e| e.replace(enabled)),
    }
}

impl Drop for Checkpointing {
    fn drop(&mut self) {
        ENABLED.with(|e| e.set(self.before));
    }
}

/// Whether a layer run now in `mode` on `inputs` is checkpointed: under the guard, in training,
/// on the CPU, with an input that tracks gradients.
pub fn applies(inputs: &[&Tensor], mode: &Mode) -> bool {
    ENABLED.with(Cell::get)
        && mode.is_train()
        && inputs.iter().all(|t| t.device().is_cpu())
        && inputs.iter().any(|t| t.track_op())
}

/// A layer as a function of its inputs (one or two tensors that carry gradients: the hidden
/// states, XLNet's query stream) in a given mode; what else it reads (masks, positions,
/// parameters) it holds itself.
pub type LayerFn = dyn Fn(&[Tensor], &Mode) -> Result<Vec<Tensor>> + Send + Sync;

/// `layer(inputs, mode)`, checkpointed when [`applies`] (else simply run): the layer's outputs,
/// as the layer gives them.
pub fn checkpoint(inputs: &[&Tensor], mode: &Mode, layer: Arc<LayerFn>) -> Result<Vec<Tensor>> {
    if !applies(inputs, mode) {
        let owned: Vec<Tensor> = inputs.iter().map(|t| (*t).clone()).collect();
        return layer(&owned, mode);
    }
    if inputs.is_empty() || inputs.len() > 2 {
        return Err(crate::error::Error::Input(format!(
            "gradient checkpointing takes a layer of 1 or 2 inputs, not {}",
            inputs.len()
        )));
    }
    let replay = mode.fork();
    let autocast = bf16::autocast_enabled();
    // The forward pass from detached inputs: its graph reaches the parameters only, and is
    // dropped with `outs` once the values are copied out below.
    let detached: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
    let outs = layer(&detached, mode)?;
    let shapes: Vec<Shape> = outs.iter().map(|o| o.shape().clone()).collect();
    let values = if outs.len() == 1 {
        outs[0].detach().contiguous()?
    } else {
        let flat = outs
            .iter()
            .map(|o| o.flatten_all())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&flat, 0)?.detach()
    };
    drop(outs);
    let op = Recompute {
        layer,
        replay,
        autocast,
        shapes: shapes.clone(),
        values: Mutex::new(Some(values)),
    };
    let joined = match inputs {
        [x] => x.apply_op1(op)?,
        [x, g] => x.apply_op2(g, op)?,
        _ => unreachable!("checked above"),
    };
    split(&joined, &shapes)
}

/// The outputs of one joined tensor: itself, or its flat pieces reshaped.
fn split(joined: &Tensor, shapes: &[Shape]) -> Result<Vec<Tensor>> {
    if shapes.len() == 1 {
        return Ok(vec![joined.clone()]);
    }
    let mut start = 0;
    let mut outs = Vec::with_capacity(shapes.len());
    for s in shapes {
        let n = s.elem_count();
        outs.push(joined.narrow(0, start, n)?.reshape(s)?);
        start += n;
    }
    Ok(outs)
}

/// One checkpointed layer in the graph: its output values, and how to recompute them.
struct Recompute {
    layer: Arc<LayerFn>,
    /// The dropout generator as it was before the layer ran.
    replay: Mode,
    autocast: bool,
    shapes: Vec<Shape>,
    /// The output computed in [`checkpoint`], handed to candle by the op's forward.
    values: Mutex<Option<Tensor>>,
}

impl Recompute {
    fn forward(&self) -> candle_core::Result<(CpuStorage, Shape)> {
        let values = self
            .values
            .lock()
            .map_err(|_| candle_core::Error::Msg("recompute: lock poisoned".into()))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg("recompute: forward ran twice".into()))?;
        let shape = values.shape().clone();
        let storage = CpuStorage::F32(values.flatten_all()?.to_vec1::<f32>()?);
        Ok((storage, shape))
    }

    /// The inputs' gradients; the parameters' go to the running backward pass.
    fn backward(
        &self,
        inputs: &[&Tensor],
        dy: &Tensor,
    ) -> candle_core::Result<Vec<Option<Tensor>>> {
        let vars = inputs
            .iter()
            .map(|t| Var::from_tensor(&t.detach()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let xs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let outs = {
            let _precision = bf16::autocast(self.autocast);
            (self.layer)(&xs, &self.replay.fork())
                .map_err(|e| candle_core::Error::Msg(format!("recomputing a layer: {e}")))?
        };
        let dys = split(dy, &self.shapes)
            .map_err(|e| candle_core::Error::Msg(format!("recompute: {e}")))?;
        let mut objective: Option<Tensor> = None;
        for (o, d) in outs.iter().zip(&dys) {
            let term = (o * d.detach())?.sum_all()?;
            objective = Some(match objective {
                Some(acc) => (acc + term)?,
                None => term,
            });
        }
        let Some(objective) = objective else {
            candle_core::bail!("recompute: the layer has no output")
        };
        let params: Vec<Tensor> = objective
            .sorted_nodes()
            .into_iter()
            .filter(|n| n.is_variable() && !xs.iter().any(|x| x.id() == n.id()))
            .cloned()
            .collect();
        let mut grads = objective.backward()?;
        for p in &params {
            if let Some(g) = grads.remove(p) {
                candle_core::backprop::contribute(p, g)?;
            }
        }
        Ok(xs
            .iter()
            .zip(inputs)
            .map(|(x, t)| if t.track_op() { grads.remove(x) } else { None })
            .collect())
    }
}

impl CustomOp1 for Recompute {
    fn name(&self) -> &'static str {
        "prism-recompute"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward()
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(self.backward(&[x], dy)?.pop().flatten())
    }
}

impl CustomOp2 for Recompute {
    fn name(&self) -> &'static str {
        "prism-recompute"
    }

    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward()
    }

    fn bwd(
        &self,
        x: &Tensor,
        g: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let mut d = self.backward(&[x, g], dy)?.into_iter();
        Ok((d.next().flatten(), d.next().flatten()))
    }
}
