//! `distill quantize` on both encoder student kinds (tiny BERT, quantised here in CI): the int8
//! directory keeps every tensor it does not quantise byte for byte, records its f32 parent, loads
//! back to identical predictions, stays close to the f32 parent, is deterministic, and refuses
//! what it cannot do. On the real MiniLM (installed by `scripts/setup.sh`, as in CI) the int8
//! embeddings stay within a tight cosine of the f32 ones.

mod encoder_bert_support;

use candle_core::Device;
use distill_core::LabelSet;
use distill_train::encoder::embed::{Backend, FrozenEncoder};
use distill_train::encoder::finetune::PackedClassifier;
use distill_train::quantize::{quantize_model_dir, INT8_SUFFIX, SCALE_SUFFIX, SCHEME};
use distill_train::{encoder, load_student, ModelMeta, TrainData, TrainOptions};
use encoder_bert_support::*;
use std::path::{Path, PathBuf};

fn data() -> TrainData {
    TrainData {
        task: "sentiment".into(),
        labels: LabelSet::new(vec!["pos".into(), "neg".into()]),
        train: sentiment_rows(64, 0),
        dev: sentiment_rows(16, 1000),
        sets: None,
        data_hash: "test".into(),
        label_source: "gold".into(),
    }
}

fn opts(out: &Path, base: &Path) -> TrainOptions {
    let mut o = TrainOptions::new(out);
    o.seed = 3;
    o.device = Device::Cpu;
    o.threads = 2;
    o.epochs = Some(12);
    o.batch_size = Some(8);
    o.lr = Some(3e-3);
    o.max_len = Some(16);
    o.patience = Some(20);
    o.base = Some(base.to_string_lossy().into_owned());
    o.progress = false;
    o
}

/// A trained f32 student of each encoder kind, in one temp dir.
struct Students {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    finetune: PathBuf,
    head: PathBuf,
}

fn students() -> Students {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let base = root.join("base");
    write_sentence_encoder_base(&base, &tiny_config(), 5);
    let finetune = root.join("ft");
    encoder::train_finetune(&data(), &opts(&finetune, &base)).unwrap();
    let head = root.join("head");
    let mut o = opts(&head, &base);
    o.epochs = Some(60);
    o.lr = None;
    o.cache_dir = Some(root.join("cache"));
    encoder::train_head(&data(), &o).unwrap();
    Students {
        _tmp: tmp,
        root,
        finetune,
        head,
    }
}

fn texts() -> Vec<String> {
    sentiment_rows(24, 500)
        .into_iter()
        .map(|(t, _)| t)
        .collect()
}

fn logits(dir: &Path) -> Vec<Vec<f32>> {
    let t = texts();
    let refs: Vec<&str> = t.iter().map(String::as_str).collect();
    load_student(dir, &Device::Cpu)
        .unwrap()
        .logits(&refs)
        .unwrap()
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
        .unwrap()
}

fn tensors(dir: &Path) -> Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn both_encoder_kinds_quantise_reload_identically_and_stay_close_to_f32() {
    let s = students();
    for (name, parent) in [("ft", &s.finetune), ("head", &s.head)] {
        let int8 = s.root.join(format!("{name}-int8"));
        let meta = quantize_model_dir(parent, &int8, false).unwrap();
        let parent_meta = ModelMeta::load(parent).unwrap();
        let q = meta.quantization.as_ref().unwrap();
        assert_eq!(q.scheme, SCHEME);
        assert!(q.parent.is(&parent_meta), "{name}: parent not recorded");
        assert_eq!(q.parent.dev_accuracy, parent_meta.dev_accuracy);
        // 2 layers × (query, key, value, attention output, intermediate, output).
        assert_eq!(q.layers.len(), 12, "{name}: {:?}", q.layers);
        assert!(q.int8_bytes < q.f32_bytes, "{name}: {q:?}");
        assert_eq!(ModelMeta::load(&int8).unwrap(), meta);
        for f in ["config.json", "tokenizer.json", "distill.json"] {
            assert!(int8.join(f).is_file(), "{name}: {f} missing");
        }
        assert_eq!(
            std::fs::read(parent.join("config.json")).unwrap(),
            std::fs::read(int8.join("config.json")).unwrap()
        );

        // Every dense layer became an I8 tensor plus F32 scales; everything else is unchanged.
        let before = tensors(parent);
        let after = tensors(&int8);
        for (n, dtype, shape, data) in &before {
            match distill_train::quantize::quantizable_stem(n) {
                Some(stem) => {
                    let find = |suffix: &str| {
                        after
                            .iter()
                            .find(|t| t.0 == format!("{stem}.{suffix}"))
                            .unwrap_or_else(|| panic!("{name}: no {stem}.{suffix}"))
                    };
                    let (_, qd, qs, _) = find(INT8_SUFFIX);
                    assert_eq!((qd, qs), (&safetensors::Dtype::I8, shape));
                    let (_, sd, ss, _) = find(SCALE_SUFFIX);
                    assert_eq!((sd, ss), (&safetensors::Dtype::F32, &vec![shape[0]]));
                    assert!(!after.iter().any(|t| &t.0 == n), "{name}: {n} kept as f32");
                }
                None => assert!(
                    after
                        .iter()
                        .any(|t| (&t.0, &t.1, &t.2, &t.3) == (n, dtype, shape, data)),
                    "{name}: {n} changed"
                ),
            }
        }

        // Save → load → predict: two loads agree exactly; the int8 model follows its parent.
        let (a, b) = (logits(&int8), logits(&int8));
        assert_eq!(a, b, "{name}: reloading changed the logits");
        let f = logits(parent);
        let agree = a
            .iter()
            .zip(&f)
            .filter(|(x, y)| argmax(x) == argmax(y))
            .count();
        assert!(
            agree >= a.len() - 1,
            "{name}: {agree}/{} labels agree",
            a.len()
        );
        let worst = a
            .iter()
            .flatten()
            .zip(f.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let scale = f.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            worst <= 0.1 * scale.max(1.0),
            "{name}: logits moved by {worst} (scale {scale})"
        );

        // Deterministic: quantising again writes the same tensors.
        let again = s.root.join(format!("{name}-int8-again"));
        quantize_model_dir(parent, &again, false).unwrap();
        assert_eq!(tensors(&again), after, "{name}: not deterministic");
    }
}

/// The packed CPU classifier that int8 fine-tuned students run, on the f32 model: the same
/// logits as our candle BERT (so what int8 changes is the quantisation alone).
#[test]
fn packed_classifier_matches_the_candle_model_on_f32_weights() {
    let s = students();
    let meta = ModelMeta::load(&s.finetune).unwrap();
    let packed =
        PackedClassifier::load(&s.finetune, 16, meta.labels.len(), 2, &Device::Cpu).unwrap();
    let t = texts();
    let refs: Vec<&str> = t.iter().map(String::as_str).collect();
    let got = packed.logits(&refs).unwrap();
    let want = logits(&s.finetune);
    for (g, w) in got.iter().zip(&want) {
        for (x, y) in g.iter().zip(w) {
            assert!((x - y).abs() < 1e-4, "{g:?} vs {w:?}");
        }
    }
}

#[test]
fn refusals_name_the_problem_and_write_nothing() {
    let s = students();
    let int8 = s.root.join("ft-int8");
    quantize_model_dir(&s.finetune, &int8, false).unwrap();
    let err = quantize_model_dir(&int8, &s.root.join("twice"), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("already int8"), "{err}");
    assert!(!s.root.join("twice").exists());
    let err = quantize_model_dir(&s.finetune, &s.finetune, true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--out") && err.contains("beside"), "{err}");
    // A folder of the user's files is not replaced without --force.
    let mine = s.root.join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "keep").unwrap();
    assert!(quantize_model_dir(&s.finetune, &mine, false).is_err());
    assert_eq!(
        std::fs::read_to_string(mine.join("notes.txt")).unwrap(),
        "keep"
    );
    // An int8 encoder only runs on the packed CPU forward.
    let err = FrozenEncoder::load_backend(
        &s.root.join("ft-int8"),
        None,
        1,
        &Device::Cpu,
        Backend::Candle,
    )
    .err()
    .expect("the candle backend cannot run int8")
    .to_string();
    assert!(err.contains("--device cpu"), "{err}");
    // A corrupt int8 tensor (-128 is outside the symmetric range) is refused at load.
    let bytes = std::fs::read(int8.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let name = st
        .names()
        .into_iter()
        .find(|n| n.ends_with(INT8_SUFFIX))
        .unwrap()
        .to_string();
    let mut views: Vec<(String, Vec<u8>, safetensors::Dtype, Vec<usize>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.data().to_vec(), v.dtype(), v.shape().to_vec()))
        .collect();
    for v in views.iter_mut().filter(|v| v.0 == name) {
        v.1[0] = 0x80;
    }
    let tv: Vec<(String, safetensors::tensor::TensorView)> = views
        .iter()
        .map(|(n, d, t, s)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*t, s.clone(), d).unwrap(),
            )
        })
        .collect();
    std::fs::write(
        int8.join("model.safetensors"),
        safetensors::serialize(tv, None).unwrap(),
    )
    .unwrap();
    let err = load_student(&int8, &Device::Cpu).err().unwrap().to_string();
    assert!(
        err.contains("-128") && err.contains("model.safetensors"),
        "{err}"
    );
}

/// The real MiniLM (installed by scripts/setup.sh, as CI does): int8 embeddings of Banking77
/// sentences stay within cosine 0.99 of the f32 ones, on every kernel this CPU has.
#[test]
fn int8_minilm_embeddings_stay_close_to_f32_if_installed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/base/all-MiniLM-L6-v2");
    if !dir.join("model.safetensors").is_file() {
        eprintln!("skipped: {} not installed", dir.display());
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // A distill model directory around the base: what an encoder-head student holds.
    let student = tmp.path().join("minilm");
    std::fs::create_dir_all(&student).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(dir.join(f), student.join(f)).unwrap();
    }
    let s = students();
    let mut meta = ModelMeta::load(&s.head).unwrap();
    meta.max_len = Some(128);
    std::fs::write(
        student.join("distill.json"),
        serde_json::to_string(&meta).unwrap(),
    )
    .unwrap();
    let int8 = tmp.path().join("minilm-int8");
    quantize_model_dir(&student, &int8, false).unwrap();
    let texts = [
        "I still have not received my new card, I ordered over a week ago.",
        "How do I top up?",
        "Why was I charged a fee for withdrawing cash?",
        "My transfer to a friend failed, can you help? 🙏",
    ];
    let f32_enc = FrozenEncoder::load(&dir, None, 2, &Device::Cpu).unwrap();
    let want = f32_enc.embed(&texts, 4).unwrap();
    let q = FrozenEncoder::load(&int8, None, 2, &Device::Cpu).unwrap();
    assert!(q.int8_kernel().is_some());
    let got = q.embed(&texts, 4).unwrap();
    let d = f32_enc.dim();
    for i in 0..texts.len() {
        let cos: f32 = (0..d).map(|c| got[i * d + c] * want[i * d + c]).sum();
        assert!(cos > 0.99, "{}: cosine {cos}", texts[i]);
    }
}
