//! prism-model's integration tests, one binary (each file below is a module).

mod checkpoint;
mod common;
mod fuzz;
mod minilm;
mod mlm;
mod parity;
mod recompute;
mod sentencepiece;
mod tokenizer;
mod xlnet;
