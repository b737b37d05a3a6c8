//! Parameters and the small layers built on them: a named parameter store that either
//! initialises fresh weights or takes them from a checkpoint (checking every name and shape),
//! linear, embedding and layer-norm layers, and seeded dropout.

use crate::error::{Error, Result};
use crate::ops;
use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// How a parameter is initialised when no checkpoint provides it (BERT's `_init_weights`).
#[derive(Clone, Copy, Debug)]
pub enum Init {
    Normal(f64),
    Const(f64),
}

/// Tensors read from a checkpoint, keyed by their normalised names.
#[derive(Debug)]
pub struct Source {
    pub path: PathBuf,
    pub tensors: HashMap<String, Tensor>,
}

#[derive(Default)]
struct StoreInner {
    vars: BTreeMap<String, Var>,
    used: BTreeSet<String>,
}

/// All trainable parameters of a model, by checkpoint name, in a stable order.
///
/// Cloning is cheap and shares the parameters (like candle's `VarMap`).
#[derive(Clone)]
pub struct ParamStore {
    inner: Arc<Mutex<StoreInner>>,
    source: Option<Arc<Source>>,
    rng: Arc<Mutex<StdRng>>,
    device: Device,
    /// Hand out detached tensors: layers built from this store compute no parameter gradients.
    frozen: bool,
    /// Frozen, and linear layers also keep a bf16 copy of their weight for AMX inference.
    bf16: bool,
}

impl ParamStore {
    /// A store that initialises every parameter afresh from `seed`.
    pub fn fresh(device: &Device, seed: u64) -> Self {
        Self {
            inner: Arc::default(),
            source: None,
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
            device: device.clone(),
            frozen: false,
            bf16: false,
        }
    }

    /// The same parameters (shared storage), handed out detached: a model built from this
    /// store backpropagates to its inputs only, skipping every weight gradient. For inference
    /// and explanations, which need d output / d embeddings and nothing else. Linear layers
    /// built from it also keep their weight transposed (and BERT's query, key and value
    /// concatenated) once, as a snapshot: build the frozen model after training, not before.
    pub fn frozen(&self) -> Self {
        Self {
            frozen: true,
            ..self.clone()
        }
    }

    /// [`ParamStore::frozen`], and every linear layer built from it also packs a bf16 copy of
    /// its weight and runs on AMX or AVX512-BF16 ([`ops::bf16`]): the forward pass, and for
    /// inputs that track gradients (explanations) their gradient `dy W` too. Without AMX, or
    /// off the CPU, this is `frozen()`.
    pub fn frozen_bf16(&self) -> Self {
        Self {
            frozen: true,
            bf16: self.device().is_cpu() && crate::ops::bf16::available(),
            ..self.clone()
        }
    }

    /// Whether layers built from this store use bf16 AMX inference.
    pub fn bf16(&self) -> bool {
        self.bf16
    }

    /// Whether this store hands out detached parameters ([`ParamStore::frozen`]).
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    fn hand_out(&self, v: &Var) -> Tensor {
        if self.frozen {
            v.as_tensor().detach()
        } else {
            v.as_tensor().clone()
        }
    }

    /// A store that takes every parameter from `source`; a parameter the source lacks is an
    /// error unless the caller asks for it with [`ParamBuilder::get_or_init`].
    pub fn from_source(source: Source, device: &Device, seed: u64) -> Self {
        Self {
            source: Some(Arc::new(source)),
            ..Self::fresh(device, seed)
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Re-seed the generator that initialises parameters not found in the checkpoint.
    pub fn reseed(&self, seed: u64) {
        *self.rng.lock().expect("rng lock poisoned") = StdRng::seed_from_u64(seed);
    }

    pub fn root(&self) -> ParamBuilder {
        ParamBuilder {
            store: self.clone(),
            prefix: String::new(),
        }
    }

    /// Every parameter, by name, in lexicographic order.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let inner = self.inner.lock().expect("parameter store lock poisoned");
        inner
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Put `var` (another store's parameter) in this store under `name`: a layer built from
    /// this store later asks for `name` and gets that very parameter, so the two models share
    /// it and its gradient sums both uses (ELECTRA's generator reads the discriminator's
    /// embeddings this way). A checkpoint's tensor of that name is not read.
    pub fn share(&self, name: &str, var: Var) {
        let mut inner = self.inner.lock().expect("parameter store lock poisoned");
        inner.used.insert(name.to_string());
        inner.vars.insert(name.to_string(), var);
    }

    pub fn get(&self, name: &str) -> Option<Var> {
        self.inner
            .lock()
            .expect("parameter store lock poisoned")
            .vars
            .get(name)
            .cloned()
    }

    pub fn num_parameters(&self) -> usize {
        self.vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Source tensors that no parameter asked for, by name (e.g. task heads for later use).
    pub fn unused_source_tensors(&self) -> Vec<(String, Tensor)> {
        let Some(src) = &self.source else {
            return Vec::new();
        };
        let inner = self.inner.lock().expect("parameter store lock poisoned");
        let mut out: Vec<_> = src
            .tensors
            .iter()
            .filter(|(k, _)| !inner.used.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn source_path(&self) -> Option<&PathBuf> {
        self.source.as_ref().map(|s| &s.path)
    }

    pub fn source_has(&self, name: &str) -> bool {
        self.source
            .as_ref()
            .is_some_and(|s| s.tensors.contains_key(name))
    }

    /// The current values, detached, keyed by name (for saving).
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.vars()
            .into_iter()
            .map(|(k, v)| (k, v.as_detached_tensor()))
            .collect()
    }

    fn init_tensor(&self, shape: &[usize], init: Init) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let t = match init {
            Init::Const(c) => Tensor::full(c as f32, shape, &self.device)?,
            Init::Normal(std) => {
                let mut rng = self.rng.lock().expect("rng lock poisoned");
                let v: Vec<f32> = (0..n).map(|_| (normal(&mut *rng) * std) as f32).collect();
                Tensor::from_vec(v, shape, &self.device)?
            }
        };
        Ok(t)
    }

    fn get_var(&self, name: &str, shape: &[usize], init: Init, required: bool) -> Result<Tensor> {
        if let Some(v) = self.get(name) {
            if v.dims() != shape {
                return Err(Error::InvalidConfig(format!(
                    "parameter `{name}` requested with shape {shape:?} and {:?}",
                    v.dims()
                )));
            }
            return Ok(self.hand_out(&v));
        }
        let value = match self
            .source
            .as_ref()
            .and_then(|s| s.tensors.get(name).map(|t| (s, t)))
        {
            Some((src, t)) => {
                if t.dims() != shape {
                    return Err(Error::ShapeMismatch {
                        path: src.path.clone(),
                        name: name.to_string(),
                        expected: shape.to_vec(),
                        found: t.dims().to_vec(),
                    });
                }
                t.to_dtype(DType::F32)?.to_device(&self.device)?
            }
            None => match &self.source {
                Some(src) if required => {
                    return Err(Error::MissingWeight {
                        path: src.path.clone(),
                        name: name.to_string(),
                        expected: shape.to_vec(),
                    })
                }
                _ => self.init_tensor(shape, init)?,
            },
        };
        let var = Var::from_tensor(&value)?;
        let t = self.hand_out(&var);
        let mut inner = self.inner.lock().expect("parameter store lock poisoned");
        inner.used.insert(name.to_string());
        inner.vars.insert(name.to_string(), var);
        Ok(t)
    }
}

/// Standard normal sample (Box-Muller), so that initialisation depends only on the seed.
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A view of a [`ParamStore`] under a name prefix, mirroring checkpoint key paths.
#[derive(Clone)]
pub struct ParamBuilder {
    store: ParamStore,
    prefix: String,
}

impl ParamBuilder {
    pub fn pp(&self, name: impl AsRef<str>) -> Self {
        Self {
            store: self.store.clone(),
            prefix: self.path(name.as_ref()),
        }
    }

    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn device(&self) -> &Device {
        &self.store.device
    }

    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// A parameter that must come from the checkpoint when loading one.
    pub fn get(&self, shape: &[usize], name: &str, init: Init) -> Result<Tensor> {
        self.store.get_var(&self.path(name), shape, init, true)
    }

    /// A parameter that is initialised when the checkpoint lacks it (a new task head).
    pub fn get_or_init(&self, shape: &[usize], name: &str, init: Init) -> Result<Tensor> {
        self.store.get_var(&self.path(name), shape, init, false)
    }

    /// Whether the checkpoint being loaded has this tensor.
    pub fn source_has(&self, name: &str) -> bool {
        self.store.source_has(&self.path(name))
    }

    pub fn is_fresh(&self) -> bool {
        self.store.source.is_none()
    }
}

/// `y = x W^T + b`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// The weight in bf16 for AMX inference, when built from a [`ParamStore::frozen_bf16`]
    /// store.
    pub packed: Option<Arc<ops::bf16::PackedWeight>>,
    /// The weight transposed once for the f32 GEMM, when built from a frozen store (a
    /// snapshot, like `packed`).
    pub transposed: Option<Arc<ops::TransposedWeight>>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            packed: None,
            transposed: None,
        }
    }

    pub fn load(pb: &ParamBuilder, in_dim: usize, out_dim: usize, std: f64) -> Result<Self> {
        Self::load_unpacked(pb, in_dim, out_dim, std)?.packed_for(pb.store())
    }

    /// [`Linear::load`] without a bf16 copy even from a `frozen_bf16` store (for layers that
    /// are packed together with others, like BERT's query, key and value).
    pub fn load_unpacked(
        pb: &ParamBuilder,
        in_dim: usize,
        out_dim: usize,
        std: f64,
    ) -> Result<Self> {
        let weight = pb.get(&[out_dim, in_dim], "weight", Init::Normal(std))?;
        let bias = Some(pb.get(&[out_dim], "bias", Init::Const(0.0))?);
        Ok(Self::new(weight, bias))
    }

    /// Pack the weight for bf16 inference when `store` asks for it; from any other frozen
    /// store, transpose it once for the f32 GEMM.
    fn packed_for(mut self, store: &ParamStore) -> Result<Self> {
        if store.bf16() {
            self.packed = Some(Arc::new(ops::bf16::PackedWeight::from_tensor(
                &self.weight,
            )?));
        } else if store.is_frozen() {
            self.transposed = ops::TransposedWeight::of(&self.weight)?.map(Arc::new);
        }
        Ok(self)
    }

    /// A layer from `pb`'s weight and optional bias, with or without a bias as its model says
    /// (ModernBERT's bias-free layers), prepared for the store as [`Linear::load`] is.
    pub fn load_with_bias(
        pb: &ParamBuilder,
        in_dim: usize,
        out_dim: usize,
        std: f64,
        bias: bool,
    ) -> Result<Self> {
        let weight = pb.get(&[out_dim, in_dim], "weight", Init::Normal(std))?;
        let bias = if bias {
            Some(pb.get(&[out_dim], "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Self::new(weight, bias).packed_for(pb.store())
    }

    /// A frozen layer of its own from separate weights (snapshots: BERT's query, key and value
    /// concatenated), prepared for `store` as [`Linear::load`] does.
    pub fn frozen_from(weight: Tensor, bias: Option<Tensor>, store: &ParamStore) -> Result<Self> {
        Self::new(weight.detach(), bias.map(|b| b.detach())).packed_for(store)
    }

    /// Like [`Linear::load`], but initialised when the checkpoint lacks it (a new task head).
    pub fn load_or_init(
        pb: &ParamBuilder,
        in_dim: usize,
        out_dim: usize,
        std: f64,
    ) -> Result<Self> {
        let weight = pb.get_or_init(&[out_dim, in_dim], "weight", Init::Normal(std))?;
        let bias = Some(pb.get_or_init(&[out_dim], "bias", Init::Const(0.0))?);
        Self::new(weight, bias).packed_for(pb.store())
    }

    /// # Shapes
    /// `x`: (..., in) -> (..., out)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() == 0 {
            return Err(Error::Input("linear: scalar input".into()));
        }
        if let Some(p) = &self.packed {
            if ops::bf16::applies_to(x) {
                return Ok(ops::bf16::linear(x, p, self.bias.as_ref())?);
            }
        }
        Ok(ops::linear_with(
            x,
            &self.weight,
            self.transposed.as_ref(),
            self.bias.as_ref(),
        )?)
    }
}

/// A lookup table of row vectors.
///
/// Like PyTorch's `nn.Embedding(padding_idx=..)`, the row at `padding_idx` receives no
/// gradient, so the padding vector stays what the checkpoint says.
#[derive(Clone, Debug)]
pub struct Embedding {
    pub weight: Tensor,
    pub padding_idx: Option<u32>,
}

impl Embedding {
    pub fn load(pb: &ParamBuilder, n: usize, dim: usize, std: f64) -> Result<Self> {
        Ok(Self {
            weight: pb.get(&[n, dim], "weight", Init::Normal(std))?,
            padding_idx: None,
        })
    }

    pub fn with_padding_idx(mut self, idx: Option<u32>) -> Self {
        self.padding_idx = idx;
        self
    }

    /// # Shapes
    /// `ids`: (B, T) integer -> (B, T, C)
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (n, dim) = self.weight.dims2()?;
        let flat = ids.flatten_all()?.to_dtype(DType::U32)?;
        let host: Vec<u32> = flat.to_vec1()?;
        if let Some(&bad) = host.iter().find(|&&i| i as usize >= n) {
            return Err(Error::Input(format!(
                "token id {bad} is out of range for an embedding table of {n} rows"
            )));
        }
        let mut shape = ids.dims().to_vec();
        shape.push(dim);
        let rows = ops::embedding(&self.weight, &host, self.padding_idx)?; // (N, C)
        Ok(rows.reshape(shape)?)
    }
}

/// Layer normalisation with learned scale and shift, under HF's `LayerNorm.weight/bias` names.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(pb: &ParamBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: pb.get(&[dim], "weight", Init::Const(1.0))?,
            bias: pb.get(&[dim], "bias", Init::Const(0.0))?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::layer_norm(x, &self.weight, &self.bias, self.eps)?)
    }
}

/// A seeded source of dropout masks, shared by every layer of one model in one run.
#[derive(Clone, Debug)]
pub struct DropoutRng(Arc<Mutex<StdRng>>);

impl DropoutRng {
    pub fn new(seed: u64) -> Self {
        Self(Arc::new(Mutex::new(StdRng::seed_from_u64(seed))))
    }

    /// Inverted dropout: zero each element with probability `p`, scale the rest by 1/(1-p).
    /// A fresh seed for a fused kernel's dropout mask.
    pub fn seed(&self) -> u64 {
        self.0
            .lock()
            .expect("dropout rng lock poisoned")
            .random::<u64>()
    }

    /// An independent generator in this one's current state: it draws the same masks this
    /// one will draw next (activation checkpointing replays a layer's dropout with it).
    pub fn fork(&self) -> Self {
        let rng = self.0.lock().expect("dropout rng lock poisoned").clone();
        Self(Arc::new(Mutex::new(rng)))
    }

    pub fn dropout(&self, x: &Tensor, p: f64) -> Result<Tensor> {
        if p <= 0.0 {
            return Ok(x.clone());
        }
        if p >= 1.0 {
            return Err(Error::InvalidConfig(format!(
                "dropout probability {p} must be below 1"
            )));
        }
        // One draw per call seeds the fused kernel's mask (ops::dropout), which the backward
        // pass regenerates instead of storing.
        Ok(ops::dropout(x, p, self.seed())?)
    }
}

/// Whether a forward pass trains (dropout on, drawing masks from the given generator) or
/// evaluates (dropout off, deterministic).
#[derive(Clone, Debug)]
pub enum Mode {
    Eval,
    Train(DropoutRng),
}

impl Mode {
    pub fn train(seed: u64) -> Self {
        Mode::Train(DropoutRng::new(seed))
    }

    pub fn dropout(&self, x: &Tensor, p: f64) -> Result<Tensor> {
        match self {
            Mode::Eval => Ok(x.clone()),
            Mode::Train(rng) => rng.dropout(x, p),
        }
    }

    /// `dropout(x) + residual` (a residual connection), in one pass without keeping the
    /// dropped tensor ([`ops::dropout_add`]); the same masks and generator draws as
    /// [`Mode::dropout`] followed by the addition.
    pub fn dropout_add(&self, x: &Tensor, residual: &Tensor, p: f64) -> Result<Tensor> {
        match self {
            Mode::Train(rng) if p > 0.0 => {
                if p >= 1.0 {
                    return Err(Error::InvalidConfig(format!(
                        "dropout probability {p} must be below 1"
                    )));
                }
                Ok(ops::dropout_add(x, residual, p, rng.seed())?)
            }
            _ => Ok((x + residual)?),
        }
    }

    /// Probability and seed for a fused kernel's dropout: None in evaluation or when p is 0.
    pub fn dropout_seed(&self, p: f64) -> Option<(f64, u64)> {
        match self {
            Mode::Train(rng) if p > 0.0 => Some((p, rng.seed())),
            _ => None,
        }
    }

    pub fn is_train(&self) -> bool {
        matches!(self, Mode::Train(_))
    }

    /// This mode with its dropout generator forked ([`DropoutRng::fork`]): passes run in the
    /// fork draw the masks this mode would draw next.
    pub fn fork(&self) -> Self {
        match self {
            Mode::Eval => Mode::Eval,
            Mode::Train(rng) => Mode::Train(rng.fork()),
        }
    }
}
