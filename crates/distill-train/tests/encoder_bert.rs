//! Our differentiable BERT: gradients reach every weight, checkpoints load by name with clear
//! errors, and the forward pass agrees with candle-transformers' BERT on the same weights.

mod encoder_bert_support;

use candle_core::{Device, Tensor};
use distill_train::encoder::bert::{Batch, BertClassifier, BertConfig, Dropout, LoadOptions};
use distill_train::encoder::finetune::classification_loss;
use encoder_bert_support::*;
use std::collections::HashMap;

fn batch(dev: &Device) -> Batch {
    let seqs: Vec<Vec<u32>> = vec![
        vec![2, 5, 6, 7, 3],
        vec![2, 10, 3],
        vec![2, 8, 9, 11, 12, 13, 3],
    ];
    let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    Batch::from_ids(&refs, 0, dev).unwrap()
}

#[test]
fn every_trainable_weight_gets_a_nonzero_gradient() {
    let cfg = tiny_config();
    let model = random_model(&cfg, 3, true, 7);
    let dev = Device::Cpu;
    let mut drop = Dropout::new(1, &dev).unwrap();
    let logits = model.forward(&batch(&dev), Some(&mut drop)).unwrap();
    let labels = Tensor::new(&[0u32, 1, 2], &dev).unwrap();
    let loss = classification_loss(&logits, &labels, None).unwrap();
    let grads = loss.backward().unwrap();
    // 5 embedding tensors + 16 per layer + pooler (2) + classifier (2).
    assert_eq!(model.vars().len(), 5 + 16 * cfg.num_hidden_layers + 4);
    let mut dead = Vec::new();
    for (name, var) in model.vars() {
        let g = grads.get(var);
        let mag = g
            .map(|g| {
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .unwrap_or(0.0);
        if !(mag > 0.0 && mag.is_finite()) {
            dead.push(name.clone());
        }
    }
    assert!(dead.is_empty(), "weights without gradient: {dead:?}");
}

#[test]
fn checkpoints_match_every_tensor_by_name_and_bad_ones_say_which() {
    let t = tempfile::tempdir().unwrap();
    let cfg = tiny_config();
    let model = random_model(&cfg, 3, false, 3);
    let path = t.path().join("model.safetensors");
    model.save(&path).unwrap();
    let n_saved = candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap()
        .len();
    let (back, report) =
        BertClassifier::load(&path, &cfg, 3, &Device::Cpu, LoadOptions::inference()).unwrap();
    assert_eq!(report.loaded.len(), n_saved);
    assert!(
        report.initialised.is_empty() && report.unused.is_empty(),
        "{report:?}"
    );
    for ((n1, a), (n2, b)) in model.named_tensors().iter().zip(back.named_tensors()) {
        assert_eq!(n1, n2);
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "{n1} changed on reload");
    }

    // A sentence-encoder base (no `bert.` prefix, no pooler): only the head is initialised.
    let base = t.path().join("base");
    write_sentence_encoder_base(&base, &cfg, 5);
    let bpath = base.join("model.safetensors");
    let opts = LoadOptions {
        trainable: true,
        init_missing_head: true,
        seed: 1,
    };
    let (_, report) = BertClassifier::load(&bpath, &cfg, 3, &Device::Cpu, opts).unwrap();
    let mut init = report.initialised.clone();
    init.sort();
    assert_eq!(
        init,
        [
            "bert.pooler.dense.bias",
            "bert.pooler.dense.weight",
            "classifier.bias",
            "classifier.weight"
        ]
    );
    assert!(report.unused.is_empty());
    // ...but a trained student must have its head.
    let err = BertClassifier::load(&bpath, &cfg, 3, &Device::Cpu, LoadOptions::inference())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("missing tensor `bert.pooler.dense.weight`"),
        "{err}"
    );

    // A missing encoder tensor is named.
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    tensors.remove("bert.encoder.layer.1.attention.self.key.bias");
    let err = BertClassifier::from_tensors(
        tensors,
        &path,
        &cfg,
        3,
        &Device::Cpu,
        LoadOptions::inference(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("bert.encoder.layer.1.attention.self.key.bias"),
        "{err}"
    );

    // A config with another hidden size than the weights.
    let mut wide = cfg.clone();
    wide.hidden_size = 48;
    let err = BertClassifier::load(&path, &wide, 3, &Device::Cpu, LoadOptions::inference())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("shape") && err.contains("hidden_size 48"),
        "{err}"
    );

    // Wrong number of labels for a trained head.
    let err = BertClassifier::load(&path, &cfg, 5, &Device::Cpu, LoadOptions::inference())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("classifier.weight"), "{err}");
}

#[test]
fn hidden_states_match_candle_transformers_bert_and_train_mode_without_dropout() {
    let t = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config();
    cfg.hidden_dropout_prob = 0.0;
    cfg.attention_probs_dropout_prob = 0.0;
    let model = random_model(&cfg, 2, false, 11);
    let path = t.path().join("model.safetensors");
    model.save(&path).unwrap();
    let dev = Device::Cpu;
    let b = batch(&dev);
    let ours = model.encode(&b, None).unwrap();

    let mut v = cfg.to_value();
    v["use_cache"] = false.into();
    v["classifier_dropout"] = serde_json::Value::Null;
    let their_cfg: candle_transformers::models::bert::Config = serde_json::from_value(v).unwrap();
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(&[&path], candle_core::DType::F32, &dev)
            .unwrap()
    };
    let theirs = candle_transformers::models::bert::BertModel::load(vb, &their_cfg)
        .unwrap()
        .forward(&b.ids, &b.type_ids, Some(&b.mask))
        .unwrap();
    // Padding positions differ by design (nothing attends to them); compare real tokens.
    let mask = b.mask.unsqueeze(2).unwrap();
    let diff = ((&ours - &theirs).unwrap().broadcast_mul(&mask).unwrap())
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-4, "max |ours - candle-transformers| = {diff}");

    // Training mode (differentiable LayerNorm/softmax) with zero dropout computes the same thing.
    let train = random_model(&cfg, 2, true, 11);
    let mut drop = Dropout::new(0, &dev).unwrap();
    let a = train.forward(&b, Some(&mut drop)).unwrap();
    let e = model.forward(&b, None).unwrap();
    let d = (a - e)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-4, "train vs eval forward differ by {d}");
    let _ = HashMap::<String, Tensor>::new();
}

/// The fused CPU kernels (LayerNorm, masked softmax, GELU with hand-written backward passes)
/// give the same loss and the same gradient for every weight as candle's own ops.
#[test]
fn fused_kernels_match_reference_ops_forward_and_backward() {
    let mut cfg = tiny_config();
    cfg.hidden_dropout_prob = 0.0;
    cfg.attention_probs_dropout_prob = 0.0;
    let dev = Device::Cpu;
    let b = batch(&dev);
    let labels = Tensor::new(&[0u32, 1, 2], &dev).unwrap();
    let run = |fused: bool| {
        let m = random_model(&cfg, 3, true, 21).with_fused_kernels(fused);
        let mut drop = Dropout::new(0, &dev).unwrap();
        let logits = m.forward(&b, Some(&mut drop)).unwrap();
        let eval = m.forward(&b, None).unwrap();
        let loss = classification_loss(&logits, &labels, None).unwrap();
        let grads = loss.backward().unwrap();
        let g: Vec<(String, Tensor)> = m
            .vars()
            .iter()
            .map(|(n, v)| (n.clone(), grads.get(v).unwrap().clone()))
            .collect();
        (loss.to_scalar::<f32>().unwrap(), eval, g)
    };
    let (l1, e1, g1) = run(true);
    let (l2, e2, g2) = run(false);
    assert!((l1 - l2).abs() < 1e-5, "loss {l1} vs {l2}");
    let d = (e1 - e2)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-5, "eval logits differ by {d}");
    for ((n, a), (_, r)) in g1.iter().zip(&g2) {
        let scale = r
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .max(1e-6);
        let d = (a - r)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            d / scale < 1e-3,
            "{n}: gradient differs by {d} (scale {scale})"
        );
    }
}

#[test]
fn configs_outside_the_bert_family_are_refused_naming_the_field() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("config.json");
    let distilbert = r#"{"model_type": "distilbert", "dim": 768, "n_layers": 6, "n_heads": 12,
        "hidden_dim": 3072, "vocab_size": 30522, "max_position_embeddings": 512}"#;
    let relative = r#"{"model_type": "bert", "position_embedding_type": "relative_key",
        "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 64}"#;
    for (text, want) in [
        (distilbert, "model_type `distilbert` is not supported"),
        (
            relative,
            "position_embedding_type `relative_key` is not supported",
        ),
        ("{not json", "config.json is not valid JSON"),
    ] {
        std::fs::write(&path, text).unwrap();
        let err = BertConfig::from_file(&path).err().unwrap().to_string();
        assert!(err.contains(want), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
}

/// The word-embedding gradient as sparse rows (the CPU training default) is the dense
/// gradient: the same rows accumulated (a repeated token included), the same clipping norm,
/// the same AdamW update of every row (moments and weight decay move unused rows too). Three
/// Trainer steps on both paths leave every parameter equal.
#[test]
fn sparse_word_gradient_steps_match_the_dense_path() {
    use distill_train::encoder::finetune::{Hyper, SparseRows, Trainer};
    let cfg = tiny_config();
    let dev = Device::Cpu;
    // Token 5 appears twice, so its row's gradient is a sum.
    let seqs: Vec<Vec<u32>> = vec![vec![2, 5, 6, 5, 3], vec![2, 10, 3], vec![2, 8, 9, 11, 3]];
    let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    let b = Batch::from_ids(&refs, 0, &dev).unwrap();
    let labels = Tensor::new(&[0u32, 1, 2], &dev).unwrap();
    let hp = Hyper {
        batch_size: 3,
        max_len: 8,
        lr: 1e-2,
        weight_decay: 0.01,
        epochs: 1,
        warmup_frac: 0.0,
        // A small norm, so clipping is active and depends on the sparse rows' share.
        clip_norm: 0.1,
        patience: 1,
        class_balanced: false,
        seed: 3,
        head_lr_mult: 10.0,
    };
    let run = |sparse: bool| {
        let m = random_model(&cfg, 3, true, 31);
        let mut t = Trainer::new(&m, &hp, 3, None, &dev)
            .unwrap()
            .with_sparse_word_grad(sparse);
        let norms: Vec<f32> = (0..3)
            .map(|_| t.step(&b, &labels).unwrap().grad_norm)
            .collect();
        let params: Vec<(String, Vec<f32>)> = m
            .named_tensors()
            .iter()
            .map(|(n, t)| {
                (
                    n.clone(),
                    t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                )
            })
            .collect();
        (norms, params)
    };
    let (n_sparse, p_sparse) = run(true);
    let (n_dense, p_dense) = run(false);
    for (a, b) in n_sparse.iter().zip(&n_dense) {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
            "grad norm {a} vs {b}"
        );
    }
    for ((name, a), (_, b)) in p_sparse.iter().zip(&p_dense) {
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "{name} differs by {d} after three steps");
    }
    // Accumulation by id: a repeated id is summed once.
    let g = Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &dev).unwrap();
    let rows = SparseRows::accumulate(&[7, 2, 7], &g).unwrap();
    assert_eq!(rows.ids, vec![2, 7]);
    assert_eq!(rows.grad, vec![3., 4., 6., 8.]);
}
