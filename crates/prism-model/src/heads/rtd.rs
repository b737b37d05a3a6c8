//! ELECTRA's replaced-token-detection head (transformers' `ElectraDiscriminatorPredictions`
//! in `ElectraForPreTraining`): dense -> `hidden_act` -> a one-logit projection per token, the
//! logit of "this token was replaced". Key names `discriminator_predictions.{dense,
//! dense_prediction}`.

use crate::error::Result;
use crate::models::bert::{Activation, BertConfig};
use crate::nn::{Linear, ParamStore};
use candle_core::Tensor;

pub struct RtdHead {
    dense: Linear,
    act: Activation,
    prediction: Linear,
}

impl RtdHead {
    /// The checkpoint's head, or a fresh one (normal(0, initializer_range) weights).
    pub fn load(params: &ParamStore, cfg: &BertConfig) -> Result<Self> {
        let root = params.root();
        let pb = root.pp("discriminator_predictions");
        let c = cfg.hidden_size;
        Ok(Self {
            dense: Linear::load_or_init(&pb.pp("dense"), c, c, cfg.initializer_range)?,
            act: Activation::parse(&cfg.hidden_act)?,
            prediction: Linear::load_or_init(
                &pb.pp("dense_prediction"),
                c,
                1,
                cfg.initializer_range,
            )?,
        })
    }

    /// One "replaced" logit per token.
    ///
    /// # Shapes
    /// `hidden`: (B, T, C) -> (B, T)
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = self.act.forward(&self.dense.forward(hidden)?)?;
        Ok(self
            .prediction
            .forward(&h)?
            .squeeze(candle_core::D::Minus1)?)
    }
}

/// ELECTRA's pre-training pair (Clark et al. 2020): a small generator, transformers'
/// `ElectraForMaskedLM`, that reads the discriminator's embeddings (word, position and
/// token-type tables and their LayerNorm: one set of parameters, whose gradient sums both
/// models' uses) and decodes with the shared word table; and the discriminator,
/// `ElectraForPreTraining`: the encoder and its [`RtdHead`]. Losses live in prism-train.
pub struct ElectraPretraining {
    pub discriminator: crate::PretrainedModel,
    pub head: RtdHead,
    pub generator: crate::heads::MaskedLm,
    /// The discriminator's parameters the generator reads (`embeddings.*`).
    pub shared: Vec<String>,
}

impl ElectraPretraining {
    /// The discriminator's parameters a generator shares: its embeddings.
    pub fn shared_embeddings(
        discriminator: &crate::PretrainedModel,
    ) -> Vec<(String, candle_core::Var)> {
        discriminator
            .params
            .vars()
            .into_iter()
            .filter(|(k, _)| k.starts_with("embeddings."))
            .collect()
    }

    /// A generator config for `disc`: `fraction` of its width in whole attention heads of the
    /// discriminator's head size (ELECTRA-base's generator is a third: 256 wide, 4 heads), the
    /// feed-forward layer scaled alike, the same depth, the discriminator's embedding width
    /// (so the tables can be shared; `embeddings_project` maps them to the generator's width).
    pub fn generator_config(disc: &BertConfig, fraction: f64) -> Result<BertConfig> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(crate::Error::InvalidConfig(format!(
                "the generator's size {fraction} must be a fraction of the discriminator's in (0, 1]"
            )));
        }
        let head_dim = disc.head_dim().max(1);
        let heads =
            ((disc.hidden_size as f64 * fraction / head_dim as f64).round() as usize).max(1);
        let hidden = heads * head_dim;
        let mut g = disc.clone();
        g.model_type = "electra".into();
        g.architectures = vec!["ElectraForMaskedLM".into()];
        g.hidden_size = hidden;
        g.num_attention_heads = heads;
        g.intermediate_size = ((disc.intermediate_size as f64 * hidden as f64
            / disc.hidden_size as f64)
            .round() as usize)
            .max(1);
        g.embedding_size = Some(disc.embedding_width());
        Ok(g)
    }

    /// The pair from a discriminator and a generator built on its shared parameters (see
    /// [`ElectraPretraining::fresh_generator`] and [`ElectraPretraining::load_generator`]).
    pub fn new(
        mut discriminator: crate::PretrainedModel,
        generator: crate::heads::MaskedLm,
    ) -> Result<Self> {
        let crate::ModelConfig::Bert(cfg) = &mut discriminator.config else {
            return Err(crate::Error::InvalidConfig(format!(
                "replaced-token detection trains an ELECTRA discriminator, not a {} model",
                discriminator.config.model_type()
            )));
        };
        if !cfg.is_electra() {
            return Err(crate::Error::InvalidConfig(format!(
                "replaced-token detection trains an ELECTRA discriminator (model_type \
                 \"electra\"), not a {} model",
                cfg.model_type
            )));
        }
        cfg.architectures = vec!["ElectraForPreTraining".into()];
        let cfg = cfg.clone();
        let head = RtdHead::load(&discriminator.params, &cfg)?;
        let params = discriminator.params.clone();
        discriminator
            .head_tensors
            .retain(|(k, _)| params.get(k).is_none());
        let shared: Vec<String> = Self::shared_embeddings(&discriminator)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        for k in &shared {
            let (a, b) = (params.get(k), generator.base.params.get(k));
            match (a, b) {
                (Some(a), Some(b)) if a.as_tensor().id() == b.as_tensor().id() => {}
                _ => {
                    return Err(crate::Error::InvalidConfig(format!(
                        "the generator does not share the discriminator's `{k}`"
                    )))
                }
            }
        }
        Ok(Self {
            discriminator,
            head,
            generator,
            shared,
        })
    }

    /// A fresh generator ([`ElectraPretraining::generator_config`]) on `disc`'s embeddings.
    pub fn fresh_generator(
        disc: &crate::PretrainedModel,
        fraction: f64,
        seed: u64,
    ) -> Result<crate::heads::MaskedLm> {
        let crate::ModelConfig::Bert(cfg) = &disc.config else {
            return Err(crate::Error::InvalidConfig(
                "replaced-token detection trains an ELECTRA discriminator".into(),
            ));
        };
        let g = Self::generator_config(cfg, fraction)?;
        let base = crate::PretrainedModel::fresh_sharing(
            crate::ModelConfig::Bert(g),
            disc.tokenizer.clone(),
            disc.params.device(),
            seed,
            &Self::shared_embeddings(disc),
        )?;
        let mut base = base;
        base.dir = disc.dir.clone();
        crate::heads::MaskedLm::new(base)
    }

    /// The generator saved in `dir` (an `ElectraForMaskedLM` folder), on `disc`'s embeddings
    /// (its own copies of them are not read).
    pub fn load_generator(
        dir: &std::path::Path,
        disc: &crate::PretrainedModel,
    ) -> Result<crate::heads::MaskedLm> {
        let shared = Self::shared_embeddings(disc);
        let base = crate::PretrainedModel::load_sharing(
            dir,
            disc.params.device(),
            |_, _| Ok(()),
            &shared,
        )?;
        match &base.config {
            crate::ModelConfig::Bert(c) if c.is_electra() => {}
            other => {
                return Err(crate::Error::InvalidConfig(format!(
                    "{}: the generator must be an ELECTRA model, not {}",
                    dir.display(),
                    other.model_type()
                )))
            }
        }
        crate::heads::MaskedLm::new(base)
    }

    /// Every trainable parameter once: the discriminator's by name, the generator's own under
    /// `generator.` (the shared embeddings are the discriminator's).
    pub fn vars(&self) -> Vec<(String, candle_core::Var)> {
        let mut v = self.discriminator.params.vars();
        v.extend(
            self.generator
                .base
                .params
                .vars()
                .into_iter()
                .filter(|(k, _)| !self.shared.contains(k))
                .map(|(k, x)| (format!("generator.{k}"), x)),
        );
        v
    }

    /// The generator's vocabulary logits at the flat masked positions.
    ///
    /// # Shapes
    /// `positions`: (P) u32 -> (P, V)
    pub fn generator_logits(
        &self,
        input: &crate::EncoderInput,
        positions: &Tensor,
        mode: &crate::Mode,
    ) -> Result<Tensor> {
        self.generator.logits_at(input, positions, mode)
    }

    /// The discriminator's "replaced" logit per token.
    ///
    /// # Shapes
    /// -> (B, T)
    pub fn discriminator_logits(
        &self,
        input: &crate::EncoderInput,
        mode: &crate::Mode,
    ) -> Result<Tensor> {
        use crate::Encoder;
        let h = self
            .discriminator
            .encoder
            .forward(input, mode)?
            .last_hidden_state;
        self.head.forward(&h)
    }
}
