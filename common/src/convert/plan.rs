//! What the header (or the preset, for headerless files) says before any row is read: column
//! names, the label column, and the columns dropped by name (user, preset, identifiers, the
//! unused label). Also label text normalisation, which depends only on the preset.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::{ConvertOptions, Preset};
use crate::error::{Error, Result};
use crate::manifest::DropReason;

/// The 41 feature names of NSL-KDD (and KDD Cup 99) in file order; the files carry no header.
pub(super) const NSL_KDD_FEATURES: [&str; 41] = [
    "duration",
    "protocol_type",
    "service",
    "flag",
    "src_bytes",
    "dst_bytes",
    "land",
    "wrong_fragment",
    "urgent",
    "hot",
    "num_failed_logins",
    "logged_in",
    "num_compromised",
    "root_shell",
    "su_attempted",
    "num_root",
    "num_file_creations",
    "num_shells",
    "num_access_files",
    "num_outbound_cmds",
    "is_host_login",
    "is_guest_login",
    "count",
    "srv_count",
    "serror_rate",
    "srv_serror_rate",
    "rerror_rate",
    "srv_rerror_rate",
    "same_srv_rate",
    "diff_srv_rate",
    "srv_diff_host_rate",
    "dst_host_count",
    "dst_host_srv_count",
    "dst_host_same_srv_rate",
    "dst_host_diff_srv_rate",
    "dst_host_same_src_port_rate",
    "dst_host_srv_diff_host_rate",
    "dst_host_serror_rate",
    "dst_host_srv_serror_rate",
    "dst_host_rerror_rate",
    "dst_host_srv_rerror_rate",
];

/// Identifier column names (lower-cased, spaces and underscores removed) that a model must not
/// learn: they identify a host or a moment, not a behaviour. Destination port stays: it is a
/// legitimate CICFlowMeter feature (the service being attacked).
const IDENTIFIERS: [&str; 9] = [
    "id",
    "flowid",
    "srcip",
    "dstip",
    "sourceip",
    "destinationip",
    "srcport",
    "sourceport",
    "timestamp",
];

fn squash(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_whitespace() && *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Column layout known before reading rows. Indices are source column positions.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    /// Fields per row.
    pub width: usize,
    /// Whether each file starts with a header row.
    pub header: bool,
    /// Trimmed, de-duplicated names.
    pub names: Vec<String>,
    /// Names as the source wrote them (or the preset's standard names).
    pub source_names: Vec<String>,
    /// The header's trimmed names before de-duplication, to compare later files' headers.
    pub trimmed: Vec<String>,
    /// Columns dropped by name, with the reason.
    pub dropped: Vec<Option<DropReason>>,
    pub label: usize,
    /// Repair the CIC-IDS-2017 label quirks (mis-decoded dashes, repeated spaces).
    pub repair_labels: bool,
}

impl Plan {
    /// Feature columns read from every row: neither the label nor dropped by name.
    pub fn features(&self) -> Vec<usize> {
        (0..self.width)
            .filter(|&c| c != self.label && self.dropped.get(c).is_some_and(Option::is_none))
            .collect()
    }

    pub fn name(&self, c: usize) -> &str {
        self.names.get(c).map(String::as_str).unwrap_or("?")
    }

    /// Builds the plan. `header` is the first file's header row (raw text), `None` for the
    /// headerless NSL-KDD layout.
    pub fn new(opts: &ConvertOptions, first: &Path, header: Option<Vec<String>>) -> Result<Self> {
        let (source_names, has_header) = match header {
            Some(h) => (h, true),
            None => {
                let mut n: Vec<String> = NSL_KDD_FEATURES.iter().map(|s| s.to_string()).collect();
                n.push("label".into());
                n.push("difficulty".into());
                (n, false)
            }
        };
        let trimmed: Vec<String> = source_names.iter().map(|s| s.trim().to_string()).collect();
        let names = unique_names(&trimmed);
        let width = names.len();
        let label = find_label(opts, first, &names)?;

        let mut dropped: Vec<Option<DropReason>> = vec![None; width];
        for wanted in &opts.drop {
            let wanted = wanted.trim();
            let c =
                names
                    .iter()
                    .position(|n| n == wanted)
                    .ok_or_else(|| Error::UnknownDropColumn {
                        path: first.to_path_buf(),
                        column: wanted.to_string(),
                    })?;
            if c == label {
                return Err(Error::InvalidOptions {
                    reason: format!("--drop names the label column `{wanted}`"),
                });
            }
            dropped[c] = Some(DropReason::User);
        }
        for (c, name) in names.iter().enumerate() {
            if c == label || dropped[c].is_some() {
                continue;
            }
            dropped[c] = preset_drop(opts.preset, name);
        }
        Ok(Self {
            width,
            header: has_header,
            names,
            source_names,
            trimmed,
            dropped,
            label,
            repair_labels: opts.preset == Preset::CicIds2017,
        })
    }

    /// Checks that a later file's header matches the first one (names compared trimmed).
    pub fn check_header(&self, path: &Path, first: &Path, header: &[String]) -> Result<()> {
        let mismatch = |detail: String| Error::HeaderMismatch {
            path: path.to_path_buf(),
            first: first.to_path_buf(),
            detail,
        };
        if header.len() != self.width {
            return Err(mismatch(format!(
                "{} columns here, {} in the first file",
                header.len(),
                self.width
            )));
        }
        for (i, (a, b)) in header.iter().zip(&self.trimmed).enumerate() {
            if a.trim() != b {
                return Err(mismatch(format!(
                    "column {} is `{}` here but `{}` in the first file",
                    i + 1,
                    a.trim(),
                    b
                )));
            }
        }
        Ok(())
    }
}

/// Trimmed names made unique: a repeated name gets `_2`, `_3`, ... (skipping suffixes that a
/// real column already uses); an empty name becomes `column_N` (1-based position), so every
/// Parquet column can be named on the command line.
fn unique_names(trimmed: &[String]) -> Vec<String> {
    let mut taken: HashSet<String> = trimmed.iter().filter(|n| !n.is_empty()).cloned().collect();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(trimmed.len());
    for (i, name) in trimmed.iter().enumerate() {
        let base = if name.is_empty() {
            format!("column_{}", i + 1)
        } else {
            name.clone()
        };
        let count = seen.entry(base.clone()).or_insert(0);
        *count += 1;
        if *count == 1 && (!name.is_empty() || !taken.contains(&base)) {
            taken.insert(base.clone());
            out.push(base);
            continue;
        }
        let mut k = (*count).max(2);
        let unique = loop {
            let candidate = format!("{base}_{k}");
            if !taken.contains(&candidate) {
                break candidate;
            }
            k += 1;
        };
        taken.insert(unique.clone());
        out.push(unique);
    }
    out
}

/// Default label column names per preset, in order of preference.
fn default_labels(preset: Preset) -> &'static [&'static str] {
    match preset {
        Preset::NslKdd => &["label"],
        Preset::CicIds2017 => &["Label"],
        // The sample layout has label_multiclass; the original CICIoT2023 CSVs call it `label`.
        Preset::CicIot2023 => &["label_multiclass", "label"],
        Preset::Generic => &["label", "Label", "class", "Class"],
    }
}

fn find_label(opts: &ConvertOptions, first: &Path, names: &[String]) -> Result<usize> {
    let wanted: Vec<&str> = match &opts.label {
        Some(l) => vec![l.trim()],
        None => default_labels(opts.preset).to_vec(),
    };
    for w in &wanted {
        if let Some(c) = names.iter().position(|n| n == w) {
            return Ok(c);
        }
    }
    // A case-insensitive match is accepted when it is unambiguous (`label` vs `Label` exports).
    for w in &wanted {
        let hits: Vec<usize> = names
            .iter()
            .enumerate()
            .filter(|(_, n)| n.eq_ignore_ascii_case(w))
            .map(|(i, _)| i)
            .collect();
        if let [only] = hits[..] {
            return Ok(only);
        }
    }
    let available = names.join(", ");
    match (&opts.label, opts.preset) {
        (None, Preset::Generic) => Err(Error::NoLabelColumn {
            path: first.to_path_buf(),
            available,
        }),
        _ => Err(Error::UnknownLabelColumn {
            path: first.to_path_buf(),
            column: wanted.first().copied().unwrap_or_default().to_string(),
            available,
        }),
    }
}

/// The preset's own reason to drop a (non-label) column, if any.
fn preset_drop(preset: Preset, name: &str) -> Option<DropReason> {
    let squashed = squash(name);
    match preset {
        Preset::NslKdd => (name == "difficulty").then(|| DropReason::Preset {
            why: "NSL-KDD difficulty score (how many of 21 learners got the record right), \
                  not a property of the connection"
                .into(),
        }),
        Preset::CicIds2017 if squashed == "attemptedcategory" => Some(DropReason::Preset {
            why: "CIC-IDS-2017 improved layout: annotation of the relabelling (attempted-attack \
                  category), not a flow feature"
                .into(),
        }),
        Preset::CicIds2017 | Preset::Generic => IDENTIFIERS
            .contains(&squashed.as_str())
            .then_some(DropReason::Identifier),
        Preset::CicIot2023 => {
            (name == "label_multiclass" || name == "label_binary").then_some(DropReason::OtherLabel)
        }
    }
}

/// The UTF-8 en dash (E2 80 93) decoded as cp1252 (`â€“`) or as Latin-1 and re-encoded.
const MOJIBAKE_DASHES: [&str; 2] = ["\u{e2}\u{20ac}\u{201c}", "\u{e2}\u{80}\u{93}"];

/// A label field after normalisation.
pub(super) struct Label<'a> {
    pub text: Cow<'a, str>,
    /// The source text (invalid bytes written `\xNN`) when normalisation changed it.
    pub rewritten_from: Option<String>,
}

/// Normalises a raw label field: surrounding whitespace is trimmed in every preset; with
/// `repair` (CIC-IDS-2017) mis-decoded dashes become `-` and runs of whitespace collapse to one
/// space, so `Web Attack \x96 Brute Force` (cp1252 en dash), `Web Attack – Brute Force` and
/// `Web Attack â€“ Brute Force` all read `Web Attack - Brute Force`. Returns `None` for bytes
/// that are not UTF-8 and not the one repaired byte.
pub(super) fn normalise_label(raw: &[u8], repair: bool) -> Option<Label<'_>> {
    let text: Cow<'_, str> = match std::str::from_utf8(raw) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) if repair => {
            let mut out = String::with_capacity(raw.len());
            for chunk in raw.utf8_chunks() {
                out.push_str(chunk.valid());
                for &b in chunk.invalid() {
                    if b == 0x96 {
                        out.push('\u{2013}');
                    } else {
                        return None;
                    }
                }
            }
            Cow::Owned(out)
        }
        Err(_) => return None,
    };
    let normalised: Cow<'_, str> = if repair {
        let needs = text.contains(['\u{2013}', '\u{fffd}'])
            || MOJIBAKE_DASHES.iter().any(|m| text.contains(m))
            || text.contains("  ")
            || text.contains(|c: char| c.is_whitespace() && c != ' ')
            || text.trim() != text;
        if needs {
            let mut dashed = text.to_string();
            for m in MOJIBAKE_DASHES {
                dashed = dashed.replace(m, "-");
            }
            let dashed = dashed.replace(['\u{2013}', '\u{fffd}'], "-");
            Cow::Owned(dashed.split_whitespace().collect::<Vec<_>>().join(" "))
        } else {
            text.clone()
        }
    } else {
        match &text {
            Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
            Cow::Owned(s) => Cow::Owned(s.trim().to_string()),
        }
    };
    let rewritten_from = (normalised.as_bytes() != raw).then(|| escape_bytes(raw));
    Some(Label {
        text: normalised,
        rewritten_from,
    })
}

/// Text of possibly invalid UTF-8 with each invalid byte written `\xNN`, for the manifest.
pub(super) fn escape_bytes(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    for chunk in raw.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn opts(preset: Preset) -> ConvertOptions {
        ConvertOptions {
            preset,
            ..ConvertOptions::default()
        }
    }

    fn header(names: &[&str]) -> Option<Vec<String>> {
        Some(names.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn repeated_and_empty_names_become_unique_without_clashing_with_real_columns() {
        let t: Vec<String> = ["a", "a", "a_2", "", "a", "b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            unique_names(&t),
            ["a", "a_3", "a_2", "column_4", "a_4", "b"]
        );
    }

    #[test]
    fn cic_original_header_is_trimmed_and_duplicate_is_suffixed() {
        let p = Plan::new(
            &opts(Preset::CicIds2017),
            Path::new("x.csv"),
            header(&[
                " Destination Port",
                "Fwd Header Length",
                " Fwd Header Length",
                " Label",
            ]),
        )
        .unwrap();
        assert_eq!(
            p.names,
            [
                "Destination Port",
                "Fwd Header Length",
                "Fwd Header Length_2",
                "Label"
            ]
        );
        assert_eq!(p.source_names[2], " Fwd Header Length");
        assert_eq!(p.label, 3);
        assert_eq!(p.features(), [0, 1, 2]);
    }

    #[test]
    fn identifiers_and_attempted_category_are_dropped_but_destination_port_is_kept() {
        let h = header(&[
            "id",
            "Flow ID",
            "Src IP",
            "Src Port",
            "Dst IP",
            "Dst Port",
            "Timestamp",
            "Source_IP",
            "Destination Port",
            "x",
            "Label",
            "Attempted Category",
        ]);
        let p = Plan::new(&opts(Preset::CicIds2017), Path::new("x.csv"), h.clone()).unwrap();
        let ids: Vec<&str> = (0..p.width)
            .filter(|&c| p.dropped[c] == Some(DropReason::Identifier))
            .map(|c| p.name(c))
            .collect();
        assert_eq!(
            ids,
            [
                "id",
                "Flow ID",
                "Src IP",
                "Src Port",
                "Dst IP",
                "Timestamp",
                "Source_IP"
            ]
        );
        assert!(matches!(p.dropped[11], Some(DropReason::Preset { .. })));
        assert_eq!(p.features(), [5, 8, 9]);
        // ciciot2023 drops no identifiers but does drop the other label column.
        let p = Plan::new(
            &ConvertOptions {
                label: Some("x".into()),
                ..opts(Preset::Generic)
            },
            Path::new("x.csv"),
            h,
        )
        .unwrap();
        assert_eq!(p.label, 9);
        assert!(p.dropped[11].is_none() && p.dropped[10].is_none());
    }

    #[test]
    fn label_choice_defaults_case_insensitive_match_and_errors() {
        let h = header(&["a", "label_multiclass", "label_binary"]);
        let p = Plan::new(&opts(Preset::CicIot2023), Path::new("f"), h.clone()).unwrap();
        assert_eq!(
            (p.label, p.dropped[2].clone()),
            (1, Some(DropReason::OtherLabel))
        );
        let p = Plan::new(
            &ConvertOptions {
                label: Some("label_binary".into()),
                ..opts(Preset::CicIot2023)
            },
            Path::new("f"),
            h.clone(),
        )
        .unwrap();
        assert_eq!(
            (p.label, p.dropped[1].clone()),
            (2, Some(DropReason::OtherLabel))
        );
        let p = Plan::new(
            &opts(Preset::Generic),
            Path::new("f"),
            header(&["a", "CLASS"]),
        )
        .unwrap();
        assert_eq!(p.label, 1);
        let err = Plan::new(
            &opts(Preset::Generic),
            Path::new("f.csv"),
            header(&["a", "b"]),
        )
        .unwrap_err();
        assert!(matches!(err, Error::NoLabelColumn { .. }), "{err}");
        assert!(
            err.to_string().contains("--label") && err.to_string().contains("a, b"),
            "{err}"
        );
        let err = Plan::new(
            &ConvertOptions {
                label: Some("nope".into()),
                ..opts(Preset::Generic)
            },
            Path::new("f.csv"),
            header(&["a", "b"]),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("`nope`") && err.to_string().contains("a, b"),
            "{err}"
        );
    }

    #[test]
    fn user_drops_must_exist_and_must_not_be_the_label() {
        let h = header(&["a", " b ", "label"]);
        let o = ConvertOptions {
            drop: vec!["b".into()],
            ..opts(Preset::Generic)
        };
        let p = Plan::new(&o, Path::new("f"), h.clone()).unwrap();
        assert_eq!(p.dropped[1], Some(DropReason::User));
        let o = ConvertOptions {
            drop: vec!["zz".into()],
            ..opts(Preset::Generic)
        };
        let err = Plan::new(&o, Path::new("f.csv"), h.clone()).unwrap_err();
        assert!(matches!(err, Error::UnknownDropColumn { ref column, .. } if column == "zz"));
        let o = ConvertOptions {
            drop: vec!["label".into()],
            ..opts(Preset::Generic)
        };
        assert!(matches!(
            Plan::new(&o, Path::new("f"), h).unwrap_err(),
            Error::InvalidOptions { .. }
        ));
    }

    #[test]
    fn nsl_kdd_has_standard_names_and_drops_difficulty() {
        let p = Plan::new(&opts(Preset::NslKdd), Path::new("f"), None).unwrap();
        assert_eq!(p.width, 43);
        assert!(!p.header);
        assert_eq!(
            (p.name(0), p.name(40), p.name(41)),
            ("duration", "dst_host_srv_rerror_rate", "label")
        );
        assert!(matches!(p.dropped[42], Some(DropReason::Preset { .. })));
        assert_eq!(p.features().len(), 41);
    }

    #[test]
    fn header_mismatch_names_the_column() {
        let p = Plan::new(
            &opts(Preset::Generic),
            Path::new("a.csv"),
            header(&["x", "label"]),
        )
        .unwrap();
        assert!(
            p.check_header(
                Path::new("b.csv"),
                Path::new("a.csv"),
                &[" x".into(), "label ".into()]
            )
            .is_ok()
        );
        let err = p
            .check_header(
                Path::new("b.csv"),
                Path::new("a.csv"),
                &["y".into(), "label".into()],
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("b.csv") && err.contains("a.csv") && err.contains("`y`"),
            "{err}"
        );
    }

    #[test]
    fn cic_labels_repair_mis_decoded_dashes_and_spaces() {
        let want = "Web Attack - Brute Force";
        for raw in [
            &b"Web Attack \x96 Brute Force"[..],
            "Web Attack \u{2013} Brute Force".as_bytes(),
            "Web Attack \u{fffd} Brute Force".as_bytes(),
            "Web Attack \u{e2}\u{20ac}\u{201c} Brute Force".as_bytes(),
            "Web Attack \u{e2}\u{80}\u{93} Brute Force".as_bytes(),
            b"  Web Attack  -   Brute Force ",
        ] {
            let l = normalise_label(raw, true).unwrap();
            assert_eq!(l.text, want, "{raw:?}");
            assert!(l.rewritten_from.is_some());
        }
        let l = normalise_label(b"Web Attack \x96 Brute Force", true).unwrap();
        assert_eq!(
            l.rewritten_from.as_deref(),
            Some("Web Attack \\x96 Brute Force")
        );
        let l = normalise_label(b"BENIGN", true).unwrap();
        assert!(matches!(l.text, Cow::Borrowed("BENIGN")) && l.rewritten_from.is_none());
        // Only the cp1252 dash byte is repaired, and only in the CIC-IDS-2017 preset.
        assert!(normalise_label(b"bad \xff byte", true).is_none());
        assert!(normalise_label(b"Web Attack \x96 Brute Force", false).is_none());
        // Other presets only trim.
        let l = normalise_label(b" normal  x ", false).unwrap();
        assert_eq!(l.text, "normal  x");
    }
}
