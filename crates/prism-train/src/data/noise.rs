//! Seeded noise for robustness experiments: flipped training labels (`label_noise`) and a
//! typo'd, word-dropped copy of the dev set (`perturbed_dev`).

use super::{Example, Target};

/// Flip a fraction `p` of the labels to a different label drawn uniformly from `labels`
/// (seeded); returns how many were flipped.
pub fn flip_labels(examples: &mut [Example], labels: &[String], p: f64, seed: u64) -> usize {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut flipped = 0;
    for ex in examples.iter_mut() {
        if let Target::Label(l) = &ex.target {
            let u: f64 = rng.random();
            if u < p && labels.len() > 1 {
                let others: Vec<&String> = labels.iter().filter(|x| *x != l).collect();
                let pick = others[rng.random_range(0..others.len())].clone();
                ex.target = Target::Label(pick);
                flipped += 1;
            }
        }
    }
    flipped
}

/// A seeded noisy copy of `text`: a character-level typo (swap, drop, insert or replace one
/// letter) in `typo_rate` of the words, then each word dropped with probability `word_dropout`
/// (never all of them).
pub fn perturb_text(
    text: &str,
    typo_rate: f64,
    word_dropout: f64,
    rng: &mut rand::rngs::StdRng,
) -> String {
    use rand::Rng;
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut out: Vec<String> = Vec::with_capacity(words.len());
    for w in &words {
        if rng.random::<f64>() < word_dropout {
            continue;
        }
        let mut chars: Vec<char> = w.chars().collect();
        let letters: Vec<usize> = (0..chars.len())
            .filter(|&i| chars[i].is_alphabetic())
            .collect();
        if !letters.is_empty() && rng.random::<f64>() < typo_rate {
            let i = letters[rng.random_range(0..letters.len())];
            let c = (b'a' + rng.random_range(0..26u8)) as char;
            match rng.random_range(0..4) {
                0 if i + 1 < chars.len() => chars.swap(i, i + 1),
                1 if chars.len() > 1 => {
                    chars.remove(i);
                }
                2 => chars.insert(i, c),
                _ => chars[i] = c,
            }
        }
        out.push(chars.into_iter().collect());
    }
    if out.is_empty() {
        return text.to_string();
    }
    out.join(" ")
}
