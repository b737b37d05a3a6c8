//! Where a task is in its data: each epoch visits the features in an order drawn from
//! `(seed, stream, task, epoch)`, so a cursor of (epoch, position) is all a checkpoint needs.

use crate::rng::{rng_for, Stream};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// Where a task is in its shuffled data.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: u64,
    pub pos: usize,
}

/// The next `n` items of task `ti`'s data in its per-epoch shuffled order (drawn from
/// `stream`), advancing the cursor.
pub fn next_batch<'a, T>(
    items: &'a [T],
    cur: &mut Cursor,
    n: usize,
    seed: u64,
    stream: Stream,
    ti: usize,
) -> Vec<&'a T> {
    let mut out = Vec::with_capacity(n);
    if items.is_empty() {
        return out;
    }
    let mut order = epoch_order(items.len(), seed, stream, ti, cur.epoch);
    while out.len() < n {
        if cur.pos >= items.len() {
            cur.epoch += 1;
            cur.pos = 0;
            order = epoch_order(items.len(), seed, stream, ti, cur.epoch);
        }
        out.push(&items[order[cur.pos]]);
        cur.pos += 1;
    }
    out
}

fn epoch_order(n: usize, seed: u64, stream: Stream, ti: usize, epoch: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    v.shuffle(&mut rng_for(seed, stream, ((ti as u64) << 32) | epoch));
    v
}
