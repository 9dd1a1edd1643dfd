//! Loading the three datasets of an evaluation from any location (local path, file://, s3://, ...)
//! and aligning them on the training data's schema.
//!
//! Two layouts are accepted: a `convert` dataset (`dataset.json` + parts) and a `sample` output
//! (`_sample.json` + parts with a boolean `synthetic` column). From a sample output the synthetic
//! role takes the generated rows and the real roles take the copied real rows, so
//! `--synthetic augmented/` works whether or not the sampling job appended the real data.

use std::borrow::Cow;
use std::collections::HashMap;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use flowsynth_common::manifest::{
    ColumnInfo, ColumnRole, DType, DatasetManifest, DropReason, ImageView, SAMPLE_MANIFEST_NAME,
    SYNTHETIC_COLUMN, SampleManifest,
};
use flowsynth_common::store::{Location, block_on};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::{Error, Result};
use crate::frame::{ColumnSpec, Frame, Kind, Schema, Values};

/// Which rows of a dataset an evaluation input stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Real rows: all rows of a `convert` dataset, the non-synthetic rows of a sample output.
    Real,
    /// Generated rows: all rows of a `convert` dataset, the synthetic rows of a sample output.
    Synthetic,
}

/// The aligned inputs of one evaluation.
#[derive(Debug, Clone)]
pub struct Datasets {
    pub schema: Schema,
    pub train: Frame,
    pub test: Frame,
    pub synthetic: Frame,
    /// What a reader should know about the inputs (values unseen in training, rows skipped).
    pub notes: Vec<String>,
    /// The synthetic rows' image layout, when a multimodal model made them.
    pub image_view: Option<ImageView>,
    /// Vocabulary size of each schema column after the training data (0 for numerics).
    pub train_vocab: Vec<usize>,
}

/// Column layout and parts of a dataset, whichever manifest described it.
struct Described {
    label: String,
    columns: Vec<ColumnInfo>,
    /// (relative path, holds synthetic rows); `None` = per-row flag unknown (a `convert` dataset).
    parts: Vec<(String, Option<bool>)>,
    /// Columns `convert` dropped because every row held one value, with that value: a dataset
    /// converted on its own (a test split, a small slice) may lose a column the training data
    /// kept, and its rows still have a well-defined value there.
    constants: HashMap<String, String>,
    /// A multimodal model's image layout (sample outputs of such a model only).
    image_view: Option<ImageView>,
}

fn describe(loc: &Location) -> Result<Described> {
    if let Some((bytes, name)) = block_on(flowsynth_common::dataset::find_manifest(loc))? {
        let m = DatasetManifest::from_json(&bytes, &loc.display(name))?;
        return Ok(Described {
            label: m.label_column.clone(),
            parts: m.parts.iter().map(|p| (p.path.clone(), None)).collect(),
            constants: m
                .dropped_columns
                .iter()
                .filter_map(|d| match &d.reason {
                    DropReason::Constant { value } => Some((d.name.clone(), value.clone())),
                    _ => None,
                })
                .collect(),
            columns: m.columns,
            image_view: None,
        });
    }
    if let Some(bytes) = block_on(loc.get_opt(SAMPLE_MANIFEST_NAME))? {
        let m: SampleManifest =
            serde_json::from_slice(&bytes).map_err(|source| Error::Manifest {
                location: loc.url().to_string(),
                file: SAMPLE_MANIFEST_NAME.into(),
                source,
            })?;
        return Ok(Described {
            label: m.label_column,
            parts: m
                .parts
                .iter()
                .map(|p| (p.path.clone(), Some(p.synthetic)))
                .collect(),
            constants: HashMap::new(),
            columns: m.columns,
            image_view: m.image_view,
        });
    }
    Err(Error::NotADataset {
        location: loc.url().to_string(),
    })
}

/// Builds the shared schema from the training dataset's columns.
fn schema_of(d: &Described) -> Schema {
    let columns = d
        .columns
        .iter()
        .filter_map(|c| match c.role {
            ColumnRole::Numeric => Some(ColumnSpec {
                name: c.name.clone(),
                kind: Kind::Numeric {
                    integer: c.dtype == DType::Int64,
                },
            }),
            ColumnRole::Categorical => Some(ColumnSpec {
                name: c.name.clone(),
                kind: Kind::Categorical {
                    vocabulary: c.vocabulary.clone().unwrap_or_default(),
                },
            }),
            ColumnRole::Label => None,
        })
        .collect();
    let classes = d
        .columns
        .iter()
        .find(|c| c.role == ColumnRole::Label)
        .and_then(|c| c.vocabulary.clone())
        .unwrap_or_default();
    Schema {
        columns,
        label: d.label.clone(),
        classes,
    }
}

/// Incremental coder of categorical values and class names against the growing schema.
struct Coder {
    columns: Vec<HashMap<String, u32>>,
    classes: HashMap<String, u32>,
}

impl Coder {
    fn new(schema: &Schema) -> Self {
        let columns = schema
            .columns
            .iter()
            .map(|c| match &c.kind {
                Kind::Categorical { vocabulary } => vocabulary
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (v.clone(), i as u32))
                    .collect(),
                Kind::Numeric { .. } => HashMap::new(),
            })
            .collect();
        let classes = schema
            .classes
            .iter()
            .enumerate()
            .map(|(i, v)| (v.clone(), i as u32))
            .collect();
        Coder { columns, classes }
    }

    fn class(&mut self, schema: &mut Schema, name: &str) -> u32 {
        if let Some(&c) = self.classes.get(name) {
            return c;
        }
        let c = schema.classes.len() as u32;
        schema.classes.push(name.to_string());
        self.classes.insert(name.to_string(), c);
        c
    }
}

/// Checks that `d` carries every schema column with the same kind and the same label column.
fn check_columns(schema: &Schema, d: &Described, dataset: &str) -> Result<()> {
    if d.label != schema.label {
        return Err(Error::LabelColumn {
            dataset: dataset.into(),
            found: d.label.clone(),
            expected: schema.label.clone(),
        });
    }
    for spec in &schema.columns {
        let Some(info) = d.columns.iter().find(|c| c.name == spec.name) else {
            match d.constants.get(&spec.name) {
                Some(value) if !spec.is_numeric() || value.trim().parse::<f64>().is_ok() => {
                    continue;
                }
                _ => {
                    return Err(Error::MissingColumn {
                        dataset: dataset.into(),
                        column: spec.name.clone(),
                    });
                }
            }
        };
        // Roles may differ between datasets converted separately (`convert` models a 0/1
        // integer column as a two-way category, and a slice may hold only 0 and 1 where the
        // training data has counts): values are read in the training data's role, which only
        // fails for text where the training data has numbers.
        if spec.is_numeric() && info.dtype == DType::String {
            return Err(Error::ColumnKind {
                dataset: dataset.into(),
                column: spec.name.clone(),
                found: "text".into(),
                expected: "numeric".into(),
            });
        }
    }
    Ok(())
}

fn column<'a>(batch: &'a RecordBatch, name: &str, location: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| Error::Parquet {
        location: location.into(),
        reason: format!("column `{name}` (from the manifest) is missing"),
    })
}

/// The value at `i` of a string-like or integer column, as text.
/// Borrowed for string columns, so coding a categorical value allocates nothing.
fn text_at(array: &ArrayRef, i: usize) -> Option<Cow<'_, str>> {
    if array.is_null(i) {
        return None;
    }
    match array.data_type() {
        DataType::Utf8 => Some(Cow::Borrowed(array.as_string::<i32>().value(i))),
        DataType::LargeUtf8 => Some(Cow::Borrowed(array.as_string::<i64>().value(i))),
        DataType::Utf8View => Some(Cow::Borrowed(array.as_string_view().value(i))),
        DataType::Int64 => Some(Cow::Owned(
            array.as_primitive::<Int64Type>().value(i).to_string(),
        )),
        DataType::Int32 => Some(Cow::Owned(
            array.as_primitive::<Int32Type>().value(i).to_string(),
        )),
        DataType::Float64 => {
            // A category stored as a float in one dataset and as an integer in another.
            let v = array.as_primitive::<Float64Type>().value(i);
            Some(Cow::Owned(if v.fract() == 0.0 && v.abs() < 9e15 {
                format!("{}", v as i64)
            } else {
                v.to_string()
            }))
        }
        _ => None,
    }
}

fn number_at(array: &ArrayRef, i: usize) -> Option<f64> {
    if array.is_null(i) {
        return None;
    }
    match array.data_type() {
        DataType::Float64 => Some(array.as_primitive::<Float64Type>().value(i)),
        DataType::Int64 => Some(array.as_primitive::<Int64Type>().value(i) as f64),
        DataType::Int32 => Some(array.as_primitive::<Int32Type>().value(i) as f64),
        _ => None,
    }
}

/// Reads the rows of `loc` that `role` selects, coded against `schema` (which grows by the
/// categories and classes seen here for the first time).
fn read_frame(
    loc: &Location,
    d: &Described,
    role: Role,
    schema: &mut Schema,
    coder: &mut Coder,
) -> Result<Frame> {
    let mut frame = Frame::empty(schema);
    let mut row_base = 0usize;
    for (path, synthetic_part) in &d.parts {
        if let Some(s) = synthetic_part
            && *s != (role == Role::Synthetic)
        {
            continue;
        }
        let location = loc.display(path);
        let bytes = block_on(loc.get(path))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.with_batch_size(64 * 1024).build())
            .map_err(|e| Error::Parquet {
                location: location.clone(),
                reason: e.to_string(),
            })?;
        for batch in reader {
            let batch = batch.map_err(|e| Error::Parquet {
                location: location.clone(),
                reason: e.to_string(),
            })?;
            append_batch(
                &batch,
                &location,
                synthetic_part.is_some().then_some(role),
                schema,
                coder,
                &mut frame,
                &d.constants,
                row_base,
            )?;
            row_base += batch.num_rows();
        }
    }
    Ok(frame)
}

#[allow(clippy::too_many_arguments)]
fn append_batch(
    batch: &RecordBatch,
    location: &str,
    row_filter: Option<Role>,
    schema: &mut Schema,
    coder: &mut Coder,
    frame: &mut Frame,
    constants: &HashMap<String, String>,
    row_base: usize,
) -> Result<()> {
    let keep: Vec<usize> = match row_filter {
        None => (0..batch.num_rows()).collect(),
        Some(role) => {
            let flags = column(batch, SYNTHETIC_COLUMN, location)?;
            let flags = flags.as_boolean_opt().ok_or_else(|| Error::Parquet {
                location: location.into(),
                reason: format!("column `{SYNTHETIC_COLUMN}` is not boolean"),
            })?;
            (0..batch.num_rows())
                .filter(|&i| flags.is_valid(i) && flags.value(i) == (role == Role::Synthetic))
                .collect()
        }
    };
    for j in 0..schema.columns.len() {
        let name = schema.columns[j].name.clone();
        if batch.column_by_name(&name).is_none()
            && let Some(value) = constants.get(&name)
        {
            fill_constant(schema, coder, frame, j, value, keep.len());
            continue;
        }
        let array = column(batch, &name, location)?;
        let bad = |i: usize| Error::Parquet {
            location: location.into(),
            reason: format!(
                "column `{name}` row {}: null or of unsupported type {}",
                row_base + i,
                array.data_type()
            ),
        };
        if schema.columns[j].is_numeric() {
            let mut out = Vec::with_capacity(keep.len());
            for &i in &keep {
                let v = number_at(array, i).ok_or_else(|| bad(i))?;
                if !v.is_finite() {
                    return Err(Error::NonFinite {
                        dataset: location.into(),
                        column: name.clone(),
                        row: row_base + i,
                        value: v,
                    });
                }
                out.push(v);
            }
            if let Values::Numeric(x) = &mut frame.columns[j] {
                x.extend(out);
            }
        } else {
            let mut out = Vec::with_capacity(keep.len());
            for &i in &keep {
                let v = text_at(array, i).ok_or_else(|| bad(i))?;
                out.push(schema.code(&mut coder.columns, j, &v));
            }
            if let Values::Categorical(x) = &mut frame.columns[j] {
                x.extend(out);
            }
        }
    }
    let label_name = schema.label.clone();
    let labels = column(batch, &label_name, location)?;
    for &i in &keep {
        let v = text_at(labels, i).ok_or_else(|| Error::Parquet {
            location: location.into(),
            reason: format!("label column `{label_name}` row {}: null", row_base + i),
        })?;
        frame.labels.push(coder.class(schema, &v));
    }
    Ok(())
}

/// Appends `n` copies of a dropped constant column's value (checked parseable by
/// `check_columns`).
fn fill_constant(
    schema: &mut Schema,
    coder: &mut Coder,
    frame: &mut Frame,
    j: usize,
    value: &str,
    n: usize,
) {
    if schema.columns[j].is_numeric() {
        let v = value.trim().parse::<f64>().unwrap_or(f64::NAN);
        if let Values::Numeric(x) = &mut frame.columns[j] {
            x.extend(std::iter::repeat_n(v, n));
        }
    } else {
        let c = schema.code(&mut coder.columns, j, value);
        if let Values::Categorical(x) = &mut frame.columns[j] {
            x.extend(std::iter::repeat_n(c, n));
        }
    }
}

/// Opens one input: its location and manifest.
fn open(url: &str) -> Result<(Location, Described)> {
    let loc = Location::parse(url)?;
    let d = describe(&loc)?;
    Ok((loc, d))
}

/// Notes for the schema columns `d` lacks but holds as dropped constants.
fn constant_notes(schema: &Schema, d: &Described, dataset: &str, notes: &mut Vec<String>) {
    for spec in &schema.columns {
        if !d.columns.iter().any(|c| c.name == spec.name)
            && let Some(v) = d.constants.get(&spec.name)
        {
            notes.push(format!(
                "{dataset}: column `{}` was dropped by convert as constant; its value `{v}` is used",
                spec.name
            ));
        }
    }
}

impl Datasets {
    /// Loads one more real dataset (a `--holdout`) against the schema, which grows by the values
    /// and classes it brings; the frames already loaded keep valid codes.
    pub fn load_real(&mut self, url: &str) -> Result<Frame> {
        let (loc, d) = open(url)?;
        check_columns(&self.schema, &d, url)?;
        constant_notes(&self.schema, &d, url, &mut self.notes);
        let mut coder = Coder::new(&self.schema);
        let frame = read_frame(&loc, &d, Role::Real, &mut self.schema, &mut coder)?;
        if frame.rows() == 0 {
            return Err(Error::Empty {
                dataset: url.into(),
                detail: " (holdout)".into(),
            });
        }
        Ok(frame)
    }
}

/// Loads and aligns `--train`, `--test` and `--synthetic`.
pub fn load_all(train: &str, test: &str, synthetic: &str) -> Result<Datasets> {
    let (train_loc, train_d) = open(train)?;
    let mut schema = schema_of(&train_d);
    let mut coder = Coder::new(&schema);
    let mut notes = Vec::new();
    let known_vocab = vocab_sizes(&schema);
    let known_classes = schema.classes.len();

    let train_frame = read_frame(&train_loc, &train_d, Role::Real, &mut schema, &mut coder)?;
    if train_frame.rows() == 0 {
        return Err(Error::Empty {
            dataset: train.into(),
            detail: " (training data)".into(),
        });
    }
    let (test_loc, test_d) = open(test)?;
    check_columns(&schema, &test_d, test)?;
    constant_notes(&schema, &test_d, test, &mut notes);
    let test_frame = read_frame(&test_loc, &test_d, Role::Real, &mut schema, &mut coder)?;
    if test_frame.rows() == 0 {
        return Err(Error::Empty {
            dataset: test.into(),
            detail: " (test data)".into(),
        });
    }
    let after_test_vocab = vocab_sizes(&schema);
    let after_test_classes = schema.classes.len();

    let (syn_loc, syn_d) = open(synthetic)?;
    check_columns(&schema, &syn_d, synthetic)?;
    constant_notes(&schema, &syn_d, synthetic, &mut notes);
    let syn_frame = read_frame(&syn_loc, &syn_d, Role::Synthetic, &mut schema, &mut coder)?;
    if syn_frame.rows() == 0 {
        return Err(Error::Empty {
            dataset: synthetic.into(),
            detail: " (no synthetic rows: a sample output written without generated rows?)".into(),
        });
    }

    // Say what the test and synthetic data hold that training never showed.
    let final_vocab = vocab_sizes(&schema);
    for (j, spec) in schema.columns.iter().enumerate() {
        if let Kind::Categorical { vocabulary } = &spec.kind {
            if after_test_vocab[j] > known_vocab[j] {
                notes.push(format!(
                    "test data has {} value(s) of `{}` absent from training: {}",
                    after_test_vocab[j] - known_vocab[j],
                    spec.name,
                    vocabulary[known_vocab[j]..after_test_vocab[j]].join(", ")
                ));
            }
            if final_vocab[j] > after_test_vocab[j] {
                notes.push(format!(
                    "synthetic data has {} value(s) of `{}` seen in neither real split: {}",
                    final_vocab[j] - after_test_vocab[j],
                    spec.name,
                    vocabulary[after_test_vocab[j]..].join(", ")
                ));
            }
        }
    }
    if after_test_classes > known_classes {
        notes.push(format!(
            "test data has {} class(es) absent from training (no detector can predict them): {}",
            after_test_classes - known_classes,
            schema.classes[known_classes..after_test_classes].join(", ")
        ));
    }
    if schema.classes.len() > after_test_classes {
        notes.push(format!(
            "synthetic data has class(es) absent from both real splits: {}",
            schema.classes[after_test_classes..].join(", ")
        ));
    }
    // Frames read before the schema grew keep valid codes (vocabularies only append).
    Ok(Datasets {
        schema,
        train: train_frame,
        test: test_frame,
        synthetic: syn_frame,
        notes,
        image_view: syn_d.image_view,
        train_vocab: known_vocab,
    })
}

fn vocab_sizes(schema: &Schema) -> Vec<usize> {
    schema
        .columns
        .iter()
        .map(|c| match &c.kind {
            Kind::Categorical { vocabulary } => vocabulary.len(),
            Kind::Numeric { .. } => 0,
        })
        .collect()
}
