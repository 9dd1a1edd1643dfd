//! Times the downstream-utility stage on real data (the performance budget of `flowsynth eval`
//! is checked with it: NSL-KDD's full training split, its test split and 20,000 synthetic rows).
//!
//! ```sh
//! cargo run --release -p flowsynth-eval --example downstream_timing -- TRAIN TEST SYNTHETIC [OPTIONS]
//! ```
//!
//! TRAIN, TEST and SYNTHETIC are datasets written by `flowsynth convert` or `flowsynth sample`.
//! OPTIONS is a JSON object of `DownstreamOptions` fields to change, e.g.
//! `'{"seeds": 1, "threads": 2, "detectors": ["mlp"], "mlp": {"epochs": 3}}'`.
//! Per-fit progress is logged at info level (`FLOWSYNTH_LOG` filters it).

use std::time::Instant;

use flowsynth_eval::downstream::{self, DownstreamOptions};
use flowsynth_eval::load::load_all;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOWSYNTH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [train, test, synthetic] = [0, 1, 2].map(|i| args.get(i).cloned());
    let (Some(train), Some(test), Some(synthetic)) = (train, test, synthetic) else {
        return Err("usage: downstream_timing TRAIN TEST SYNTHETIC [OPTIONS_JSON]".into());
    };
    let opts: DownstreamOptions = match args.get(3) {
        Some(json) => serde_json::from_str(json)?,
        None => DownstreamOptions::default(),
    };

    let t = Instant::now();
    let data = load_all(&train, &test, &synthetic)?;
    println!(
        "loaded {} train, {} test, {} synthetic rows in {:.1} s",
        data.train.rows(),
        data.test.rows(),
        data.synthetic.rows(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let out = downstream::run(
        &data.schema,
        &data.train,
        &data.test,
        &data.synthetic,
        &opts,
    )?;
    println!(
        "downstream: {:.1} s ({} seeds, {} threads)",
        t.elapsed().as_secs_f64(),
        opts.seeds,
        opts.threads
    );
    for d in &out.downstream.detectors {
        for s in &d.settings {
            println!(
                "{:<18} {:<15} macro-F1 {:.4} ± {:.4}  weighted-F1 {:.4}  accuracy {:.4}  fit {:.2} s",
                d.detector,
                s.setting,
                s.macro_f1.mean,
                s.macro_f1.std,
                s.weighted_f1.mean,
                s.accuracy.mean,
                s.train_seconds
            );
        }
    }
    for n in &out.notes {
        println!("note: {n}");
    }
    Ok(())
}
