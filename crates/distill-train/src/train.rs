//! Training entry point: read a labelled file (a teacher dataset or any CSV/JSONL with a label
//! column), validate it, hold out a stratified dev split, and hand it to the student kind.
//! Validation lives here, once, so every kind rejects bad data the same way and before any
//! model directory exists.

use crate::error::{Result, TrainError};
use crate::student::{ModelMeta, StudentKind, TrainData, TrainOptions};
use distill_core::input::Columns;
use distill_core::TaskSpec;
use std::path::{Path, PathBuf};

/// What loading found, for the CLI to report (never silently dropped).
#[derive(Debug, Clone, Default)]
pub struct DataReport {
    /// Teacher records without a usable label (`invalid`/`failed`), skipped.
    pub skipped_unlabelled: usize,
    /// Distinct labels present in the data.
    pub classes_present: usize,
    pub from_teacher: bool,
}

/// Loads, validates and splits `data_path`. `label_column` overrides the spec's gold column for
/// CSV/JSONL files (ignored for teacher datasets, whose label is the teacher's).
pub fn load_train_data(
    spec: &TaskSpec,
    data_path: &Path,
    dev_fraction: f64,
    seed: u64,
    label_column: Option<&str>,
) -> Result<(TrainData, DataReport)> {
    let sources = TrainSources {
        data: vec![data_path.to_path_buf()],
        out_of_scope: vec![],
    };
    load_train_sources(spec, &sources, dev_fraction, seed, label_column)
}

/// Where a student's training examples come from.
#[derive(Debug, Clone, Default)]
pub struct TrainSources {
    /// Teacher datasets or labelled CSV/JSONL files, concatenated in order.
    pub data: Vec<PathBuf>,
    /// Files of texts known to be out of scope (their text column only): each is an example of
    /// the task's `labels.out_of_scope` label.
    pub out_of_scope: Vec<PathBuf>,
}

/// Loads, validates and splits every source (see [`TrainSources`]).
pub fn load_train_sources(
    spec: &TaskSpec,
    sources: &TrainSources,
    dev_fraction: f64,
    seed: u64,
    label_column: Option<&str>,
) -> Result<(TrainData, DataReport)> {
    load_for(
        spec,
        sources,
        dev_fraction,
        seed,
        label_column,
        Purpose::Training,
    )
}

/// What a loaded file is for: training data must teach something (two classes, a positive
/// label); a dev file only has to hold labelled examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Training,
    Dev,
}

fn load_for(
    spec: &TaskSpec,
    sources: &TrainSources,
    dev_fraction: f64,
    seed: u64,
    label_column: Option<&str>,
    purpose: Purpose,
) -> Result<(TrainData, DataReport)> {
    if !(0.0..1.0).contains(&dev_fraction) {
        return Err(TrainError::Other(format!(
            "--dev-fraction must be in [0, 1), got {dev_fraction}"
        )));
    }
    if sources.data.is_empty() {
        return Err(TrainError::Other(
            "no training data: pass --data FILE".into(),
        ));
    }
    let oos = match (
        &spec.labels.out_of_scope_index(),
        sources.out_of_scope.first(),
    ) {
        (_, None) => None,
        (Some(i), Some(_)) => Some(*i),
        (None, Some(p)) => {
            return Err(TrainError::Data(format!(
                "{}: out-of-scope examples need an open-set task: set labels.out_of_scope \
                 (e.g. \"none\") in {}",
                p.display(),
                spec.path.display()
            )))
        }
    };
    let cols = Columns {
        gold: Some(
            label_column
                .map(str::to_string)
                .or_else(|| spec.input.gold_column.clone())
                .unwrap_or_else(|| "label".into()),
        ),
        id: spec.input.id_column.clone(),
        ..Columns::from(&spec.input)
    };
    // Every answer as a set of label indices: a classification answer is a set of one.
    let mut examples: Vec<(String, Vec<usize>)> = Vec::new();
    let mut hashes = Vec::new();
    let (mut skipped_unlabelled, mut from_teacher) = (0usize, false);
    for data_path in &sources.data {
        let loaded = distill_core::dataset::load_examples(data_path, &cols, &spec.labels)?;
        hashes.push(distill_core::fsutil::sha256_file(data_path)?);
        skipped_unlabelled += loaded.skipped_unlabelled;
        from_teacher |= loaded.from_teacher;
        for ex in loaded.examples {
            let Some(label) = ex.label else { continue };
            // load_examples has already checked the answer against the label set.
            let y = spec
                .labels
                .parse_set(&label)
                .map_err(|e| TrainError::Data(format!("{}: {e}", data_path.display())))?;
            examples.push((ex.text, y));
        }
    }
    for path in &sources.out_of_scope {
        let y = oos.unwrap_or_default();
        hashes.push(distill_core::fsutil::sha256_file(path)?);
        let text_only = Columns {
            gold: None,
            id: None,
            ..Columns::from(&spec.input)
        };
        let mut n = 0usize;
        for item in distill_core::input::read_inputs(path, None, &text_only)? {
            examples.push((item?.text, vec![y]));
            n += 1;
        }
        if n == 0 {
            return Err(TrainError::Data(format!(
                "{}: no out-of-scope examples",
                path.display()
            )));
        }
    }
    let data_hash = if hashes.len() == 1 {
        hashes.remove(0)
    } else {
        distill_core::fsutil::sha256_hex(hashes.join("\n").as_bytes())
    };
    let data_path = &sources.data[0];
    if examples.is_empty() {
        let why = if skipped_unlabelled > 0 {
            format!(" ({skipped_unlabelled} teacher records had no usable label)")
        } else {
            String::new()
        };
        let what = match purpose {
            Purpose::Training => "to train on",
            Purpose::Dev => "for the dev split",
        };
        return Err(TrainError::Data(format!(
            "{}: no labelled examples {what}{why}",
            data_path.display()
        )));
    }
    let mut per_class = vec![0usize; spec.labels.len()];
    for (_, y) in &examples {
        for &l in y {
            per_class[l] += 1;
        }
    }
    let classes_present = per_class.iter().filter(|&&n| n > 0).count();
    let multilabel = spec.labels.is_multilabel();
    if classes_present < 2 && !multilabel && purpose == Purpose::Training {
        return Err(TrainError::Data(format!(
            "{}: every example has the label `{}`; a classifier needs at least two classes in \
             its training data",
            data_path.display(),
            spec.labels.names[examples[0].1[0]]
        )));
    }
    if classes_present == 0 && purpose == Purpose::Training {
        return Err(TrainError::Data(format!(
            "{}: no example has any label; a tagger needs positive examples",
            data_path.display()
        )));
    }
    let (train, dev, sets) =
        split_label_sets(examples, spec.labels.len(), multilabel, dev_fraction, seed);
    let report = DataReport {
        skipped_unlabelled,
        classes_present,
        from_teacher,
    };
    Ok((
        TrainData {
            task: spec.name.clone(),
            labels: spec.labels.clone(),
            train,
            dev,
            sets,
            data_hash,
            label_source: if from_teacher {
                "teacher".into()
            } else {
                "gold".into()
            },
        },
        report,
    ))
}

/// Replaces `data`'s dev split with every labelled example of `dev_path` (a teacher dataset or
/// a labelled CSV/JSONL, read as a training source is): for data whose own split would leak,
/// e.g. MixSNIPS, whose multi-intent requests reuse the same single-intent phrases, so a random
/// dev split scores phrases the student trained on. `data` should be loaded with no split.
pub fn with_dev_file(
    mut data: TrainData,
    spec: &TaskSpec,
    dev_path: &Path,
    label_column: Option<&str>,
) -> Result<TrainData> {
    let sources = TrainSources {
        data: vec![dev_path.to_path_buf()],
        out_of_scope: vec![],
    };
    let (dev, _) = load_for(spec, &sources, 0.0, 0, label_column, Purpose::Dev)?;
    if !data.dev.is_empty() {
        return Err(TrainError::Other(
            "a dev file replaces the dev split: load the training data with no split".into(),
        ));
    }
    data.dev = dev.train;
    if let (Some(sets), Some(dev_sets)) = (data.sets.as_mut(), dev.sets) {
        sets.dev = dev_sets.train;
    }
    data.data_hash = format!("{}+dev:{}", data.data_hash, dev.data_hash);
    Ok(data)
}

/// One training example: the text and its label's index.
pub type LabelledText = (String, usize);

/// Holds out `fraction` of each class (rounded, never a class's last example), chosen by `seed`.
/// Both halves keep the file's order, so the split is a pure function of (data, fraction, seed).
pub fn stratified_split(
    examples: Vec<(String, usize)>,
    n_classes: usize,
    fraction: f64,
    seed: u64,
) -> (Vec<LabelledText>, Vec<LabelledText>) {
    let keys: Vec<usize> = examples.iter().map(|(_, y)| *y).collect();
    let is_dev = stratified_dev_mask(&keys, n_classes, fraction, seed);
    let mut train = Vec::new();
    let mut dev = Vec::new();
    for (ex, d) in examples.into_iter().zip(is_dev) {
        if d {
            dev.push(ex);
        } else {
            train.push(ex);
        }
    }
    (train, dev)
}

/// Splits examples, each with its label set (a set of one for classification), as `distill
/// train` does: seeded and stratified by the first label, an empty set a stratum of its own.
/// Each text keeps its first label (0 for none); the sets are kept for a multilabel task.
pub fn split_label_sets(
    examples: Vec<(String, Vec<usize>)>,
    n_labels: usize,
    multilabel: bool,
    fraction: f64,
    seed: u64,
) -> (
    Vec<LabelledText>,
    Vec<LabelledText>,
    Option<crate::student::SplitSets>,
) {
    let keys: Vec<usize> = examples
        .iter()
        .map(|(_, y)| y.first().copied().unwrap_or(n_labels))
        .collect();
    let is_dev = stratified_dev_mask(&keys, n_labels + 1, fraction, seed);
    let (mut train, mut dev) = (Vec::new(), Vec::new());
    let (mut train_sets, mut dev_sets) = (Vec::new(), Vec::new());
    for ((text, y), d) in examples.into_iter().zip(is_dev) {
        let key = y.first().copied().unwrap_or(0);
        if d {
            dev.push((text, key));
            dev_sets.push(y);
        } else {
            train.push((text, key));
            train_sets.push(y);
        }
    }
    let sets = multilabel.then_some(crate::student::SplitSets {
        train: train_sets,
        dev: dev_sets,
    });
    (train, dev, sets)
}

/// Which examples [`stratified_split`] holds out, by each example's stratum.
pub fn stratified_dev_mask(keys: &[usize], n_strata: usize, fraction: f64, seed: u64) -> Vec<bool> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); n_strata];
    for (i, &y) in keys.iter().enumerate() {
        by_class[y].push(i);
    }
    let mut is_dev = vec![false; keys.len()];
    let mut rng = SplitMix64::new(seed ^ 0x5eed_de5f);
    for idx in by_class.iter_mut() {
        rng.shuffle(idx);
        let n = idx.len();
        let k = ((n as f64 * fraction).round() as usize).min(n.saturating_sub(1));
        for &i in idx.iter().take(k) {
            is_dev[i] = true;
        }
    }
    is_dev
}

/// Trains `kind` on already-split data; the kind writes `opts.out`.
pub fn train_on(data: &TrainData, kind: StudentKind, opts: &TrainOptions) -> Result<ModelMeta> {
    opts.validate()?;
    // Before the work, not after it: a refused --out found after an hour of training wastes it.
    distill_core::fsutil::check_output_dir(&opts.out, distill_core::fsutil::MODEL_DIR, opts.force)?;
    match kind {
        StudentKind::Linear => crate::linear::train_linear(data, opts),
        StudentKind::EncoderHead => crate::encoder::train_head(data, opts),
        StudentKind::EncoderFinetune => crate::encoder::train_finetune(data, opts),
        StudentKind::Ensemble => Err(crate::TrainError::Other(
            "an ensemble is built from trained students by `distill ensemble`, not trained".into(),
        )),
    }
}

/// Loads `data_path`, splits it and trains `kind`, writing the model directory at `opts.out`.
/// On any error no model directory is left behind.
pub fn train(
    spec: &TaskSpec,
    data_path: &Path,
    kind: StudentKind,
    opts: TrainOptions,
    dev_fraction: f64,
) -> Result<ModelMeta> {
    let (data, _) = load_train_data(spec, data_path, dev_fraction, opts.seed, None)?;
    train_on(&data, kind, &opts)
}

/// A tiny, version-stable PRNG (SplitMix64) so seeded splits and batch orders never change when
/// a dependency's RNG does.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n (n > 0), by rejection so there is no modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }
    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_stratified_and_seeded() {
        let ex: Vec<(String, usize)> = (0..100).map(|i| (format!("t{i}"), i % 4)).collect();
        let (tr, dv) = stratified_split(ex.clone(), 4, 0.2, 7);
        assert_eq!(dv.len(), 20);
        assert_eq!(tr.len(), 80);
        for c in 0..4 {
            assert_eq!(dv.iter().filter(|(_, y)| *y == c).count(), 5);
        }
        let (tr2, dv2) = stratified_split(ex.clone(), 4, 0.2, 7);
        assert_eq!((tr, dv.clone()), (tr2, dv2));
        let (_, dv3) = stratified_split(ex, 4, 0.2, 8);
        assert_ne!(dv, dv3);
    }

    #[test]
    fn a_lone_example_stays_in_train() {
        let ex = vec![
            ("a".to_string(), 0),
            ("b".to_string(), 1),
            ("c".to_string(), 1),
        ];
        let (tr, dv) = stratified_split(ex, 2, 0.5, 1);
        assert!(tr.iter().any(|(_, y)| *y == 0));
        assert_eq!(tr.len() + dv.len(), 3);
    }
}
