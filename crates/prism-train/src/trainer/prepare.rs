//! Reading and featurising every task's data before training, and putting the task heads on
//! the encoder.

use crate::config::TrainConfig;
use crate::data::{self, Example, Target};
use crate::error::{Error, Result};
use crate::objective::TaskData;
use crate::rng::{rng_for, seed_for, Stream};
use crate::tasks::{Supervised, TaskKind, TaskSpec};
use prism_model::tasks::MultiTaskModel;
use prism_model::PretrainedModel;
use rand::seq::SliceRandom;
use std::collections::BTreeSet;
use std::path::PathBuf;

fn resolve_splits(
    t: &crate::config::TaskConfig,
) -> Result<(PathBuf, Option<PathBuf>, Option<PathBuf>)> {
    if let Some(spec) = &t.data {
        let (name, subset) = spec.split_once('/').ok_or_else(|| {
            Error::Config(format!(
                "task `{}`: data `{spec}` must be NAME/SUBSET",
                t.name
            ))
        })?;
        data::registry::fetch_dataset(name, false)?;
        let dir = data::registry::data_dir(name);
        let ext = if name == "squad" { "json" } else { "jsonl" };
        let p = |split: &str| dir.join(format!("{subset}.{split}.{ext}"));
        if !p("train").is_file() {
            return Err(Error::Config(format!(
                "task `{}`: data set `{name}` has no subset `{subset}` ({} missing)",
                t.name,
                p("train").display()
            )));
        }
        let opt = |split: &str| Some(p(split)).filter(|x| x.is_file());
        return Ok((
            t.train.clone().unwrap_or(p("train")),
            t.dev.clone().or(opt("dev")),
            t.test.clone().or(opt("test")),
        ));
    }
    let train = t
        .train
        .clone()
        .ok_or_else(|| Error::Config(format!("task `{}` has no training data", t.name)))?;
    Ok((train, t.dev.clone(), t.test.clone()))
}

/// A `NAME/SUBSET` of a fetched data set (its `split` file, fetched on first use) or a file path.
pub(crate) fn resolve_spec(spec: &str, split: &str) -> Result<PathBuf> {
    let p = PathBuf::from(spec);
    if p.is_file() {
        return Ok(p);
    }
    let (name, subset) = spec
        .split_once('/')
        .ok_or_else(|| Error::Config(format!("`{spec}` is neither a file nor NAME/SUBSET")))?;
    if !data::registry::DATASETS.iter().any(|d| d.name == name) {
        return Err(Error::Config(format!(
            "`{spec}` is neither a file nor a known data set"
        )));
    }
    data::registry::fetch_dataset(name, false)?;
    let ext = if name == "squad" { "json" } else { "jsonl" };
    let f = data::registry::data_dir(name).join(format!("{subset}.{split}.{ext}"));
    if !f.is_file() {
        return Err(Error::Config(format!(
            "data set `{name}` has no `{subset}` {split} split ({} missing)",
            f.display()
        )));
    }
    Ok(f)
}

/// Labels of a classification or tagging task: as configured, or those of the training data
/// (sorted; `O` first for tags).
fn infer_labels(kind: TaskKind, examples: &[Example]) -> Vec<String> {
    let mut set = BTreeSet::new();
    for ex in examples {
        match &ex.target {
            Target::Label(l) => {
                set.insert(l.clone());
            }
            Target::Tags(t) | Target::Labels(t) => set.extend(t.iter().cloned()),
            _ => {}
        }
    }
    label_order(kind, set)
}

/// prism's order of a task's labels: sorted, with `O` first for tags.
pub(crate) fn label_order(kind: TaskKind, labels: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut labels: Vec<String> = labels
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if kind == TaskKind::Token {
        if let Some(i) = labels.iter().position(|l| l == "O") {
            let o = labels.remove(i);
            labels.insert(0, o);
        }
    }
    labels
}

fn cap(mut v: Vec<Example>, n: Option<usize>, seed: u64, salt: u64) -> Vec<Example> {
    if let Some(n) = n {
        if v.len() > n {
            v.shuffle(&mut rng_for(seed, Stream::Subset, salt));
            v.truncate(n);
        }
    }
    v
}

/// Read and featurise every task's data (once: evaluations reuse the features) and put the
/// task heads on `base`.
pub fn prepare_with(
    cfg: &TrainConfig,
    base: PretrainedModel,
) -> Result<(MultiTaskModel, Vec<TaskData>)> {
    let mut specs = Vec::new();
    let mut raw = Vec::new();
    for (ti, t) in cfg.tasks.iter().enumerate() {
        let (train_path, dev_path, test_path) = resolve_splits(t)?;
        let kind = t.kind.target_kind();
        let pair = t.kind.is_pair();
        let train = data::read_file(&train_path, &t.fields, kind, pair)?;
        let mut train = cap(train, t.max_train_examples, cfg.seed, ti as u64);
        let read_opt = |p: &Option<PathBuf>, salt: u64| -> Result<Vec<Example>> {
            match p {
                Some(p) => Ok(cap(
                    data::read_file(p, &t.fields, kind, pair)?,
                    t.max_eval_examples,
                    cfg.seed,
                    salt,
                )),
                None => Ok(Vec::new()),
            }
        };
        let dev = read_opt(&dev_path, 1000 + ti as u64)?;
        let test = read_opt(&test_path, 2000 + ti as u64)?;
        if let Some(ex) = train
            .iter()
            .find(|e| matches!(&e.target, Target::Answers(a) if a.is_empty()))
        {
            return Err(Error::data(
                &train_path,
                ex.line,
                "answers",
                format!(
                    "question {} (`{}`) has no answer: training questions need one \
                     (unanswerable questions are for evaluation only)",
                    ex.line,
                    ex.id.as_deref().unwrap_or("no id")
                ),
            ));
        }
        if let Some(ex) = train.iter().find(|e| e.target == Target::None) {
            return Err(Error::data(
                &train_path,
                ex.line,
                &t.fields.label,
                "missing (training examples need a label)",
            ));
        }
        let labels = match (&t.labels, t.kind) {
            (Some(l), _) => l.clone(),
            (
                None,
                TaskKind::Classification
                | TaskKind::PairClassification
                | TaskKind::Token
                | TaskKind::MultiLabel,
            ) => infer_labels(t.kind, &train),
            (None, _) => Vec::new(),
        };
        let needs_two = matches!(
            t.kind,
            TaskKind::Classification | TaskKind::PairClassification | TaskKind::Token
        );
        if needs_two && t.labels.is_none() && labels.len() < 2 {
            let file = train_path.display();
            return Err(Error::Config(if train.is_empty() {
                format!("task `{}`: {file} has no training examples", t.name)
            } else {
                format!(
                    "task `{}`: the {} training examples of {file} have {} distinct label(s) \
                     {labels:?} in their `{}` field; a {:?} task needs at least two (is this the \
                     right file and `kind`?)",
                    t.name,
                    train.len(),
                    labels.len(),
                    t.fields.label,
                    t.kind
                )
            }));
        }
        // Dev and test examples are scored: each needs a target, and a class the task has
        // (otherwise it would silently drop out of the metrics, or score 0).
        for (split, path, set) in [("dev", &dev_path, &dev), ("test", &test_path, &test)] {
            let Some(path) = path else { continue };
            for ex in set.iter() {
                match &ex.target {
                    Target::None if t.kind != TaskKind::Qa => {
                        return Err(Error::data(
                            path,
                            ex.line,
                            &t.fields.label,
                            format!("missing ({split} examples need a label to be scored)"),
                        ))
                    }
                    // Against the configured labels only: inferred ones come from a training
                    // set that may be capped (`max_train_examples`) below some classes.
                    Target::Label(l) if t.labels.is_some() && !labels.contains(l) => {
                        return Err(Error::data(
                            path,
                            ex.line,
                            &t.fields.label,
                            format!("{l:?} is not one of the configured labels {labels:?}"),
                        ))
                    }
                    _ => {}
                }
            }
        }
        if let Some(p) = t.label_noise {
            let seed = seed_for(cfg.seed, Stream::LabelNoise, ti as u64);
            data::flip_labels(&mut train, &labels, p, seed);
        }
        specs.push(TaskSpec {
            name: t.name.clone(),
            kind: t.kind,
            labels,
            max_length: t.max_length,
            doc_stride: t.doc_stride,
            max_question_length: t.max_question_length,
            threshold: t.threshold,
        });
        let mut extra = Vec::new();
        if let (Some(pt), Some(dp)) = (&t.perturbed_dev, &dev_path) {
            let mut rng = rng_for(cfg.seed, Stream::PerturbedDev, ti as u64);
            let noisy: Vec<Example> = dev
                .iter()
                .map(|e| {
                    let mut e = e.clone();
                    e.text = data::perturb_text(&e.text, pt.typo_rate, pt.word_dropout, &mut rng);
                    if let Some(b) = &e.text_b {
                        e.text_b = Some(data::perturb_text(
                            b,
                            pt.typo_rate,
                            pt.word_dropout,
                            &mut rng,
                        ));
                    }
                    e
                })
                .collect();
            extra.push(("dev_perturbed".to_string(), dp.clone(), noisy));
        }
        for spec in &t.extra_test {
            let p = resolve_spec(spec, "test")?;
            extra.push((
                spec.clone(),
                p.clone(),
                read_opt(&Some(p), 3000 + ti as u64)?,
            ));
        }
        let dann = match &t.dann {
            Some(d) => {
                let p = resolve_spec(&d.target, "train")?;
                let ex = data::read_file(&p, &t.fields, kind, pair)?;
                let ex: Vec<Example> = cap(ex, d.max_examples, cfg.seed, 4000 + ti as u64)
                    .into_iter()
                    .map(|mut e| {
                        e.target = Target::None;
                        e
                    })
                    .collect();
                Some((p, ex))
            }
            None => None,
        };
        raw.push((
            train_path, train, dev_path, dev, test_path, test, extra, dann,
        ));
    }
    let model = MultiTaskModel::new(base, specs, cfg.seed)?;
    for (task, tc) in model.tasks.iter().zip(&cfg.tasks) {
        if tc.loss != crate::loss::LossConfig::CrossEntropy {
            if !matches!(
                tc.kind,
                TaskKind::Classification | TaskKind::PairClassification
            ) {
                return Err(Error::Config(format!(
                    "task `{}`: `loss` applies to classification tasks only",
                    tc.name
                )));
            }
            tc.loss.validate(task.spec.labels.len())?;
        }
        if let Some(adv) = &tc.adversarial {
            if matches!(
                adv,
                crate::loss::AdversarialConfig::Smart { .. }
                    | crate::loss::AdversarialConfig::RDrop { .. }
            ) && matches!(tc.kind, TaskKind::Qa | TaskKind::Token)
            {
                return Err(Error::Config(format!(
                    "task `{}`: SMART and R-Drop apply to classification and regression tasks",
                    tc.name
                )));
            }
        }
    }
    let mut out = Vec::new();
    for (ti, (train_path, train, dev_path, dev, test_path, test, extra_test, dann)) in
        raw.into_iter().enumerate()
    {
        let train_feats = model.tasks[ti].featurize(&train, &train_path)?;
        let extra_test = extra_test
            .into_iter()
            .map(|(name, p, ex)| {
                let f = model.tasks[ti].featurize_for_eval(&ex, &p)?;
                Ok((name, p, ex, f))
            })
            .collect::<Result<Vec<_>>>()?;
        let dann_feats = match &dann {
            Some((p, ex)) => model.tasks[ti].featurize(ex, p)?,
            None => Vec::new(),
        };
        // Unknown labels in dev/test are errors too, found before any training.
        let dev_feats = match &dev_path {
            Some(p) => model.tasks[ti].featurize_for_eval(&dev, p)?,
            None => Vec::new(),
        };
        let test_feats = match &test_path {
            Some(p) => model.tasks[ti].featurize_for_eval(&test, p)?,
            None => Vec::new(),
        };
        let train_eval = match cfg.eval_train_examples {
            Some(n) => cap(train.clone(), Some(n), cfg.seed, 5000 + ti as u64),
            None => Vec::new(),
        };
        let train_eval_feats = model.tasks[ti].featurize_for_eval(&train_eval, &train_path)?;
        out.push(TaskData {
            train_path,
            train,
            train_feats,
            dev_path,
            dev,
            test_path,
            test,
            dann_feats,
            extra_test,
            dev_feats,
            test_feats,
            train_eval,
            train_eval_feats,
        });
    }
    Ok((model, out))
}
