//! Every random draw of a run comes from a generator seeded by `(seed, stream, index)`: the run's
//! seed, a named stream (what the numbers are for) and an index (the update, micro-batch, task
//! or epoch). A run is then a pure function of its config, and a resumed run redraws exactly
//! what an uninterrupted one would have drawn.

use rand::rngs::StdRng;
use rand::SeedableRng;

/// What a generator's numbers are for. The values are part of the results' reproducibility:
/// changing one changes every run that draws from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    /// Which task the next micro-batch comes from.
    TaskChoice = 1,
    /// Dropout masks of a fine-tuning micro-batch.
    Dropout = 2,
    /// A task's data order in an epoch.
    Order = 3,
    /// Which examples `max_train_examples` / `max_eval_examples` keep.
    Subset = 4,
    /// The order of a task's unlabelled DANN target data in an epoch.
    DannOrder = 5,
    /// Random starts and noise of adversarial perturbations (FGM/PGD/FreeLB/SMART, R-Drop).
    Adversarial = 6,
    /// Which training labels `label_noise` flips.
    LabelNoise = 7,
    /// The typos and dropped words of `perturbed_dev`.
    PerturbedDev = 8,
    /// Random task orders (PCGrad) and random weights (RLW) of a multi-task micro-batch.
    Multitask = 9,
    /// Which corpus files an epoch visits first (pre-training).
    CorpusFiles = 21,
    /// The shuffle buffer of packed sequences (pre-training).
    CorpusShuffle = 22,
    /// Masks (MLM) or permutations (PLM) of a training micro-batch.
    LmMask = 31,
    /// Dropout masks of a pre-training micro-batch.
    LmDropout = 32,
    /// The fixed masks of the held-out set, the same at every evaluation.
    LmDevMask = 33,
    /// Fresh parameters of the pre-training heads (and of a fresh encoder's store).
    LmInit = 34,
    /// The generator's sampled replacements of a training micro-batch (RTD).
    RtdSample = 35,
    /// The fixed replacements sampled for the held-out set at each evaluation (RTD).
    RtdDevSample = 36,
    /// The downstream probe's classifier initialisation and example subsets.
    Probe = 37,
}

/// A generator for `stream` at `index` of a run seeded by `seed` (SplitMix64 over the inputs).
pub fn rng_for(seed: u64, stream: Stream, index: u64) -> StdRng {
    StdRng::seed_from_u64(seed_for(seed, stream, index))
}

/// The 64-bit seed [`rng_for`] starts its generator from, for APIs that take a seed.
pub fn seed_for(seed: u64, stream: Stream, index: u64) -> u64 {
    let a = stream as u64;
    let mut z = seed ^ a.wrapping_mul(0x9E3779B97F4A7C15) ^ index.wrapping_mul(0xC2B2AE3D27D4EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn streams_and_indices_give_different_generators() {
        let a: u64 = rng_for(7, Stream::Dropout, 3).random();
        assert_eq!(a, rng_for(7, Stream::Dropout, 3).random::<u64>());
        assert_ne!(a, rng_for(7, Stream::Dropout, 4).random::<u64>());
        assert_ne!(a, rng_for(7, Stream::TaskChoice, 3).random::<u64>());
        assert_ne!(a, rng_for(8, Stream::Dropout, 3).random::<u64>());
    }
}
