//! Domain validity: constraints a real flow always satisfies, inferred from the real training
//! data, and the share of synthetic rows that satisfy them.
//!
//! Inferred per column: `non_negative` (the real column never goes below 0), `integer` (every
//! real value is whole), `binary_flag` (the real column only holds 0 and 1; implies the two
//! before, which are then not listed again), `unit_interval` (a rate/ratio-named column that stays
//! within [0, 1]), `known_category` (a categorical value the training data has). Inferred across
//! columns: `ordered` for min <= mean <= max style groups whose names differ only in a min / mean
//! / avg / max token (`Fwd Packet Length Min`, `fwd_pkt_len_max`, `Min Packet Length`, ...) and
//! for which the order holds on every real row.

use std::collections::BTreeMap;

use crate::frame::{Frame, Kind, Schema, Values};
use crate::report::{Constraint, Validity};

/// Tolerance for "whole number" checks (values travel through f64).
const INTEGER_EPS: f64 = 1e-9;

enum Check {
    NonNegative(usize),
    Integer(usize),
    Flag(usize),
    UnitInterval(usize),
    /// Column, and a mask over codes the training data has.
    KnownCategory(usize, Vec<bool>),
    /// lower <= upper.
    Ordered(usize, usize),
}

impl Check {
    fn holds(&self, f: &Frame, i: usize) -> bool {
        match self {
            Check::NonNegative(j) => f.columns[*j].numeric()[i] >= 0.0,
            Check::Integer(j) => is_whole(f.columns[*j].numeric()[i]),
            Check::Flag(j) => {
                let v = f.columns[*j].numeric()[i];
                v == 0.0 || v == 1.0
            }
            Check::UnitInterval(j) => (0.0..=1.0).contains(&f.columns[*j].numeric()[i]),
            Check::KnownCategory(j, known) => {
                let c = f.columns[*j].codes()[i] as usize;
                known.get(c).copied().unwrap_or(false)
            }
            Check::Ordered(a, b) => f.columns[*a].numeric()[i] <= f.columns[*b].numeric()[i],
        }
    }
}

fn is_whole(v: f64) -> bool {
    (v - v.round()).abs() <= INTEGER_EPS
}

/// Position of a column name inside an ordered group: its stem (the name without the statistic
/// token) and the rank of the token (0 = min, 1 = mean/avg, 2 = max).
fn group_token(name: &str) -> Option<(String, u8)> {
    // Split on anything that is not alphanumeric, keeping the separators to rebuild the stem.
    let lower = name.to_ascii_lowercase();
    let tokens: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .collect();
    let mut found = None;
    for (k, t) in tokens.iter().enumerate() {
        let rank = match *t {
            "min" | "minimum" => 0,
            "mean" | "avg" | "average" => 1,
            "max" | "maximum" => 2,
            _ => continue,
        };
        if found.is_some() {
            // Two statistic tokens: ambiguous, do not group.
            return None;
        }
        found = Some((k, rank));
    }
    let (k, rank) = found?;
    let mut stem: Vec<&str> = tokens.clone();
    stem[k] = "*";
    Some((stem.join(" "), rank))
}

/// Name hints for columns that are fractions.
fn looks_like_rate(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ["rate", "ratio", "percent", "pct", "fraction"]
        .iter()
        .any(|h| lower.contains(h))
}

struct Inferred {
    checks: Vec<Check>,
    constraints: Vec<Constraint>,
}

fn infer(schema: &Schema, real: &Frame) -> Inferred {
    let mut checks = Vec::new();
    let mut constraints = Vec::new();
    let mut push = |check: Check, kind: &str, columns: Vec<String>, description: String| {
        checks.push(check);
        constraints.push(Constraint {
            kind: kind.into(),
            columns,
            description,
            synthetic_share: f64::NAN,
            real_share: f64::NAN,
        });
    };
    for (j, spec) in schema.columns.iter().enumerate() {
        let name = &spec.name;
        match (&spec.kind, &real.columns[j]) {
            (Kind::Numeric { .. }, Values::Numeric(x)) if !x.is_empty() => {
                let non_negative = x.iter().all(|&v| v >= 0.0);
                let whole = x.iter().all(|&v| is_whole(v));
                let flag = x.iter().all(|&v| v == 0.0 || v == 1.0);
                if flag {
                    push(
                        Check::Flag(j),
                        "binary_flag",
                        vec![name.clone()],
                        format!("`{name}` is 0 or 1"),
                    );
                    continue;
                }
                if non_negative {
                    push(
                        Check::NonNegative(j),
                        "non_negative",
                        vec![name.clone()],
                        format!("`{name}` >= 0"),
                    );
                }
                if whole {
                    push(
                        Check::Integer(j),
                        "integer",
                        vec![name.clone()],
                        format!("`{name}` is a whole number"),
                    );
                }
                let unit = x.iter().all(|&v| (0.0..=1.0).contains(&v));
                if unit && !whole && looks_like_rate(name) {
                    push(
                        Check::UnitInterval(j),
                        "unit_interval",
                        vec![name.clone()],
                        format!("0 <= `{name}` <= 1"),
                    );
                }
            }
            (Kind::Categorical { vocabulary }, Values::Categorical(codes)) => {
                let mut known = vec![false; vocabulary.len()];
                for &c in codes {
                    if let Some(k) = known.get_mut(c as usize) {
                        *k = true;
                    }
                }
                push(
                    Check::KnownCategory(j, known),
                    "known_category",
                    vec![name.clone()],
                    format!("`{name}` takes a value seen in the training data"),
                );
            }
            _ => {}
        }
    }

    // Ordered groups: stem -> rank -> column.
    let mut groups: BTreeMap<String, BTreeMap<u8, usize>> = BTreeMap::new();
    for j in schema.numeric_columns() {
        if let Some((stem, rank)) = group_token(&schema.columns[j].name) {
            groups.entry(stem).or_default().insert(rank, j);
        }
    }
    for members in groups.values() {
        let ordered: Vec<usize> = members.values().copied().collect();
        for w in ordered.windows(2) {
            let (a, b) = (w[0], w[1]);
            let holds = real.columns[a]
                .numeric()
                .iter()
                .zip(real.columns[b].numeric())
                .all(|(x, y)| x <= y);
            if holds {
                let (na, nb) = (&schema.columns[a].name, &schema.columns[b].name);
                push(
                    Check::Ordered(a, b),
                    "ordered",
                    vec![na.clone(), nb.clone()],
                    format!("`{na}` <= `{nb}`"),
                );
            }
        }
    }
    Inferred {
        checks,
        constraints,
    }
}

/// Share of rows of `f` satisfying each check, and the share satisfying all of them.
fn shares(checks: &[Check], f: &Frame) -> (Vec<f64>, f64) {
    let n = f.rows();
    let mut per = vec![0usize; checks.len()];
    let mut all = 0usize;
    for i in 0..n {
        let mut ok = true;
        for (k, c) in checks.iter().enumerate() {
            if c.holds(f, i) {
                per[k] += 1;
            } else {
                ok = false;
            }
        }
        if ok {
            all += 1;
        }
    }
    let d = n.max(1) as f64;
    (per.iter().map(|&c| c as f64 / d).collect(), all as f64 / d)
}

/// Infers the constraints from `real` and measures them on `synthetic` (and on `real`).
pub fn evaluate(schema: &Schema, real: &Frame, synthetic: &Frame) -> Validity {
    let Inferred {
        checks,
        mut constraints,
    } = infer(schema, real);
    let (syn_shares, syn_all) = shares(&checks, synthetic);
    let (real_shares, real_all) = shares(&checks, real);
    for ((c, s), r) in constraints.iter_mut().zip(syn_shares).zip(real_shares) {
        c.synthetic_share = s;
        c.real_share = r;
    }
    Validity {
        share_valid_rows: syn_all,
        real_share_valid_rows: real_all,
        constraints,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::ColumnSpec;

    fn num(name: &str) -> ColumnSpec {
        ColumnSpec::numeric(name, false)
    }

    #[test]
    fn group_tokens() {
        assert_eq!(
            group_token("Fwd Packet Length Min"),
            Some(("fwd packet length *".into(), 0))
        );
        assert_eq!(
            group_token("fwd_pkt_len_max"),
            Some(("fwd pkt len *".into(), 2))
        );
        assert_eq!(
            group_token("Min Packet Length"),
            Some(("* packet length".into(), 0))
        );
        assert_eq!(
            group_token("Avg Packet Size"),
            Some(("* packet size".into(), 1))
        );
        assert_eq!(group_token("duration"), None);
        assert_eq!(group_token("min max"), None);
        // "minute" is not the token "min".
        assert_eq!(group_token("minutes"), None);
    }

    #[test]
    fn infers_and_measures_hand_made_constraints() {
        let schema = Schema {
            columns: vec![
                num("bytes"),
                num("flag"),
                num("serror_rate"),
                num("Len Min"),
                num("Len Mean"),
                num("Len Max"),
                num("temperature"),
                ColumnSpec::categorical("proto", &["tcp", "udp", "icmp"]),
            ],
            label: "label".into(),
            classes: vec!["a".into()],
        };
        let real = Frame {
            columns: vec![
                Values::Numeric(vec![0.0, 10.0, 300.0]),
                Values::Numeric(vec![0.0, 1.0, 1.0]),
                Values::Numeric(vec![0.0, 0.5, 1.0]),
                Values::Numeric(vec![1.0, 2.0, 3.0]),
                Values::Numeric(vec![1.5, 2.0, 4.0]),
                Values::Numeric(vec![2.0, 2.0, 5.0]),
                Values::Numeric(vec![-3.5, 2.25, 7.0]),
                // "icmp" never appears in training.
                Values::Categorical(vec![0, 1, 0]),
            ],
            labels: vec![0; 3],
        };
        // Row 0 valid; row 1: bytes negative and fractional; row 2: flag = 2, rate 1.5,
        // mean > max, unseen category icmp; row 3 valid.
        let syn = Frame {
            columns: vec![
                Values::Numeric(vec![5.0, -1.5, 7.0, 0.0]),
                Values::Numeric(vec![1.0, 0.0, 2.0, 0.0]),
                Values::Numeric(vec![0.2, 0.3, 1.5, 0.0]),
                Values::Numeric(vec![1.0, 1.0, 1.0, 0.0]),
                Values::Numeric(vec![1.0, 1.0, 9.0, 0.0]),
                Values::Numeric(vec![1.0, 1.0, 8.0, 0.0]),
                Values::Numeric(vec![-100.0, 0.5, 3.0, 1e6]),
                Values::Categorical(vec![0, 1, 2, 1]),
            ],
            labels: vec![0; 4],
        };
        let v = evaluate(&schema, &real, &syn);
        let kinds: Vec<(&str, &str)> = v
            .constraints
            .iter()
            .map(|c| (c.kind.as_str(), c.columns[0].as_str()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("non_negative", "bytes"),
                ("integer", "bytes"),
                ("binary_flag", "flag"),
                ("non_negative", "serror_rate"),
                ("unit_interval", "serror_rate"),
                ("non_negative", "Len Min"),
                ("integer", "Len Min"),
                ("non_negative", "Len Mean"),
                ("non_negative", "Len Max"),
                ("integer", "Len Max"),
                ("known_category", "proto"),
                ("ordered", "Len Min"),
                ("ordered", "Len Mean"),
            ]
        );
        assert_eq!(v.share_valid_rows, 0.5);
        assert_eq!(v.real_share_valid_rows, 1.0);
        let share = |kind: &str, col: &str| {
            v.constraints
                .iter()
                .find(|c| c.kind == kind && c.columns[0] == col)
                .map(|c| c.synthetic_share)
        };
        assert_eq!(share("non_negative", "bytes"), Some(0.75));
        assert_eq!(share("binary_flag", "flag"), Some(0.75));
        assert_eq!(share("known_category", "proto"), Some(0.75));
        // Len Mean <= Len Max fails on row 2 only.
        assert_eq!(share("ordered", "Len Mean"), Some(0.75));
    }

    #[test]
    fn order_violated_in_real_data_is_not_a_constraint() {
        let schema = Schema {
            columns: vec![num("x min"), num("x max")],
            label: "label".into(),
            classes: vec!["a".into()],
        };
        let real = Frame {
            columns: vec![
                Values::Numeric(vec![1.0, 5.0]),
                Values::Numeric(vec![2.0, 4.0]),
            ],
            labels: vec![0; 2],
        };
        let v = evaluate(&schema, &real, &real);
        assert!(v.constraints.iter().all(|c| c.kind != "ordered"));
    }
}
