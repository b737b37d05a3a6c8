//! The k per-task gradient stores of one micro-batch: their Gram matrix over the shared
//! encoder, last-layer norms, and the combined store a method's coefficients give.

use super::Combination;
use crate::error::Result;
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Storage, Tensor, Var};
use rayon::prelude::*;

/// Which parameters are shared (the encoder's, everything outside `prism.heads.`) and which of
/// them form the encoder's last layer (the highest `layer.N.`).
pub struct SharedParams {
    pub shared: Vec<Var>,
    pub last_layer: Vec<Var>,
    pub heads: Vec<Var>,
}

impl SharedParams {
    pub fn of(params: &[(String, Var)]) -> Self {
        let layer_of = |name: &str| -> Option<usize> {
            let i = name.find("layer.")?;
            let rest = &name[i + 6..];
            let end = rest.find('.')?;
            rest[..end].parse().ok()
        };
        let (mut shared, mut heads) = (Vec::new(), Vec::new());
        let mut layered = Vec::new();
        for (name, v) in params {
            if name.starts_with("prism.") {
                heads.push(v.clone());
            } else {
                shared.push(v.clone());
                layered.push((layer_of(name), v.clone()));
            }
        }
        let top = layered.iter().filter_map(|(l, _)| *l).max();
        let last_layer = match top {
            Some(t) => layered
                .into_iter()
                .filter(|(l, _)| *l == Some(t))
                .map(|(_, v)| v)
                .collect(),
            None => shared.clone(),
        };
        Self {
            shared,
            last_layer,
            heads,
        }
    }
}

/// `f` on the values of `t` as f32 (borrowed from a contiguous CPU buffer, else copied).
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    {
        let (s, l) = t.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) = (&*s, l.contiguous_offsets()) {
            return Ok(f(&v[a..b]));
        }
    }
    let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    Ok(f(&v))
}

/// a . b in f64 (blocks of f32 products summed in f64, in parallel).
fn dot(a: &Tensor, b: &Tensor) -> Result<f64> {
    with_f32(a, |x| {
        with_f32(b, |y| {
            x.par_chunks(4096)
                .zip(y.par_chunks(4096))
                .map(|(p, q)| p.iter().zip(q).map(|(a, b)| a * b).sum::<f32>() as f64)
                .sum::<f64>()
        })
    })?
}

/// The Gram matrix of the stores' gradients over `params` (a missing gradient is zero).
pub fn gram(stores: &[GradStore], params: &[Var]) -> Result<Vec<Vec<f64>>> {
    let k = stores.len();
    let mut g = vec![vec![0.0; k]; k];
    for p in params {
        let gs: Vec<Option<&Tensor>> = stores.iter().map(|s| s.get(p.as_tensor())).collect();
        for i in 0..k {
            for j in i..k {
                if let (Some(a), Some(b)) = (gs[i], gs[j]) {
                    let d = dot(a, b)?;
                    g[i][j] += d;
                    if i != j {
                        g[j][i] += d;
                    }
                }
            }
        }
    }
    Ok(g)
}

/// `sum_i c[i] g_i` of `p`'s gradients, or None if no store has one.
fn combine_param(stores: &[GradStore], p: &Var, c: &[f64]) -> Result<Option<Tensor>> {
    let mut acc: Option<Tensor> = None;
    for (s, &ci) in stores.iter().zip(c) {
        if let Some(g) = s.get(p.as_tensor()) {
            let term = if ci == 1.0 {
                g.clone()
            } else {
                g.affine(ci, 0.0)?
            };
            acc = Some(match acc {
                Some(a) => (a + term)?,
                None => term,
            });
        }
    }
    Ok(acc)
}

/// The micro-batch's gradient: the shared parameters' from `c.shared`, the heads' from
/// `c.heads`, and the method's own parameter's.
pub fn combine(
    stores: &[GradStore],
    params: &SharedParams,
    c: &Combination,
    method_param: Option<&Var>,
) -> Result<GradStore> {
    let mut out = GradStore::default();
    for p in &params.shared {
        if let Some(g) = combine_param(stores, p, &c.shared)? {
            out.insert(p.as_tensor(), g);
        }
    }
    for p in &params.heads {
        if let Some(g) = combine_param(stores, p, &c.heads)? {
            out.insert(p.as_tensor(), g);
        }
    }
    if let (Some(v), Some(g)) = (method_param, &c.param_grad) {
        let t = v.as_tensor();
        out.insert(t, Tensor::from_vec(g.clone(), t.shape(), t.device())?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn gram_and_combination_over_stores() {
        let dev = Device::Cpu;
        let p = Var::from_tensor(&Tensor::zeros(3, DType::F32, &dev).unwrap()).unwrap();
        let q = Var::from_tensor(&Tensor::zeros(2, DType::F32, &dev).unwrap()).unwrap();
        let h = Var::from_tensor(&Tensor::zeros(1, DType::F32, &dev).unwrap()).unwrap();
        let mut a = GradStore::default();
        a.insert(p.as_tensor(), Tensor::new(&[1f32, 2., 3.], &dev).unwrap());
        a.insert(q.as_tensor(), Tensor::new(&[1f32, 0.], &dev).unwrap());
        a.insert(h.as_tensor(), Tensor::new(&[5f32], &dev).unwrap());
        let mut b = GradStore::default();
        b.insert(p.as_tensor(), Tensor::new(&[-1f32, 0., 1.], &dev).unwrap());
        let stores = [a, b];
        let g = gram(&stores, &[p.clone(), q.clone()]).unwrap();
        assert_eq!(g, vec![vec![15.0, 2.0], vec![2.0, 2.0]]);
        let params = SharedParams {
            shared: vec![p.clone(), q.clone()],
            last_layer: vec![],
            heads: vec![h.clone()],
        };
        let c = Combination {
            shared: vec![0.5, 2.0],
            heads: vec![3.0, 1.0],
            param_grad: None,
        };
        let out = combine(&stores, &params, &c, None).unwrap();
        let v = |t: &Tensor| t.to_vec1::<f32>().unwrap();
        assert_eq!(v(out.get(p.as_tensor()).unwrap()), vec![-1.5, 1.0, 3.5]);
        assert_eq!(v(out.get(q.as_tensor()).unwrap()), vec![0.5, 0.0]);
        assert_eq!(v(out.get(h.as_tensor()).unwrap()), vec![15.0]);
    }

    #[test]
    fn the_last_layer_is_the_highest_numbered_one() {
        let dev = Device::Cpu;
        let v = || Var::from_tensor(&Tensor::zeros(1, DType::F32, &dev).unwrap()).unwrap();
        let params = vec![
            ("embeddings.word_embeddings.weight".to_string(), v()),
            ("encoder.layer.1.output.dense.weight".to_string(), v()),
            ("encoder.layer.11.output.dense.weight".to_string(), v()),
            (
                "encoder.layer.11.attention.self.query.bias".to_string(),
                v(),
            ),
            ("prism.heads.a.classifier.weight".to_string(), v()),
        ];
        let s = SharedParams::of(&params);
        assert_eq!(
            (s.shared.len(), s.last_layer.len(), s.heads.len()),
            (4, 2, 1)
        );
    }
}
