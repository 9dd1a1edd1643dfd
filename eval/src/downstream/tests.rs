use super::*;
use crate::frame::ColumnSpec;

fn schema() -> Schema {
    Schema {
        columns: vec![
            ColumnSpec::numeric("bytes", true),
            ColumnSpec::categorical("proto", &["tcp", "udp", "icmp"]),
            ColumnSpec::numeric("rate", false),
        ],
        label: "label".into(),
        classes: vec![
            "normal".into(),
            "scan".into(),
            "flood".into(),
            "novel".into(),
        ],
    }
}

/// `counts[c]` rows of class `c`, cleanly separated: `bytes` in [100c, 100c + 10), `proto` = c
/// (mod 3), `rate` noise that says nothing. `phase` varies the values between frames.
fn frame(counts: &[usize], phase: usize) -> Frame {
    let (mut bytes, mut proto, mut rate, mut labels) = (vec![], vec![], vec![], vec![]);
    for (c, &n) in counts.iter().enumerate() {
        for i in 0..n {
            bytes.push(100.0 * c as f64 + ((i * 7 + phase * 3) % 10) as f64);
            proto.push((c % 3) as u32);
            rate.push(((i * 13 + phase) % 17) as f64 / 17.0);
            labels.push(c as u32);
        }
    }
    Frame {
        columns: vec![
            Values::Numeric(bytes),
            Values::Categorical(proto),
            Values::Numeric(rate),
        ],
        labels,
    }
}

fn small_opts(detectors: &[DetectorKind]) -> DownstreamOptions {
    DownstreamOptions {
        seeds: 2,
        seed: 3,
        detectors: detectors.to_vec(),
        threads: 1,
        forest: ForestOptions {
            trees: 8,
            ..ForestOptions::default()
        },
        boosting: BoostingOptions {
            rounds: 8,
            ..BoostingOptions::default()
        },
        mlp: MlpOptions {
            hidden: vec![16],
            epochs: 40,
            min_steps: 0,
            batch_size: 32,
            learning_rate: 1e-2,
        },
        smote: SmoteOptions::default(),
    }
}

/// Every detector gets a trivially separable three-class problem right in every setting.
#[test]
fn detectors_separate_a_clean_problem() {
    let s = schema();
    let (train, test, synthetic) = (
        frame(&[120, 30, 12], 0),
        frame(&[30, 10, 6], 1),
        frame(&[0, 8, 20], 2),
    );
    let out = run(
        &s,
        &train,
        &test,
        &synthetic,
        &small_opts(&DetectorKind::ALL),
    )
    .expect("run");
    let d = &out.downstream;
    assert_eq!(d.settings, SETTINGS.to_vec());
    assert_eq!(d.classes, vec!["normal", "scan", "flood"]);
    assert_eq!(d.detectors.len(), 3);
    for det in &d.detectors {
        assert_eq!(det.settings.len(), 4);
        for set in &det.settings {
            assert_eq!(
                set.macro_f1.values.len(),
                2,
                "{} {}",
                det.detector,
                set.setting
            );
            assert_eq!(
                set.macro_f1.mean, 1.0,
                "{} {}: {:?}",
                det.detector, set.setting, set.macro_f1
            );
            assert_eq!(set.accuracy.mean, 1.0);
            assert_eq!(
                set.per_class.iter().map(|c| c.support).collect::<Vec<_>>(),
                vec![30, 10, 6]
            );
        }
    }
    assert_eq!(
        d.added_per_class,
        [("scan".to_string(), 8), ("flood".to_string(), 20)]
            .into_iter()
            .collect()
    );
    assert!(out.notes.is_empty(), "{:?}", out.notes);
}

/// Each augmented setting stacks exactly n_c extra rows of class c onto the real rows, in
/// features and labels alike.
#[test]
fn augmented_settings_add_the_synthetic_class_counts() {
    let s = schema();
    let (train, test, synthetic) = (
        frame(&[50, 9, 4], 0),
        frame(&[5, 5, 5], 1),
        frame(&[0, 7, 13], 2),
    );
    let per_class = synthetic.class_counts(4);
    let o = Oversampler::new(&s, &train, &SmoteOptions::default());
    let ros = o.random_oversample(&per_class, 1);
    let smote = o.smote(&s, &per_class, 2, 1);
    let labels = setting_labels(&train, &synthetic, &ros, &smote);
    let f = Features::new(&train, &synthetic, &test, ordinal_matrix);
    let sets = f.settings(&ros, &ordinal_matrix(&smote));
    let real = train.class_counts(4);
    for k in 0..4 {
        let counts = Frame {
            columns: vec![],
            labels: labels[k].clone(),
        }
        .class_counts(4);
        let added: Vec<usize> = counts.iter().zip(&real).map(|(a, b)| a - b).collect();
        let want = if k == 0 {
            vec![0; 4]
        } else {
            per_class.clone()
        };
        assert_eq!(added, want, "setting {}", SETTINGS[k]);
        assert_eq!(sets[k].rows, labels[k].len());
        // The real rows come first, unchanged.
        assert_eq!(&sets[k].data[..f.train.data.len()], f.train.data.as_slice());
    }
    // The ROS rows are copies of real rows of their class.
    for (r, &i) in ros.iter().enumerate() {
        let row = sets[2].row(train.rows() + r);
        assert_eq!(row, f.train.row(i));
        assert_eq!(labels[2][train.rows() + r], train.labels[i]);
    }
}

/// Same options, same numbers; another seed, other numbers (the forest's subsamples, the SMOTE
/// rows and the MLP's initialisation all move).
#[test]
fn results_are_deterministic_per_seed() {
    let s = schema();
    // Overlapping classes, so the detectors make seed-dependent mistakes.
    let mut train = frame(&[150, 40, 12], 0);
    let mut test = frame(&[40, 20, 10], 1);
    if let Values::Numeric(b) = &mut train.columns[0] {
        b.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = (i % 23) as f64);
    }
    if let Values::Numeric(b) = &mut test.columns[0] {
        b.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = (i % 19) as f64);
    }
    for c in [&mut train, &mut test] {
        if let Values::Categorical(p) = &mut c.columns[1] {
            p.iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = (i % 3) as u32);
        }
    }
    let synthetic = frame(&[0, 10, 10], 2);
    let opts = small_opts(&DetectorKind::ALL);
    let values = |o: &DownstreamOptions| -> Vec<Vec<f64>> {
        let out = run(&s, &train, &test, &synthetic, o).expect("run");
        out.downstream
            .detectors
            .iter()
            .flat_map(|d| d.settings.iter().map(|s| s.macro_f1.values.clone()))
            .collect()
    };
    let a = values(&opts);
    assert_eq!(a, values(&opts));
    let other = DownstreamOptions { seed: 11, ..opts };
    assert_ne!(a, values(&other));
}

/// Test rows of a class training never saw count in the evaluated classes with recall 0; a class
/// absent from the training data gets no ROS/SMOTE rows, and a note says so.
#[test]
fn novel_test_classes_score_zero_and_missing_classes_are_noted() {
    let s = schema();
    let (train, test) = (frame(&[60, 20, 0, 0], 0), frame(&[10, 5, 0, 4], 1));
    let synthetic = frame(&[0, 0, 6, 0], 2);
    let out = run(
        &s,
        &train,
        &test,
        &synthetic,
        &small_opts(&[DetectorKind::RandomForest]),
    )
    .expect("run");
    let d = &out.downstream;
    assert_eq!(d.classes, vec!["normal", "scan", "novel"]);
    let real = &d.detectors[0].settings[0];
    let novel = &real.per_class[2];
    assert_eq!((novel.class.as_str(), novel.support), ("novel", 4));
    assert_eq!((novel.recall.mean, novel.f1.mean), (0.0, 0.0));
    assert!(
        (real.accuracy.mean - 15.0 / 19.0).abs() < 1e-12,
        "{:?}",
        real.accuracy
    );
    assert_eq!(out.notes.len(), 1);
    assert!(
        out.notes[0].contains("`flood` has no real training rows"),
        "{}",
        out.notes[0]
    );
}

#[test]
fn options_are_checked() {
    let s = schema();
    let f = frame(&[10, 10], 0);
    let mut o = small_opts(&[DetectorKind::RandomForest]);
    o.seeds = 0;
    assert!(matches!(run(&s, &f, &f, &f, &o), Err(Error::Config(_))));
    let o = small_opts(&[]);
    assert!(matches!(run(&s, &f, &f, &f, &o), Err(Error::Config(_))));
    let empty = frame(&[], 0);
    let o = small_opts(&[DetectorKind::RandomForest]);
    assert!(matches!(
        run(&s, &f, &empty, &f, &o),
        Err(Error::Empty { .. })
    ));
    let mut bad = f.clone();
    bad.labels[0] = 9;
    assert!(matches!(run(&s, &bad, &f, &f, &o), Err(Error::Config(_))));
    assert_eq!(
        "gbt".parse::<DetectorKind>().ok(),
        Some(DetectorKind::GradientBoosting)
    );
    assert_eq!(
        "Random-Forest".parse::<DetectorKind>().ok(),
        Some(DetectorKind::RandomForest)
    );
    assert!("svm".parse::<DetectorKind>().is_err());
    let o: DownstreamOptions =
        serde_json::from_str(r#"{"detectors": ["rf", "mlp"], "forest": {"trees": 3}}"#)
            .expect("json");
    assert_eq!(
        o.detectors,
        vec![DetectorKind::RandomForest, DetectorKind::Mlp]
    );
    assert_eq!((o.forest.trees, o.seeds), (3, 5));
}
