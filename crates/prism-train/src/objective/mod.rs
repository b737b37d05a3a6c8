//! What differs between training runs, plugged into [`crate::train_loop`]: multi-task
//! fine-tuning (task sampling, each task's loss, DANN and adversarial steps, dev evaluation
//! with early stopping) and language-model pre-training (MLM, PLM).

mod lm;
mod multitask;

pub use lm::LanguageModelling;
pub use lm::{PretrainState, PRETRAIN_STATE_FILE};
pub use multitask::{
    evaluate_dev, FineTuneState, MultiTask, TaskData, TrainerState, TRAINER_STATE_FILE,
};
