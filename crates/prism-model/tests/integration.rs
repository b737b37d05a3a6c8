//! prism-model's integration tests, one binary (each file below is a module).

mod common;
mod checkpoint;
mod minilm;
mod mlm;
mod parity;
mod sentencepiece;
mod tokenizer;
mod xlnet;
