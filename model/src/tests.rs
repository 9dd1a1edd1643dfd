//! Behaviour of the model as a whole: determinism, checkpoint round trips, learning.

use flowsynth_common::config::{ModelMode, TrainConfig};
use flowsynth_common::manifest::DatasetManifest;
use tch::{Device, Kind, Tensor};

use super::testutil::*;
use super::*;

fn no_hook() -> impl FnMut(&[Tensor]) -> Result<()> {
    |_: &[Tensor]| Ok(())
}

fn tensors_equal(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((na, ta), (nb, tb))| na == nb && ta.equal(tb))
}

/// Deep copies (a checkpoint holds values, not live views).
fn snapshot(t: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    t.iter()
        .map(|(n, t)| (n.clone(), t.detach().copy()))
        .collect()
}

#[test]
fn preprocessor_round_trips_a_table() {
    let (table, manifest) = two_class_dataset(600, 1);
    let pre = Preprocessor::new(&manifest).unwrap();
    let batch = pre.encode(&table, Device::Cpu).unwrap();
    assert_eq!(batch.num.size(), [600, 3]);
    assert_eq!(batch.cat.size(), [600, 1]);
    assert_eq!(batch.cat.kind(), Kind::Int64);
    let back = pre.decode(&batch.num, &batch.cat, &table.labels).unwrap();
    assert_eq!(back.categorical, table.categorical);
    assert_eq!(back.labels, table.labels);
    for (a, b) in back.numeric.iter().zip(&table.numeric) {
        for (x, y) in a.iter().zip(b) {
            // float32 scores: relative precision about 1e-6 of the column's scale.
            assert!((x - y).abs() < 1e-3, "{x} vs {y}");
        }
    }
}

#[test]
fn preprocessor_rejects_codes_outside_the_vocabulary() {
    let (mut table, manifest) = two_class_dataset(50, 1);
    table.categorical[0][7] = 3;
    let pre = Preprocessor::new(&manifest).unwrap();
    let err = pre.encode(&table, Device::Cpu).unwrap_err();
    assert!(
        matches!(err, ModelError::CodeOutOfRange { ref column, code: 3, cardinality: 3 } if column == "c0"),
        "{err}"
    );
    table.categorical[0][7] = 0;
    table.labels[3] = 2;
    assert!(matches!(
        pre.encode(&table, Device::Cpu).unwrap_err(),
        ModelError::LabelOutOfRange {
            label: 2,
            classes: 2
        }
    ));
    table.labels[3] = 0;
    table.numeric[1][4] = f64::NAN;
    assert!(matches!(
        pre.encode(&table, Device::Cpu).unwrap_err(),
        ModelError::NonFinite { row: 4, .. }
    ));
}

#[test]
fn same_seed_gives_identical_weights_and_losses() {
    let (table, manifest) = two_class_dataset(400, 2);
    let (val, _) = two_class_dataset(100, 3);
    let cfg = tiny_train(1, 1);
    let run = |seed: u64| {
        let mut c = cfg.clone();
        c.seed = seed;
        let mut t = Trainer::new(&manifest, &c, &tiny_model(), Device::Cpu).unwrap();
        let initial = snapshot(&t.model().named_tensors());
        let vae = t.run_epoch(&table, &val, &mut no_hook()).unwrap();
        let diffusion = t.run_epoch(&table, &val, &mut no_hook()).unwrap();
        (
            initial,
            vae,
            diffusion,
            snapshot(&t.model().named_tensors()),
        )
    };
    let (init_a, vae_a, diff_a, end_a) = run(5);
    let (init_b, vae_b, diff_b, end_b) = run(5);
    assert!(tensors_equal(&init_a, &init_b));
    assert_eq!(
        (vae_a.loss, vae_a.mse, vae_a.ce, vae_a.kl, vae_a.val_loss),
        (vae_b.loss, vae_b.mse, vae_b.ce, vae_b.kl, vae_b.val_loss)
    );
    assert_eq!(diff_a.loss, diff_b.loss);
    assert!(tensors_equal(&end_a, &end_b));

    let (init_c, vae_c, ..) = run(6);
    assert!(!tensors_equal(&init_a, &init_c));
    assert_ne!(vae_a.loss, vae_c.loss);
}

#[test]
fn named_tensors_are_stable_and_complete() {
    let (_, manifest) = two_class_dataset(100, 4);
    let m = FlowModel::new(&manifest, &tiny_model(), Device::Cpu, 0).unwrap();
    let names: Vec<String> = m.named_tensors().into_iter().map(|(n, _)| n).collect();
    for expected in [
        "vae.tokenizer.weight",
        "vae.tokenizer.cat_embeddings",
        "vae.encoder_mu.0.attention.w_q.weight",
        "vae.encoder_logvar.1.norm0.bias",
        "vae.decoder.1.linear1.weight",
        "vae.reconstructor.num_weight",
        "vae.reconstructor.cat.0.weight",
        "denoiser.class_embed.weight",
        "denoiser.mlp.3.bias",
        LATENT_MEAN,
        LATENT_FITTED,
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "duplicate names");
    // [CLS] + 3 numeric rows; 3 + 1 feature tokens of width 4.
    assert_eq!(m.latent_dim(), 16);
    let class_embed = m
        .named_tensors()
        .into_iter()
        .find(|(n, _)| n == "denoiser.class_embed.weight")
        .map(|(_, t)| t.size());
    assert_eq!(class_embed, Some(vec![3, 64]), "2 classes + the null class");
}

#[test]
fn sampling_before_vae_training_is_refused() {
    let (_, manifest) = two_class_dataset(100, 4);
    let m = FlowModel::new(&manifest, &tiny_model(), Device::Cpu, 0).unwrap();
    assert!(matches!(
        m.sample(&[0, 1], 4, 1.0, 0),
        Err(ModelError::NotFitted)
    ));
}

/// A model of `mode` trained to the end on `table` (1 VAE + 1 denoiser epoch).
fn trained_in(mode: ModelMode, table: &Table, manifest: &DatasetManifest) -> Trainer {
    let cfg = tiny_model_in(mode);
    let mut t = Trainer::new(manifest, &tiny_train(1, 1), &cfg, Device::Cpu).unwrap();
    while t.settle(table, &mut no_hook()).unwrap() != Stage::Done {
        t.run_epoch(table, &Table::default(), &mut no_hook())
            .unwrap();
    }
    t
}

/// Writes a model's tensors to a safetensors file and reads them back.
fn through_a_file(model: &FlowModel) -> Vec<(String, Tensor)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    Tensor::write_safetensors(&model.named_tensors(), &path).unwrap();
    Tensor::read_safetensors(&path).unwrap()
}

#[test]
fn save_load_round_trip_gives_identical_samples_in_every_mode() {
    let (table, manifest) = two_class_dataset(300, 5);
    let labels: Vec<u32> = (0..40).map(|i| i % 2).collect();
    for mode in ModelMode::ALL {
        let t = trained_in(mode, &table, &manifest);
        let before = t.model().sample(&labels, 6, 1.5, 99).unwrap();
        assert_eq!(before.labels, labels);
        let mut fresh = FlowModel::new(&manifest, &tiny_model_in(mode), Device::Cpu, 1234).unwrap();
        fresh
            .load_named_tensors(&through_a_file(t.model()))
            .unwrap();
        assert_eq!(fresh.image_layout(), t.model().image_layout(), "{mode}");
        let after = fresh.sample(&labels, 6, 1.5, 99).unwrap();
        assert_eq!(before, after, "{mode}");
        // Another seed gives other rows.
        assert_ne!(fresh.sample(&labels, 6, 1.5, 100).unwrap(), after, "{mode}");
        // A checkpoint of one mode does not load into another.
        let other =
            ModelMode::ALL[(ModelMode::ALL.iter().position(|&m| m == mode).unwrap() + 1) % 3];
        let mut wrong = FlowModel::new(&manifest, &tiny_model_in(other), Device::Cpu, 1).unwrap();
        assert!(
            wrong
                .load_named_tensors(&t.model().named_tensors())
                .is_err(),
            "{mode} into {other}"
        );
    }
}

#[test]
fn checkpoint_errors_name_the_tensor() {
    let (table, manifest) = two_class_dataset(300, 5);
    let t = trained_in(ModelMode::Tabular, &table, &manifest);
    let loaded = through_a_file(t.model());
    let mut fresh = FlowModel::new(&manifest, &tiny_model(), Device::Cpu, 1234).unwrap();

    // Errors name the tensor.
    let missing: Vec<_> = loaded
        .iter()
        .filter(|(n, _)| n != "denoiser.proj.weight")
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let err = fresh.load_named_tensors(&missing).unwrap_err();
    assert!(
        matches!(err, ModelError::MissingTensor { ref name } if name == "denoiser.proj.weight"),
        "{err}"
    );
    let mut wrong = snapshot(&loaded);
    for (n, t) in &mut wrong {
        if n == LATENT_MEAN {
            *t = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        }
    }
    let err = fresh.load_named_tensors(&wrong).unwrap_err();
    assert!(
        matches!(err, ModelError::ShapeMismatch { ref tensor, .. } if tensor == LATENT_MEAN),
        "{err}"
    );
    let mut extra = snapshot(&loaded);
    extra.push((
        "vae.surprise".into(),
        Tensor::zeros([1], (Kind::Float, Device::Cpu)),
    ));
    let err = fresh.load_named_tensors(&extra).unwrap_err();
    assert!(
        matches!(err, ModelError::UnexpectedTensor { ref name } if name == "vae.surprise"),
        "{err}"
    );
}

#[test]
fn resuming_from_saved_state_continues_exactly() {
    let (table, manifest) = two_class_dataset(300, 6);
    let (val, _) = two_class_dataset(60, 7);
    let cfg = tiny_train(2, 2);
    // Uninterrupted: 2 VAE epochs + 1 diffusion epoch.
    let mut a = Trainer::new(&manifest, &cfg, &tiny_model(), Device::Cpu).unwrap();
    for _ in 0..3 {
        a.run_epoch(&table, &val, &mut no_hook()).unwrap();
    }
    // Interrupted after the first epoch and after the second.
    let mut b = Trainer::new(&manifest, &cfg, &tiny_model(), Device::Cpu).unwrap();
    b.run_epoch(&table, &val, &mut no_hook()).unwrap();
    for _ in 0..2 {
        let weights = snapshot(&b.model().named_tensors());
        let opt = snapshot(&b.state_tensors());
        let state = serde_json::to_string(b.state()).unwrap();
        let mut c = Trainer::new(&manifest, &cfg, &tiny_model(), Device::Cpu).unwrap();
        c.model_mut().load_named_tensors(&weights).unwrap();
        c.load_state_tensors(&opt).unwrap();
        c.set_state(serde_json::from_str(&state).unwrap());
        c.run_epoch(&table, &val, &mut no_hook()).unwrap();
        b = c;
    }
    assert_eq!(a.state(), b.state());
    assert_eq!(a.state().stage, Stage::Diffusion);
    assert!(tensors_equal(
        &snapshot(&a.model().named_tensors()),
        &snapshot(&b.model().named_tensors())
    ));
    assert!(tensors_equal(
        &snapshot(&a.state_tensors()),
        &snapshot(&b.state_tensors())
    ));
}

#[test]
fn grad_hook_sees_every_gradient_and_can_stop_training() {
    let (table, manifest) = two_class_dataset(300, 8);
    let mut t = Trainer::new(&manifest, &tiny_train(1, 1), &tiny_model(), Device::Cpu).unwrap();
    let n_vae = t.model().vae_params().len();
    let mut calls = 0;
    let mut hook = |g: &[Tensor]| -> Result<()> {
        assert_eq!(g.len(), n_vae);
        calls += 1;
        Ok(())
    };
    let report = t.run_epoch(&table, &Table::default(), &mut hook).unwrap();
    assert_eq!(calls, 2, "300 rows in batches of 256");
    assert_eq!(report.steps, 2);
    assert!(report.stage_finished);
    let err = t
        .run_epoch(&table, &Table::default(), &mut |_: &[Tensor]| {
            Err(ModelError::Interrupted)
        })
        .unwrap_err();
    assert!(matches!(err, ModelError::Interrupted));
    // Halving the gradients in the hook changes the update (the hook's edits are applied).
    let mut a = Trainer::new(&manifest, &tiny_train(1, 1), &tiny_model(), Device::Cpu).unwrap();
    let mut b = Trainer::new(&manifest, &tiny_train(1, 1), &tiny_model(), Device::Cpu).unwrap();
    a.run_epoch(&table, &Table::default(), &mut no_hook())
        .unwrap();
    b.run_epoch(&table, &Table::default(), &mut |g: &[Tensor]| {
        for t in g {
            let mut t = t.shallow_clone();
            let _ = t.f_mul_scalar_(0.0)?;
        }
        Ok(())
    })
    .unwrap();
    assert!(!tensors_equal(
        &snapshot(&a.model().vae_params()),
        &snapshot(&b.model().vae_params())
    ));
    assert!(
        tensors_equal(
            &snapshot(&b.model().vae_params()),
            &snapshot(
                &Trainer::new(&manifest, &tiny_train(1, 1), &tiny_model(), Device::Cpu)
                    .unwrap()
                    .model()
                    .vae_params()
            )
        ),
        "zeroed gradients leave Adam's weights unchanged"
    );
}

#[test]
fn datasets_without_numeric_or_without_categorical_columns_work() {
    let (table, _) = two_class_dataset(300, 9);
    let only_cat = Table {
        numeric: Vec::new(),
        categorical: table.categorical.clone(),
        labels: table.labels.clone(),
    };
    let only_num = Table {
        numeric: table.numeric.clone(),
        categorical: Vec::new(),
        labels: table.labels.clone(),
    };
    for (t, m) in [
        (only_cat.clone(), manifest_for(&only_cat, &[], &[3], 2)),
        (only_num.clone(), manifest_for(&only_num, &[1], &[], 2)),
    ] {
        let mut tr = Trainer::new(&m, &tiny_train(1, 1), &tiny_model(), Device::Cpu).unwrap();
        let r = tr.run_epoch(&t, &Table::default(), &mut no_hook()).unwrap();
        assert!(r.loss.is_finite(), "{r:?}");
        tr.run_epoch(&t, &Table::default(), &mut no_hook()).unwrap();
        let out = tr.model().sample(&[0, 1, 1], 4, 1.0, 3).unwrap();
        assert_eq!(out.rows(), 3);
        assert_eq!(out.numeric.len(), t.numeric.len());
        assert_eq!(out.categorical.len(), t.categorical.len());
    }
}

#[test]
fn training_learns_class_conditional_rows() {
    let (table, manifest) = two_class_dataset(2000, 10);
    let (val, _) = two_class_dataset(200, 11);
    let mut cfg = tiny_train(12, 60);
    cfg.batch_size = 200;
    let mut t = Trainer::new(&manifest, &cfg, &tiny_model(), Device::Cpu).unwrap();
    let mut vae_reports = Vec::new();
    let mut diffusion_reports = Vec::new();
    while t.state().stage != Stage::Done {
        let r = t.run_epoch(&table, &val, &mut no_hook()).unwrap();
        match r.stage {
            Stage::Vae => vae_reports.push(r),
            _ => diffusion_reports.push(r),
        }
    }
    let first = &vae_reports[0];
    let last = &vae_reports[vae_reports.len() - 1];
    assert!(
        last.mse + last.ce < 0.6 * (first.mse + first.ce),
        "reconstruction {} -> {}",
        first.mse + first.ce,
        last.mse + last.ce
    );
    let d_first = diffusion_reports[0].loss;
    let d_last = diffusion_reports[diffusion_reports.len() - 1].loss;
    assert!(d_last < d_first, "diffusion loss {d_first} -> {d_last}");

    let n = 600;
    let labels: Vec<u32> = (0..2 * n).map(|i| u32::from(i >= n)).collect();
    let out = t.model().sample(&labels, 20, 1.0, 7).unwrap();
    assert_eq!(out.labels, labels);
    for (c, col) in out.numeric.iter().enumerate() {
        let (lo, hi) = (
            manifest.columns[c].stats.as_ref().unwrap().min,
            manifest.columns[c].stats.as_ref().unwrap().max,
        );
        assert!(
            col.iter().all(|v| (lo..=hi).contains(v)),
            "column {c} leaves [{lo}, {hi}]"
        );
    }
    assert!(out.categorical[0].iter().all(|&c| c < 3));
    let m0 = class_mean(&out.numeric[0], &labels, 0);
    let m1 = class_mean(&out.numeric[0], &labels, 1);
    assert!(m1 - m0 > 1.0, "n0 means {m0} vs {m1} (data: 0 vs 2)");
    let c0 = class_mean(&out.numeric[1], &labels, 0);
    let c1 = class_mean(&out.numeric[1], &labels, 1);
    assert!(c1 - c0 > 2.0, "n1 means {c0} vs {c1}");
    let share = |class: u32, code: u32| {
        let rows: Vec<_> = out.categorical[0]
            .iter()
            .zip(&labels)
            .filter(|(_, l)| **l == class)
            .collect();
        rows.iter().filter(|(c, _)| **c == code).count() as f64 / rows.len() as f64
    };
    assert!(
        share(0, 0) > 0.6 && share(1, 2) > 0.6,
        "c0 agreement {} / {}",
        share(0, 0),
        share(1, 2)
    );
    eprintln!(
        "vae {:.3} -> {:.3}; diffusion {d_first:.3} -> {d_last:.3}; n0 {m0:.2}/{m1:.2}; n1 {c0:.2}/{c1:.2}; c0 {:.2}/{:.2}",
        first.mse + first.ce,
        last.mse + last.ce,
        share(0, 0),
        share(1, 2)
    );
}

/// Sums tensors over N trainers running on N threads: an in-process stand-in for the
/// all-reduce of distributed training (the real collectives are tested in their own crate and
/// end to end).
struct ThreadSum {
    slots: std::sync::Mutex<Vec<Vec<Vec<f64>>>>,
    barrier: std::sync::Barrier,
}

impl ThreadSum {
    fn new(n: usize) -> Self {
        Self {
            slots: std::sync::Mutex::new(vec![Vec::new(); n]),
            barrier: std::sync::Barrier::new(n),
        }
    }

    fn sum(&self, rank: usize, tensors: &[Tensor]) -> Result<()> {
        let mine: Vec<Vec<f64>> = tensors
            .iter()
            .map(|g| Vec::<f64>::try_from(g.reshape([-1]).to_kind(tch::Kind::Double)).unwrap())
            .collect();
        self.slots.lock().unwrap()[rank] = mine;
        self.barrier.wait();
        let total: Vec<Vec<f64>> = {
            let s = self.slots.lock().unwrap();
            (0..tensors.len())
                .map(|t| {
                    (0..s[0][t].len())
                        .map(|i| s.iter().map(|r| r[t][i]).sum())
                        .collect()
                })
                .collect()
        };
        self.barrier.wait();
        for (g, m) in tensors.iter().zip(total) {
            let mut g = g.shallow_clone();
            g.copy_(&Tensor::from_slice(&m).reshape(g.size()).to_kind(g.kind()));
        }
        Ok(())
    }

    fn rank(&self, rank: usize) -> ThreadRank<'_> {
        ThreadRank { sum: self, rank }
    }
}

struct ThreadRank<'a> {
    sum: &'a ThreadSum,
    rank: usize,
}

impl Replicas for ThreadRank<'_> {
    fn reduce_gradients(&mut self, grads: &[Tensor]) -> Result<()> {
        self.sum.sum(self.rank, grads)
    }
    fn all_reduce_sum(&mut self, tensors: &[Tensor]) -> Result<()> {
        self.sum.sum(self.rank, tensors)
    }
}

/// Trains `ranks` data-parallel trainers (rank r holds the rows `owner(row) == r`, in blocks of
/// uneven size like row-group shards) for one VAE and one diffusion epoch and checks them
/// against one trainer with the whole table and `ranks` times the batch.
fn check_data_parallel_equivalence(
    ranks: usize,
    owner: impl Fn(usize) -> usize + Sync,
    epochs: impl Fn(&mut TrainConfig),
) {
    check_data_parallel_equivalence_in(ModelMode::Tabular, ranks, owner, epochs);
}

/// Runs every epoch of `trainer` (each a VAE or denoiser epoch) and reports them.
fn run_all(t: &mut Trainer, table: &Table, replicas: &mut dyn Replicas) -> Vec<EpochReport> {
    let mut reports = Vec::new();
    while t.settle(table, replicas).unwrap() != Stage::Done {
        reports.push(t.run_epoch(table, &Table::default(), replicas).unwrap());
    }
    reports
}

fn check_data_parallel_equivalence_in(
    mode: ModelMode,
    ranks: usize,
    owner: impl Fn(usize) -> usize + Sync,
    epochs: impl Fn(&mut TrainConfig),
) {
    let (table, manifest) = two_class_dataset(470, 12);
    let b = 40;
    let mut cfg = tiny_train(1, 1);
    epochs(&mut cfg);
    let rows = cfg.rows_per_epoch(470) as usize;
    cfg.batch_size = ranks * b;
    let model_cfg = tiny_model_in(mode);
    let mut single = Trainer::new(&manifest, &cfg, &model_cfg, Device::Cpu).unwrap();
    let reports_single = run_all(&mut single, &table, &mut Alone);
    assert_eq!(reports_single.len(), if mode.has_vae() { 2 } else { 1 });
    cfg.batch_size = b;
    let sum = ThreadSum::new(ranks);
    let trained: Vec<(Trainer, Vec<EpochReport>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..ranks)
            .map(|r| {
                let (cfg, manifest, table, sum, owner, model_cfg) =
                    (&cfg, &manifest, &table, &sum, &owner, &model_cfg);
                s.spawn(move || {
                    tch::set_num_threads(1);
                    let idx: Vec<usize> = (0..table.rows()).filter(|&i| owner(i) == r).collect();
                    let mut t = Trainer::new(manifest, cfg, model_cfg, Device::Cpu).unwrap();
                    t.set_partition(Some(Partition {
                        world: ranks,
                        global_rows: table.rows(),
                        positions: idx.clone(),
                    }))
                    .unwrap();
                    let local = table.select(&idx);
                    let reports = run_all(&mut t, &local, &mut sum.rank(r));
                    (t, reports)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let close = |a: &[(String, Tensor)], b: &[(String, Tensor)]| {
        a.iter()
            .zip(b)
            .all(|((na, ta), (nb, tb))| na == nb && ta.allclose(tb, 1e-4, 1e-5, false))
    };
    for (t, reports) in &trained {
        assert_eq!(reports.len(), reports_single.len());
        for (r, r1) in reports.iter().zip(&reports_single) {
            assert_eq!((r.stage, r.steps, r.rows), (r1.stage, r1.steps, rows));
            assert!(
                (r.loss - r1.loss).abs() < 1e-4 * r1.loss.abs().max(1.0),
                "{mode}"
            );
            assert!((r.image_mse - r1.image_mse).abs() < 1e-4 * r1.image_mse.max(1.0));
        }
        assert_eq!(t.model().image_layout(), single.model().image_layout());
        assert!(close(&t.model().vae_params(), &single.model().vae_params()));
        assert!(
            t.model()
                .latent_mean()
                .allclose(single.model().latent_mean(), 1e-4, 1e-5, false)
        );
        assert!(close(
            &t.model().denoiser_params(),
            &single.model().denoiser_params()
        ));
        assert_eq!(t.state().global_step, single.state().global_step);
        // Every rank applied the same summed gradients: bit-identical replicas.
        assert!(tensors_equal(
            &t.model().named_tensors(),
            &trained[0].0.model().named_tensors()
        ));
    }
    assert_eq!(reports_single[0].steps, rows.div_ceil(ranks * b));
}

#[test]
fn two_workers_match_one_worker_in_the_multimodal_and_data_space_modes() {
    for mode in [ModelMode::Multimodal, ModelMode::DataSpace] {
        check_data_parallel_equivalence_in(mode, 2, |i| usize::from(i >= 300), |_| {});
    }
}

#[test]
fn two_workers_match_one_worker_with_double_batch() {
    // Uneven contiguous shards (as row groups would be): 300 and 170 rows; the default
    // class-balanced epochs.
    check_data_parallel_equivalence(2, |i| usize::from(i >= 300), |_| {});
}

#[test]
fn two_workers_match_one_worker_on_plain_and_thinned_epochs() {
    // Every row once per epoch, in the data's proportions.
    check_data_parallel_equivalence(
        2,
        |i| usize::from(i >= 300),
        |c| {
            c.class_balance = 0.0;
            c.epoch_rows = 0;
        },
    );
    // A tempered draw of 300 of the 470 rows per epoch.
    check_data_parallel_equivalence(
        2,
        |i| usize::from(i % 3 == 0),
        |c| {
            c.class_balance = 0.5;
            c.epoch_rows = 300;
        },
    );
}

#[test]
fn three_workers_with_uneven_shards_match_one_worker() {
    // 200 / 265 / 5 rows: most global batches hold no row of rank 2 (it contributes zeros).
    check_data_parallel_equivalence(
        3,
        |i| match i {
            0..200 => 0,
            200..465 => 1,
            _ => 2,
        },
        |_| {},
    );
}

/// A small model trained briefly on the two-class table (both stages).
fn briefly_trained(rows: usize) -> (Trainer, Table) {
    let (table, manifest) = two_class_dataset(rows, 21);
    let mut cfg = tiny_train(4, 8);
    cfg.batch_size = 100;
    let mut t = Trainer::new(&manifest, &cfg, &tiny_model(), Device::Cpu).unwrap();
    while t.state().stage != Stage::Done {
        t.run_epoch(&table, &Table::default(), &mut no_hook())
            .unwrap();
    }
    (t, table)
}

#[test]
fn neighbourhood_sampling_stays_near_its_class_and_is_reproducible_in_parts() {
    let (t, table) = briefly_trained(600);
    let m = t.model();
    let ones: Vec<usize> = (0..table.rows())
        .filter(|&i| table.labels[i] == 1)
        .collect();
    let class1 = table.select(&ones);
    let anchors = m.anchors(&class1).unwrap();
    assert_eq!(anchors.len(), class1.rows());
    let mut opts = SamplerOptions::new(10, 1.0);
    opts.strength = 0.15;
    let a = m.sample_class(1, 300, Some(&anchors), &opts, 5, 0).unwrap();
    assert_eq!(a.labels, vec![1; 300]);
    // Close variations of class 1 (n0 ~ N(2, 1), n1 around 6), unlike class 0 (0 and 1).
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let n0 = mean(&a.numeric[0]);
    let n1 = mean(&a.numeric[1]);
    assert!((n0 - mean(&class1.numeric[0])).abs() < 0.4, "n0 mean {n0}");
    assert!((n1 - mean(&class1.numeric[1])).abs() < 1.0, "n1 mean {n1}");
    // Integer-valued columns decode to whole numbers.
    assert!(a.numeric[1].iter().all(|v| v.fract() == 0.0));
    // Seeded, and a later draw (first_id) continues the same sequence.
    let again = m.sample_class(1, 300, Some(&anchors), &opts, 5, 0).unwrap();
    assert_eq!(again, a);
    let part = m
        .sample_class(1, 100, Some(&anchors), &opts, 5, 100)
        .unwrap();
    let idx: Vec<usize> = (100..200).collect();
    assert_eq!(part, a.select(&idx));
    // Without real rows to start near, only full-strength generation is possible.
    let err = m.sample_class(1, 10, None, &opts, 5, 0).unwrap_err();
    assert!(err.to_string().contains("sampler_strength"), "{err}");
    opts.strength = 1.0;
    assert_eq!(m.sample_class(1, 10, None, &opts, 5, 0).unwrap().rows(), 10);
}

#[test]
fn residual_decoding_keeps_the_real_values_the_model_does_not_change() {
    let (t, table) = briefly_trained(400);
    let m = t.model();
    // One anchor: every start is that row itself.
    let row = table.select(&[7]);
    let anchors = m.anchors(&row).unwrap();
    let mut opts = SamplerOptions::new(10, 1.0);
    // The shortest run of the schedule: one step from sigma_min.
    opts.strength = 0.01;
    let label = row.labels[0];
    let kept = m
        .sample_class(label, 50, Some(&anchors), &opts, 3, 0)
        .unwrap();
    opts.residual = false;
    let decoded = m
        .sample_class(label, 50, Some(&anchors), &opts, 3, 0)
        .unwrap();
    let off = |rows: &Table| {
        rows.numeric[0]
            .iter()
            .map(|v| (v - row.numeric[0][0]).abs())
            .fold(0.0, f64::max)
    };
    // The model barely moves the start, so the residual rows keep the real values (the integer
    // column and the category exactly); the plainly decoded rows carry the VAE's reconstruction
    // error.
    assert!(off(&kept) < 0.05, "residual rows moved {}", off(&kept));
    assert!(kept.numeric[1].iter().all(|&v| v == row.numeric[1][0]));
    assert!(
        kept.categorical[0]
            .iter()
            .all(|&c| c == row.categorical[0][0])
    );
    assert!(
        off(&kept) < off(&decoded),
        "residual {} vs decoded {}",
        off(&kept),
        off(&decoded)
    );
}

#[test]
fn every_mode_has_its_latent_space_and_networks() {
    let (table, manifest) = two_class_dataset(300, 31);
    // 3 numeric columns and one categorical column of 3 values; tiny models: d_token 4,
    // image latent 6, a 2x2 image.
    for (mode, dim) in [
        (ModelMode::Tabular, 16),
        (ModelMode::Multimodal, 16 + 6),
        (ModelMode::DataSpace, 3 + 3),
    ] {
        let t = trained_in(mode, &table, &manifest);
        let m = t.model();
        assert_eq!(m.latent_dim(), dim, "{mode}");
        let names: Vec<String> = m.named_tensors().into_iter().map(|(n, _)| n).collect();
        let has = |prefix: &str| names.iter().any(|n| n.starts_with(prefix));
        assert_eq!(has("vae."), mode.has_vae(), "{mode}");
        assert_eq!(has("image.cnn."), mode == ModelMode::Multimodal, "{mode}");
        assert_eq!(
            names.contains(&IMAGE_PIXELS.to_string()),
            mode == ModelMode::Multimodal
        );
        assert_eq!(
            m.image_layout().map(|l| l.side()),
            (mode == ModelMode::Multimodal).then_some(2)
        );
        let batch = m
            .preprocessor()
            .encode(&table.select(&[0, 1, 2]), Device::Cpu)
            .unwrap();
        let z = m.encode_latent(&batch).unwrap();
        assert_eq!(z.size(), [3, dim]);
        if mode.has_vae() {
            // The first-stage loss hands back the latents it encoded (joint training feeds them
            // to the denoiser): the same numbers as a separate encoder pass.
            let loss = m.vae_loss(&batch, 0.01, None).unwrap();
            let shared = m.diffusion_latent(&loss.latent).unwrap();
            assert!(shared.requires_grad(), "{mode}");
            assert!(shared.detach().allclose(&z, 1e-6, 1e-6, false), "{mode}");
            assert_eq!(
                m.coherence_of_latents(&loss.latent).unwrap(),
                m.coherence(&batch).unwrap(),
                "{mode}"
            );
        }
        let coherence = m.coherence(&batch).unwrap();
        assert_eq!(coherence.is_some(), mode == ModelMode::Multimodal, "{mode}");
        assert!(coherence.is_none_or(|c| c.is_finite() && c >= 0.0));
        let (rows, scores) = m
            .sample_class_scored(
                1,
                25,
                None,
                &SamplerOptions {
                    strength: 1.0,
                    ..SamplerOptions::new(4, 1.0)
                },
                3,
                0,
            )
            .unwrap();
        assert_eq!(rows.rows(), 25);
        assert_eq!(
            scores.map(|s| s.len()),
            (mode == ModelMode::Multimodal).then_some(25)
        );
    }
}

#[test]
fn data_space_latents_decode_to_the_same_rows() {
    let (table, manifest) = two_class_dataset(200, 32);
    let m = FlowModel::new(
        &manifest,
        &tiny_model_in(ModelMode::DataSpace),
        Device::Cpu,
        0,
    )
    .unwrap();
    let batch = m.preprocessor().encode(&table, Device::Cpu).unwrap();
    let (num, cat) = m.decode_raw(&m.raw_latent(&batch).unwrap()).unwrap();
    assert!(num.equal(&batch.num));
    assert!(cat.equal(&batch.cat));
}

#[test]
fn the_data_space_model_skips_the_vae_stage() {
    let (table, manifest) = two_class_dataset(200, 33);
    let mut t = Trainer::new(
        &manifest,
        &tiny_train(3, 2),
        &tiny_model_in(ModelMode::DataSpace),
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(t.stage_epochs(Stage::Vae), 0);
    let reports = run_all(&mut t, &table, &mut no_hook());
    assert_eq!(reports.len(), 2);
    assert!(reports.iter().all(|r| r.stage == Stage::Diffusion));
    assert!(t.model().latent_fitted().unwrap());
}

#[test]
fn the_cnn_vae_gets_every_gradient_and_learns_the_images() {
    let (table, manifest) = two_class_dataset(400, 34);
    let mut m = FlowModel::new(
        &manifest,
        &tiny_model_in(ModelMode::Multimodal),
        Device::Cpu,
        0,
    )
    .unwrap();
    assert!(m.needs_image_layout());
    let batch = m.preprocessor().encode(&table, Device::Cpu).unwrap();
    let sums = m
        .image_moments(&mut std::iter::once(Ok(batch
            .select(&Tensor::arange(400, (Kind::Int64, Device::Cpu)))
            .unwrap())))
        .unwrap();
    m.fit_image_layout(&sums).unwrap();
    assert!(!m.needs_image_layout());
    let images = m.render(&batch.num, &batch.cat).unwrap();
    assert_eq!(images.size(), [400, 1, 2, 2]);
    let cnn = m.cnn().unwrap();
    let (_, mask) = m.fitted_layout().unwrap();
    let cnn_params: Vec<(String, Tensor)> = m
        .vae_params()
        .into_iter()
        .filter(|(n, _)| n.starts_with("image.cnn."))
        .collect();
    assert_eq!(cnn_params.len(), 14, "7 layers with weight and bias");
    let mut opt = Adam::new(cnn_params, AdamConfig::new(3e-3, 0.0)).unwrap();
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..60 {
        opt.zero_grad();
        let loss = cnn.loss(&images, mask, 1e-3, None).unwrap();
        loss.total.backward();
        for (name, g) in opt.params().iter().map(|(n, p)| (n, p.grad())) {
            assert!(
                g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
                "{name}"
            );
        }
        opt.step().unwrap();
        last = loss.mse.double_value(&[]);
        first.get_or_insert(last);
    }
    let first = first.unwrap();
    assert!(last < 0.5 * first, "pixel MSE {first} -> {last}");
}

#[test]
fn joint_epochs_train_the_vaes_with_the_denoiser_and_stay_data_parallel_exact() {
    for mode in [ModelMode::Tabular, ModelMode::Multimodal] {
        check_data_parallel_equivalence_in(
            mode,
            2,
            |i| usize::from(i >= 300),
            |c| c.joint_epochs = 1,
        );
    }
    // Two denoiser epochs, the last one joint: the VAEs stay frozen in the first and move in
    // the second.
    let (table, manifest) = two_class_dataset(300, 40);
    let mut cfg = tiny_train(1, 2);
    cfg.joint_epochs = 1;
    let mut t = Trainer::new(
        &manifest,
        &cfg,
        &tiny_model_in(ModelMode::Multimodal),
        Device::Cpu,
    )
    .unwrap();
    let vae_after = |t: &mut Trainer| {
        t.run_epoch(&table, &Table::default(), &mut no_hook())
            .unwrap();
        snapshot(&t.model().vae_params())
    };
    let after_vae = vae_after(&mut t);
    let after_frozen = vae_after(&mut t);
    assert!(tensors_equal(&after_vae, &after_frozen));
    let after_joint = vae_after(&mut t);
    assert_eq!(t.state().stage, Stage::Done);
    for ((name, a), (_, b)) in after_frozen.iter().zip(&after_joint) {
        assert!(!a.equal(b), "{name} did not train in the joint epoch");
    }
}

/// A table's rows in groups of `group` rows (positions: row order) of which one rank holds the
/// groups `owner(g) == rank` and loads them when asked, as the worker's streaming source does.
struct Grouped<'a> {
    table: &'a Table,
    group: usize,
    group_rows: Vec<usize>,
    rank: usize,
    world: usize,
    owner: &'a (dyn Fn(usize) -> usize + Sync),
    groups: Vec<usize>,
    everywhere: Vec<u32>,
    loaded: (Table, Vec<usize>),
    loads: usize,
    /// Every non-empty `everywhere` asked for.
    held: Vec<Vec<u32>>,
}

impl<'a> Grouped<'a> {
    fn new(
        table: &'a Table,
        group: usize,
        rank: usize,
        world: usize,
        owner: &'a (dyn Fn(usize) -> usize + Sync),
    ) -> Self {
        let n = table.rows();
        let group_rows = (0..n.div_ceil(group))
            .map(|g| group.min(n - g * group))
            .collect();
        Self {
            table,
            group,
            group_rows,
            rank,
            world,
            owner,
            groups: Vec::new(),
            everywhere: Vec::new(),
            loaded: (Table::default(), Vec::new()),
            loads: 0,
            held: Vec::new(),
        }
    }

    fn mine(&self, g: usize) -> bool {
        (self.owner)(g) == self.rank
    }
}

impl RowSource for Grouped<'_> {
    fn world(&self) -> usize {
        self.world
    }
    fn group_rows(&self) -> &[usize] {
        &self.group_rows
    }
    fn local_class_counts(&mut self, classes: usize) -> Result<Vec<Vec<u64>>> {
        (0..self.group_rows.len())
            .map(|g| {
                let labels = if self.mine(g) {
                    &self.table.labels[g * self.group..g * self.group + self.group_rows[g]]
                } else {
                    &[][..]
                };
                class_counts(labels, classes)
            })
            .collect()
    }
    fn load(&mut self, groups: &[usize], everywhere: &[u32]) -> Result<()> {
        if self.groups == groups && self.everywhere == everywhere {
            return Ok(());
        }
        let labels = &self.table.labels;
        let rows = |g: usize| g * self.group..g * self.group + self.group_rows[g];
        let mut positions: Vec<usize> = groups
            .iter()
            .filter(|&&g| self.mine(g))
            .flat_map(|&g| rows(g))
            .filter(|&p| !everywhere.contains(&labels[p]))
            .collect();
        positions.extend(
            (0..self.group_rows.len())
                .filter(|&g| self.mine(g))
                .flat_map(rows)
                .filter(|&p| everywhere.contains(&labels[p])),
        );
        self.loaded = (self.table.select(&positions), positions);
        self.groups = groups.to_vec();
        self.everywhere = everywhere.to_vec();
        self.loads += 1;
        if !everywhere.is_empty() && !self.held.contains(&self.everywhere) {
            self.held.push(self.everywhere.clone());
        }
        Ok(())
    }
    fn loaded(&self) -> (&Table, &[usize]) {
        (&self.loaded.0, &self.loaded.1)
    }
}

#[test]
fn streamed_windows_keep_the_data_parallel_equivalence_and_are_seeded() {
    // 470 rows in 13 groups of 37 (the last 26), windows of at most 100 rows (two groups):
    // four 150-row epochs per stage walk on across the windows of a 470-row pass and into the
    // next.
    let (table, manifest) = two_class_dataset(470, 12);
    check_streamed(&table, &manifest, true);
    // A rare class (10 rows, all in the first group) is held in memory and dealt into every
    // window; the equivalence still holds.
    let mut rare = table.clone();
    for (i, l) in rare.labels.iter_mut().enumerate() {
        *l = u32::from(i < 10);
    }
    check_streamed(&rare, &manifest, false);
}

fn check_streamed(table: &Table, manifest: &DatasetManifest, against_whole: bool) {
    let model_cfg = tiny_model();
    let b = 30;
    let mut cfg = tiny_train(4, 4);
    cfg.shuffle_window_rows = 100;
    cfg.epoch_rows = 150;
    let run = |ranks: usize, batch: usize, owner: &(dyn Fn(usize) -> usize + Sync)| {
        let mut cfg = cfg.clone();
        cfg.batch_size = batch;
        let sum = ThreadSum::new(ranks);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..ranks)
                .map(|r| {
                    let (cfg, sum, model_cfg) = (&cfg, &sum, &model_cfg);
                    s.spawn(move || {
                        tch::set_num_threads(1);
                        let mut t = Trainer::new(manifest, cfg, model_cfg, Device::Cpu).unwrap();
                        let mut source = Grouped::new(table, 37, r, ranks, owner);
                        let mut replicas = sum.rank(r);
                        let mut reports = Vec::new();
                        while t.settle_from(&mut source, &mut replicas).unwrap() != Stage::Done {
                            reports.push(
                                t.run_epoch_from(&mut source, &Table::default(), &mut replicas)
                                    .unwrap(),
                            );
                        }
                        (t, reports, source.loads, source.held)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        })
    };
    let all = |_: usize| 0;
    let single = run(1, 2 * b, &all);
    let (one, one_reports, loads, held) = &single[0];
    let expect_held: Vec<Vec<u32>> = if against_whole { vec![] } else { vec![vec![1]] };
    assert_eq!(held, &expect_held);
    assert_eq!(one_reports.len(), 8);
    for r in one_reports {
        assert_eq!(r.rows, 150, "{r:?}");
    }
    // Windows were loaded one after another, not the whole set once.
    assert!(*loads > 8, "{loads} loads");
    let split = |g: usize| g % 2;
    let double = run(2, b, &split);
    for (t, reports, _, _) in &double {
        for (r, r1) in reports.iter().zip(one_reports) {
            assert_eq!((r.stage, r.steps, r.rows), (r1.stage, r1.steps, r1.rows));
            assert!((r.loss - r1.loss).abs() < 1e-4 * r1.loss.abs().max(1.0));
        }
        for ((na, ta), (nb, tb)) in t
            .model()
            .named_tensors()
            .iter()
            .zip(&one.model().named_tensors())
        {
            assert_eq!(na, nb);
            assert!(ta.allclose(tb, 1e-4, 1e-5, false), "{na}");
        }
    }
    assert!(tensors_equal(
        &double[0].0.model().named_tensors(),
        &double[1].0.model().named_tensors()
    ));
    // Same seed, same weights; the whole table in memory draws another order.
    let again = run(1, 2 * b, &all);
    assert!(tensors_equal(
        &again[0].0.model().named_tensors(),
        &one.model().named_tensors()
    ));
    if !against_whole {
        return;
    }
    let mut whole = Trainer::new(
        manifest,
        &TrainConfig {
            batch_size: 2 * b,
            ..cfg.clone()
        },
        &model_cfg,
        Device::Cpu,
    )
    .unwrap();
    run_all(&mut whole, table, &mut Alone);
    assert!(!tensors_equal(
        &whole.model().named_tensors(),
        &one.model().named_tensors()
    ));
}
