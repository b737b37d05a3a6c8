//! prism-model: everything needed to run a saved model. BERT, RoBERTa and XLNet encoders on
//! candle with fused CPU ops that have a backward pass, Hugging Face checkpoint and tokenizer
//! I/O, gradients with respect to embeddings, and the task heads of a trained multi-task model
//! with their predictions ([`tasks`]).
//!
//! # Shape letters
//! Tensor shapes in docs and `// (..)` comments use: B batch, T tokens, C channels (hidden
//! size), H attention heads, D head size (C / H), F feed-forward size, V vocabulary, L layers.

pub mod checkpoint;
pub mod error;
pub mod fetch;
pub mod grad;
pub mod heads;
pub mod html;
pub mod models;
pub mod nn;
pub mod ops;
pub mod recompute;
pub mod sentencepiece;
pub mod tasks;
pub mod tokenizer;

pub use checkpoint::{AnyEncoder, ModelConfig, PretrainedModel, Sizes};
pub use error::{Error, Result};
pub use grad::{embedding_gradients, embedding_gradients_with, EmbeddingGrads};
pub use models::bert::{mean_pool, Bert, BertConfig, Flavor};
pub use models::{Encoder, EncoderInput, EncoderOutput, Probes};
pub use nn::{Mode, ParamStore};
pub use tokenizer::{Encoded, LongWindows, PrismTokenizer};
