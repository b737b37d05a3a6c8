//! Domain-adversarial training (DANN, Ganin et al. 2016): gradient reversal — identity in the
//! forward pass, `-lambda * grad` in the backward pass, so the encoder learns features the
//! domain classifier cannot separate — its `lambda` schedule, and the training step that uses
//! both.

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use prism_model::heads::DomainHead;
use prism_model::{Encoder, EncoderInput, EncoderOutput, Mode};

struct GradReverse {
    lambda: f64,
}

impl CustomOp1 for GradReverse {
    fn name(&self) -> &'static str {
        "prism-grad-reverse"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = s else {
            candle_core::bail!("grad_reverse: f32 only")
        };
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("grad_reverse: input must be contiguous")
        };
        Ok((CpuStorage::F32(v[a..b].to_vec()), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some((grad * -self.lambda)?))
    }
}

/// Identity forward, gradient multiplied by `-lambda` backward.
pub fn grad_reverse(x: &Tensor, lambda: f64) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op1(GradReverse { lambda })
    } else {
        // x - (1 + lambda) * (x - detach(x)) has value x and gradient -lambda.
        let d = (x - x.detach())?;
        x - (d * (1.0 + lambda))?
    }
}

/// DANN's schedule: `2 / (1 + exp(-gamma p)) - 1` at training progress `p` in [0, 1].
pub fn dann_lambda(progress: f64, gamma: f64) -> f64 {
    2.0 / (1.0 + (-gamma * progress.clamp(0.0, 1.0)).exp()) - 1.0
}

/// The losses of one DANN step.
#[derive(Clone, Copy, Debug)]
pub struct DannLosses {
    /// The task loss on the labelled source batch.
    pub task: f64,
    /// The domain classifier's cross-entropy over source (0) and target (1) examples.
    pub domain: f64,
}

/// One DANN micro-batch: `task_loss` on the source batch plus `weight` × the domain loss of
/// `head` on every source and target sequence's summary (the pooler, or the token a sequence
/// head reads: XLNet's last real token), passed through gradient reversal with `lambda`.
#[allow(clippy::too_many_arguments)]
pub fn dann_step<E: Encoder + ?Sized>(
    encoder: &E,
    task_loss: &dyn Fn(&EncoderOutput) -> crate::Result<Tensor>,
    head: &DomainHead,
    source: &EncoderInput,
    target: &EncoderInput,
    mode: &Mode,
    lambda: f64,
    weight: f64,
) -> crate::Result<(GradStore, DannLosses)> {
    let enc_s = encoder.forward(source, mode)?;
    let loss = task_loss(&enc_s)?;
    let enc_t = encoder.forward(target, mode)?;
    let both = Tensor::cat(&[enc_s.summary()?, enc_t.summary()?], 0)?;
    let logits = head.forward(&grad_reverse(&both, lambda)?)?;
    let (ns, nt) = (source.input_ids.dim(0)?, target.input_ids.dim(0)?);
    let labels: Vec<u32> = std::iter::repeat_n(0, ns)
        .chain(std::iter::repeat_n(1, nt))
        .collect();
    let dl = super::cross_entropy(&logits, &Tensor::new(labels, logits.device())?)?;
    let total = (&loss + (&dl * weight)?)?;
    let losses = DannLosses {
        task: loss.to_scalar::<f32>()? as f64,
        domain: dl.to_scalar::<f32>()? as f64,
    };
    Ok((total.backward()?, losses))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn identity_forward_reversed_scaled_backward() {
        let x = Var::new(&[1.5f32, -2.0, 0.25], &Device::Cpu).unwrap();
        let y = grad_reverse(x.as_tensor(), 0.3).unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), vec![1.5, -2.0, 0.25]);
        let w = Tensor::new(&[1f32, 2.0, -4.0], &Device::Cpu).unwrap();
        let g = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gx: Vec<f32> = g.get(x.as_tensor()).unwrap().to_vec1().unwrap();
        for (a, b) in gx.iter().zip([-0.3f32, -0.6, 1.2]) {
            assert!((a - b).abs() < 1e-6, "{gx:?}");
        }
    }

    #[test]
    fn lambda_schedule_goes_from_zero_to_one() {
        assert_eq!(dann_lambda(0.0, 10.0), 0.0);
        assert!((dann_lambda(1.0, 10.0) - 0.99990920).abs() < 1e-6);
        assert!(dann_lambda(0.5, 10.0) > 0.98);
    }
}
