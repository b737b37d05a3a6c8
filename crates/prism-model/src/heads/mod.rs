//! Task heads on top of an encoder. Each is built under a checkpoint prefix (prism saves them as
//! `prism.heads.<task>.*`) and returns logits; losses live in prism-train.

mod domain;
mod mlm;
mod plm;
mod prediction;
mod rtd;
mod sequence;
mod span;
mod token;

pub use domain::DomainHead;
pub use mlm::{is_tied_decoder_copy, mlm_class, mlm_head_names, FillCandidate, MaskedLm, MlmHead};
pub use plm::PermutationLm;
pub use prediction::{Pooling, PredictionHead, PredictionSpec};
pub use rtd::{ElectraPretraining, RtdHead};
pub use sequence::{DenseAct, SequenceHead};
pub use span::SpanHead;
pub use token::TokenHead;
