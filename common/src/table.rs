//! In-memory columnar rows in the model's layout, and their Parquet form.
//!
//! A [`Table`] holds a dataset's rows split the way the model sees them: numeric feature columns
//! as `f64`, categorical feature columns and the label as ordinal codes into the manifest's
//! vocabularies. Reading a Parquet part validates every value against the manifest, so a model
//! never sees a category it cannot embed.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use arrow_schema::DataType;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
pub use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{ChunkReader, Length};

use crate::error::{Error, Result};
use crate::manifest::{ColumnRole, DType, DatasetManifest};

/// Rows in the model's layout. All vectors have the same length.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    /// One vector per numeric feature column, in manifest order.
    pub numeric: Vec<Vec<f64>>,
    /// One vector per categorical feature column (manifest order): codes into its vocabulary.
    pub categorical: Vec<Vec<u32>>,
    /// Codes into the label vocabulary.
    pub labels: Vec<u32>,
}

impl Table {
    /// An empty table with the manifest's column counts.
    pub fn empty(layout: &Layout) -> Self {
        Self {
            numeric: vec![Vec::new(); layout.numeric.len()],
            categorical: vec![Vec::new(); layout.categorical.len()],
            labels: Vec::new(),
        }
    }

    pub fn rows(&self) -> usize {
        self.labels.len()
    }

    /// Appends all rows of `other` (same layout).
    pub fn append(&mut self, other: &Table) {
        for (a, b) in self.numeric.iter_mut().zip(&other.numeric) {
            a.extend_from_slice(b);
        }
        for (a, b) in self.categorical.iter_mut().zip(&other.categorical) {
            a.extend_from_slice(b);
        }
        self.labels.extend_from_slice(&other.labels);
    }

    /// Appends the rows `idx` of `other` (same layout), in that order.
    pub fn append_rows(&mut self, other: &Table, idx: &[usize]) {
        for (a, b) in self.numeric.iter_mut().zip(&other.numeric) {
            a.extend(idx.iter().map(|&i| b[i]));
        }
        for (a, b) in self.categorical.iter_mut().zip(&other.categorical) {
            a.extend(idx.iter().map(|&i| b[i]));
        }
        self.labels.extend(idx.iter().map(|&i| other.labels[i]));
    }

    /// Removes every row, keeping the columns' allocations for the next rows.
    pub fn clear(&mut self) {
        self.numeric.iter_mut().for_each(Vec::clear);
        self.categorical.iter_mut().for_each(Vec::clear);
        self.labels.clear();
    }

    /// Makes room for `rows` more rows in every column.
    pub fn reserve(&mut self, rows: usize) {
        self.numeric.iter_mut().for_each(|c| c.reserve(rows));
        self.categorical.iter_mut().for_each(|c| c.reserve(rows));
        self.labels.reserve(rows);
    }

    /// A 64-bit fingerprint of row `i`'s feature values (not its label): equal rows have equal
    /// fingerprints (0.0 and -0.0 count as equal), so exact copies can be found with a hash set.
    pub fn row_fingerprint(&self, i: usize) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for c in &self.numeric {
            // Adding 0.0 turns -0.0 into 0.0.
            (c[i] + 0.0).to_bits().hash(&mut h);
        }
        for c in &self.categorical {
            c[i].hash(&mut h);
        }
        h.finish()
    }

    /// Overwrites row `i` with row `j` of `other` (same layout).
    pub fn replace_row(&mut self, i: usize, other: &Table, j: usize) {
        for (a, b) in self.numeric.iter_mut().zip(&other.numeric) {
            a[i] = b[j];
        }
        for (a, b) in self.categorical.iter_mut().zip(&other.categorical) {
            a[i] = b[j];
        }
        self.labels[i] = other.labels[j];
    }

    /// The rows at `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> Table {
        Table {
            numeric: self
                .numeric
                .iter()
                .map(|c| idx.iter().map(|&i| c[i]).collect())
                .collect(),
            categorical: self
                .categorical
                .iter()
                .map(|c| idx.iter().map(|&i| c[i]).collect())
                .collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
        }
    }
}

/// Where the model's columns sit among the manifest's columns.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Indices into `manifest.columns` of the numeric features.
    pub numeric: Vec<usize>,
    /// Indices into `manifest.columns` of the categorical features.
    pub categorical: Vec<usize>,
    /// Index into `manifest.columns` of the label.
    pub label: usize,
    /// For each categorical feature, then the label: value -> code.
    codes: Vec<HashMap<String, u32>>,
}

impl Layout {
    pub fn new(manifest: &DatasetManifest) -> Result<Self> {
        let mut numeric = Vec::new();
        let mut categorical = Vec::new();
        let mut label = None;
        for (i, c) in manifest.columns.iter().enumerate() {
            match c.role {
                ColumnRole::Numeric => numeric.push(i),
                ColumnRole::Categorical => categorical.push(i),
                ColumnRole::Label => label = Some(i),
            }
        }
        let label = label.ok_or_else(|| Error::InvalidManifest {
            reason: "no label column".into(),
        })?;
        let mut codes = Vec::new();
        for &i in categorical.iter().chain(std::iter::once(&label)) {
            let c = &manifest.columns[i];
            let vocab = c
                .vocabulary
                .as_ref()
                .ok_or_else(|| Error::InvalidManifest {
                    reason: format!("column `{}` has no vocabulary", c.name),
                })?;
            codes.push(
                vocab
                    .iter()
                    .enumerate()
                    .map(|(k, v)| (v.clone(), k as u32))
                    .collect(),
            );
        }
        Ok(Self {
            numeric,
            categorical,
            label,
            codes,
        })
    }
}

fn arrow_err(location: &str) -> impl Fn(arrow_schema::ArrowError) -> Error + '_ {
    move |source| Error::Arrow {
        location: location.to_string(),
        source,
    }
}

fn parquet_err(location: &str) -> impl Fn(parquet::errors::ParquetError) -> Error + '_ {
    move |source| Error::Parquet {
        location: location.to_string(),
        source,
    }
}

/// Reads a Parquet part of the dataset (all row groups, or only `row_groups`) into a [`Table`].
/// `location` names the part in errors.
pub fn read_parquet(
    bytes: Bytes,
    manifest: &DatasetManifest,
    layout: &Layout,
    row_groups: Option<Vec<usize>>,
    location: &str,
) -> Result<Table> {
    let mut builder =
        ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(parquet_err(location))?;
    if let Some(groups) = row_groups {
        builder = builder.with_row_groups(groups);
    }
    read_batches(builder, manifest, layout, location)
}

/// The footer of a Parquet part (its schema and row groups), parsed once so that row groups
/// can later be read one byte range at a time ([`read_row_group`]).
pub fn part_metadata(bytes: &Bytes, location: &str) -> Result<ArrowReaderMetadata> {
    ArrowReaderMetadata::load(bytes, ArrowReaderOptions::new()).map_err(parquet_err(location))
}

/// The bytes of a part that row group `group` occupies (its column chunks).
pub fn row_group_span(
    metadata: &ArrowReaderMetadata,
    group: usize,
    location: &str,
) -> Result<std::ops::Range<u64>> {
    let invalid = |reason: String| Error::InvalidPart {
        location: location.to_string(),
        reason,
    };
    let rg = metadata
        .metadata()
        .row_groups()
        .get(group)
        .ok_or_else(|| invalid(format!("row group {group} does not exist")))?;
    let (mut start, mut end) = (u64::MAX, 0u64);
    for c in rg.columns() {
        let first = c.dictionary_page_offset().unwrap_or(c.data_page_offset());
        let (Ok(first), Ok(len)) = (u64::try_from(first), u64::try_from(c.compressed_size()))
        else {
            return Err(invalid(format!(
                "row group {group} has a column chunk at a negative offset or size"
            )));
        };
        start = start.min(first);
        end = end.max(first.saturating_add(len));
    }
    Ok(start.min(end)..end)
}

/// One byte range of a Parquet file held in memory, readable as the whole file (whose length
/// is `file_len`) as long as only that range is asked for: what reading a single row group
/// with already-parsed metadata needs.
#[derive(Debug, Clone)]
pub struct ByteRange {
    pub start: u64,
    pub bytes: Bytes,
    pub file_len: u64,
}

impl ByteRange {
    fn slice(&self, start: u64, len: usize) -> parquet::errors::Result<Bytes> {
        let from = start.checked_sub(self.start).map(|o| o as usize);
        match from {
            Some(from) if from.saturating_add(len) <= self.bytes.len() => {
                Ok(self.bytes.slice(from..from + len))
            }
            _ => Err(parquet::errors::ParquetError::General(format!(
                "bytes {start}..{} lie outside the range read ({}..{})",
                start.saturating_add(len as u64),
                self.start,
                self.start + self.bytes.len() as u64
            ))),
        }
    }
}

impl Length for ByteRange {
    fn len(&self) -> u64 {
        self.file_len
    }
}

impl ChunkReader for ByteRange {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        let rest = (self.start + self.bytes.len() as u64).saturating_sub(start);
        Ok(bytes::Buf::reader(self.slice(start, rest as usize)?))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.slice(start, length)
    }
}

/// Reads row group `group` of a part from the bytes it occupies ([`row_group_span`]) and the
/// part's parsed footer.
pub fn read_row_group(
    range: ByteRange,
    metadata: ArrowReaderMetadata,
    group: usize,
    manifest: &DatasetManifest,
    layout: &Layout,
    location: &str,
) -> Result<Table> {
    let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(range, metadata)
        .with_row_groups(vec![group]);
    read_batches(builder, manifest, layout, location)
}

fn read_batches<R: ChunkReader + 'static>(
    builder: ParquetRecordBatchReaderBuilder<R>,
    manifest: &DatasetManifest,
    layout: &Layout,
    location: &str,
) -> Result<Table> {
    let reader = builder
        .with_batch_size(64 * 1024)
        .build()
        .map_err(parquet_err(location))?;
    let mut table = Table::empty(layout);
    for batch in reader {
        let batch = batch.map_err(arrow_err(location))?;
        append_batch(&mut table, &batch, manifest, layout, location)?;
    }
    Ok(table)
}

fn column<'a>(batch: &'a RecordBatch, name: &str, location: &str) -> Result<&'a ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| Error::InvalidPart {
            location: location.to_string(),
            reason: format!("column `{name}` (from dataset.json) is missing"),
        })
}

fn append_batch(
    table: &mut Table,
    batch: &RecordBatch,
    manifest: &DatasetManifest,
    layout: &Layout,
    location: &str,
) -> Result<()> {
    for (k, &ci) in layout.numeric.iter().enumerate() {
        let name = &manifest.columns[ci].name;
        let col = column(batch, name, location)?;
        if col.null_count() > 0 {
            return Err(Error::InvalidPart {
                location: location.into(),
                reason: format!("numeric column `{name}` has nulls"),
            });
        }
        let out = &mut table.numeric[k];
        match col.data_type() {
            DataType::Float64 => out.extend(col.as_primitive::<Float64Type>().values().iter()),
            DataType::Int64 => out.extend(
                col.as_primitive::<Int64Type>()
                    .values()
                    .iter()
                    .map(|&v| v as f64),
            ),
            other => {
                return Err(Error::InvalidPart {
                    location: location.into(),
                    reason: format!("numeric column `{name}` has type {other}"),
                });
            }
        }
    }
    let coded = layout
        .categorical
        .iter()
        .enumerate()
        .map(|(k, &ci)| (ci, k, Some(k)))
        .chain(std::iter::once((
            layout.label,
            layout.categorical.len(),
            None,
        )));
    for (ci, code_idx, cat_slot) in coded {
        let name = &manifest.columns[ci].name;
        let col = column(batch, name, location)?;
        let codes = &layout.codes[code_idx];
        if col.null_count() > 0 {
            return Err(Error::InvalidPart {
                location: location.into(),
                reason: format!("column `{name}` has nulls"),
            });
        }
        // The column's type is resolved once; cells are looked up without allocating (int64
        // cells are formatted into one reused buffer, as vocabularies store them as text).
        let code = |text: &str| {
            codes.get(text).copied().ok_or_else(|| Error::InvalidPart {
                location: location.into(),
                reason: format!("column `{name}` holds `{text}`, which is not in its vocabulary"),
            })
        };
        let mut out = Vec::with_capacity(batch.num_rows());
        match col.data_type() {
            DataType::Utf8 => {
                for v in col.as_string::<i32>().iter().flatten() {
                    out.push(code(v)?);
                }
            }
            DataType::LargeUtf8 => {
                for v in col.as_string::<i64>().iter().flatten() {
                    out.push(code(v)?);
                }
            }
            DataType::Int64 => {
                let mut buf = String::new();
                for &v in col.as_primitive::<Int64Type>().values() {
                    buf.clear();
                    let _ = write!(buf, "{v}");
                    out.push(code(&buf)?);
                }
            }
            other => {
                return Err(Error::InvalidPart {
                    location: location.into(),
                    reason: format!("column `{name}` has type {other}"),
                });
            }
        }
        match cat_slot {
            Some(k) => table.categorical[k].extend(out),
            None => table.labels.extend(out),
        }
    }
    Ok(())
}

/// Parquet writer settings shared by `convert` and `sample`: zstd, one row group per
/// `row_group_rows` rows.
pub fn writer_properties(row_group_rows: usize) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .build()
}

/// Encodes rows as a Parquet file with the dataset's columns (same names, same dtypes) plus the
/// boolean `synthetic` column. Numeric values of `int64` columns are rounded; codes are mapped
/// back to their vocabulary values.
pub fn write_parquet(
    manifest: &DatasetManifest,
    layout: &Layout,
    table: &Table,
    synthetic: &[bool],
    row_group_rows: usize,
) -> Result<Bytes> {
    let location = "sampled output";
    if synthetic.len() != table.rows() {
        return Err(Error::InvalidPart {
            location: location.into(),
            reason: format!(
                "{} synthetic flags for {} rows",
                synthetic.len(),
                table.rows()
            ),
        });
    }
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(manifest.columns.len() + 1);
    for (ci, c) in manifest.columns.iter().enumerate() {
        let array: ArrayRef = if let Some(k) = layout.numeric.iter().position(|&x| x == ci) {
            let v = &table.numeric[k];
            match c.dtype {
                DType::Int64 => Arc::new(Int64Array::from_iter_values(
                    v.iter().map(|x| x.round() as i64),
                )),
                _ => Arc::new(Float64Array::from_iter_values(v.iter().copied())),
            }
        } else {
            let codes = if ci == layout.label {
                &table.labels
            } else {
                let k = layout
                    .categorical
                    .iter()
                    .position(|&x| x == ci)
                    .ok_or_else(|| Error::InvalidManifest {
                        reason: format!("column `{}` has no place in the layout", c.name),
                    })?;
                &table.categorical[k]
            };
            let vocab = c.vocabulary.as_deref().unwrap_or_default();
            let value = |code: u32| -> Result<&str> {
                vocab
                    .get(code as usize)
                    .map(String::as_str)
                    .ok_or_else(|| Error::InvalidPart {
                        location: location.into(),
                        reason: format!("code {code} outside the vocabulary of `{}`", c.name),
                    })
            };
            match c.dtype {
                DType::Int64 => {
                    let mut out = Vec::with_capacity(codes.len());
                    for &code in codes {
                        let s = value(code)?;
                        out.push(s.parse::<i64>().map_err(|_| Error::InvalidManifest {
                            reason: format!(
                                "int64 column `{}` has non-integer vocabulary value `{s}`",
                                c.name
                            ),
                        })?);
                    }
                    Arc::new(Int64Array::from(out))
                }
                _ => {
                    let mut out = Vec::with_capacity(codes.len());
                    for &code in codes {
                        out.push(value(code)?);
                    }
                    Arc::new(StringArray::from(out))
                }
            }
        };
        arrays.push(array);
    }
    arrays.push(Arc::new(BooleanArray::from(synthetic.to_vec())));
    let schema = manifest.sample_arrow_schema();
    debug_assert_eq!(schema.fields().len(), arrays.len());
    let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(arrow_err(location))?;
    let mut buf = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut buf, schema, Some(writer_properties(row_group_rows)))
            .map_err(parquet_err(location))?;
    writer.write(&batch).map_err(parquet_err(location))?;
    writer.close().map_err(parquet_err(location))?;
    Ok(Bytes::from(buf))
}
