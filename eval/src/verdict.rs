//! The verdict at the top of the report and of the printed summary: does adding the synthetic
//! rows beat training on real data alone, and does it beat SMOTE, on the classes they augment?
//! A user must never ship rows that hurt because the answer was buried in a table.

use crate::report::{DetectorResult, Downstream, Stat, Verdict};

/// The figure a detector is judged by: the rare-class F1 when the test split holds an augmented
/// class, else the macro-F1.
fn figure<'a>(d: &'a DetectorResult, setting: &str, rare: bool) -> Option<&'a Stat> {
    let s = d.settings.iter().find(|s| s.setting == setting)?;
    if rare {
        s.rare_f1.as_ref()
    } else {
        Some(&s.macro_f1)
    }
}

/// `+0.012` / `-0.034`, with "within seed noise" when the gap is smaller than the spread.
fn delta(a: &Stat, b: &Stat) -> String {
    let d = a.mean - b.mean;
    let noise = (a.std * a.std + b.std * b.std).sqrt();
    if d.abs() < noise {
        format!("{d:+.3}, within seed noise")
    } else {
        format!("{d:+.3}")
    }
}

pub fn verdict(ds: &Downstream) -> Verdict {
    let rare = !ds.rare_classes.is_empty();
    let what = if rare {
        format!("rare-class F1 ({})", ds.rare_classes.join(", "))
    } else {
        "macro-F1 (the test split holds none of the augmented classes)".to_string()
    };
    let mut lines = Vec::new();
    let (mut hurts, mut loses) = (Vec::new(), Vec::new());
    for d in &ds.detectors {
        let get = |s: &str| figure(d, s, rare);
        let (Some(real), Some(syn)) = (get("real"), get("real+synthetic")) else {
            continue;
        };
        let mut line = format!(
            "{}: {what} {:.3} with the synthetic rows vs {:.3} on real data alone ({})",
            d.detector,
            syn.mean,
            real.mean,
            delta(syn, real)
        );
        if syn.mean < real.mean {
            hurts.push(d.detector.clone());
        }
        for (setting, name) in [("real+smote", "SMOTE"), ("real+ros", "random oversampling")] {
            if let Some(other) = get(setting) {
                line.push_str(&format!(
                    ", {:.3} with {name} ({})",
                    other.mean,
                    delta(syn, other)
                ));
                if setting == "real+smote" && syn.mean <= other.mean {
                    loses.push(d.detector.clone());
                }
            }
        }
        lines.push(line);
    }
    let helps = !lines.is_empty() && hurts.is_empty() && loses.is_empty();
    let advice = if lines.is_empty() {
        "No detector result to judge the synthetic rows by.".to_string()
    } else if !hurts.is_empty() {
        format!(
            "WARNING: the synthetic rows LOWER the {what} of {} against real data alone. Do not \
             add them to a detector's training data.",
            hurts.join(", ")
        )
    } else if !loses.is_empty() {
        format!(
            "The synthetic rows help, but SMOTE does at least as well for {}: for that detector \
             SMOTE is the simpler choice.",
            loses.join(", ")
        )
    } else {
        "The synthetic rows beat real data alone and SMOTE for every detector.".to_string()
    };
    lines.push(advice);
    Verdict { helps, lines }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::report::SettingResult;
    use std::collections::BTreeMap;

    fn setting(name: &str, rare: f64) -> SettingResult {
        let s = Stat::new(vec![rare, rare]);
        SettingResult {
            setting: name.into(),
            macro_f1: s.clone(),
            rare_f1: Some(s.clone()),
            weighted_f1: s.clone(),
            accuracy: s,
            per_class: Vec::new(),
            train_seconds: 0.0,
        }
    }

    fn downstream(syn: f64) -> Downstream {
        Downstream {
            settings: Vec::new(),
            added_per_class: BTreeMap::new(),
            classes: vec!["a".into(), "b".into()],
            rare_classes: vec!["b".into()],
            detectors: vec![DetectorResult {
                detector: "random_forest".into(),
                settings: vec![
                    setting("real", 0.5),
                    setting("real+synthetic", syn),
                    setting("real+ros", 0.6),
                    setting("real+smote", 0.62),
                ],
            }],
            config: BTreeMap::new(),
        }
    }

    #[test]
    fn rows_that_hurt_are_called_out() {
        let v = verdict(&downstream(0.4));
        assert!(!v.helps);
        assert!(v.lines.last().unwrap().contains("LOWER"), "{:?}", v.lines);
        assert!(v.lines[0].contains("-0.100"), "{:?}", v.lines);
    }

    #[test]
    fn losing_to_smote_is_said() {
        let v = verdict(&downstream(0.61));
        assert!(!v.helps);
        assert!(
            v.lines
                .last()
                .unwrap()
                .contains("SMOTE does at least as well")
        );
    }

    #[test]
    fn beating_both_is_a_yes() {
        let v = verdict(&downstream(0.7));
        assert!(v.helps);
        assert!(v.lines[0].contains("rare-class F1 (b)"), "{:?}", v.lines);
    }
}
