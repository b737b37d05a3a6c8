//! XLNet's language-modelling head for permutation language modelling, as transformers'
//! `XLNetLMHeadModel`: `lm_loss` is a linear layer whose weight is the word-embedding table
//! (tied) and whose bias is the head's only parameter, applied to the query stream.

use crate::error::{Error, Result};
use crate::models::xlnet::XlnetExtras;
use crate::nn::Init;
use crate::{AnyEncoder, EncoderInput, Mode, ModelConfig, PretrainedModel};
use candle_core::Tensor;

pub struct PermutationLm {
    pub base: PretrainedModel,
    /// (V)
    pub bias: Tensor,
}

impl PermutationLm {
    /// Put the LM head on an XLNet (the checkpoint's bias, or zeros).
    pub fn new(mut base: PretrainedModel) -> Result<Self> {
        let ModelConfig::Xlnet(cfg) = &mut base.config else {
            return Err(Error::InvalidConfig(
                "permutation language modelling needs an XLNet model".into(),
            ));
        };
        cfg.architectures = vec!["XLNetLMHeadModel".into()];
        let v = cfg.vocab_size;
        let bias = base
            .params
            .root()
            .get_or_init(&[v], "lm_loss.bias", Init::Const(0.0))?;
        let params = base.params.clone();
        base.head_tensors
            .retain(|(k, _)| params.get(k).is_none() && k != "lm_loss.weight");
        Ok(Self { base, bias })
    }

    /// Vocabulary logits of the query stream at flat positions `b * M + m`.
    ///
    /// # Shapes
    /// `positions`: (P) u32 -> (P, V)
    pub fn logits_at(
        &self,
        input: &EncoderInput,
        extras: &XlnetExtras,
        positions: &Tensor,
        mode: &Mode,
    ) -> Result<Tensor> {
        let AnyEncoder::Xlnet(x) = &self.base.encoder else {
            return Err(Error::InvalidConfig("not an XLNet".into()));
        };
        use crate::Encoder;
        let e = x.word_embeddings(&input.input_ids)?;
        let g = x.forward_xlnet(&e, input, extras, mode)?.output; // (B, M, C)
        let (b, m, c) = g.dims3()?;
        let picked = g.reshape((b * m, c))?.index_select(positions, 0)?; // (P, C)
                                                                         // Tied decoder through the fused linear op (the table's gradient in its own layout).
        Ok(crate::ops::linear(
            &picked,
            x.word_embedding_table(),
            Some(&self.bias),
        )?)
    }
}
