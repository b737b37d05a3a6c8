//! Helpers shared by the integration tests: fixture paths and tensor comparisons.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use prism_model::EncoderInput;
use std::collections::HashMap;
use std::path::PathBuf;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn expected(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixtures().join(format!("{name}_expected.safetensors")),
        &Device::Cpu,
    )
    .unwrap()
}

pub fn input_from(exp: &HashMap<String, Tensor>) -> EncoderInput {
    let get = |k: &str| exp[k].to_dtype(DType::U32).unwrap();
    EncoderInput::new(get("input_ids"), get("attention_mask"))
        .with_token_type_ids(get("token_type_ids"))
}

pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Outputs: max absolute difference.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let d = max_abs(&(got - want).unwrap());
    assert!(d <= tol, "{what}: max abs diff {d} > {tol}");
}

/// Gradients: max absolute difference relative to the reference's largest magnitude, with an
/// absolute floor of 1e-5 for gradients that are mathematically zero (e.g. the attention key
/// bias, which softmax is invariant to) and so hold only rounding noise in both frameworks.
pub fn assert_rel(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let d = max_abs(&(got - want).unwrap());
    let scale = max_abs(want);
    assert!(
        d <= tol * scale + 1e-5,
        "{what}: diff {d} vs scale {scale} (relative {}) > {tol}",
        d / scale.max(1e-12)
    );
}

/// Copy a fixture folder to a temporary directory the test may damage.
pub fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixtures().join(name)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    tmp
}
