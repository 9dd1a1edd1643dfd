//! Pass 2 (Parquet parts in a local temporary directory) and publishing them to the destination.
//!
//! Parts are written locally first so that nothing reaches the destination before the whole
//! conversion has succeeded; the destination then receives the parts and, last, `dataset.json`.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Float64Builder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::SchemaRef;
use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{ArrowColumnWriter, ArrowRowGroupWriterFactory, compute_leaves};
use parquet::file::writer::SerializedFileWriter;
use sha2::{Digest, Sha256};

use super::chunks::{Chunk, GroupError, Piece, all_ok, on_groups, ranges, split_by};
use super::plan::{Label, Plan};
use super::scan::{Cell, chunk_labels, classify, field_text, row_key};
use crate::error::{Error, Result};
use crate::manifest::{LEGACY_MANIFEST_NAME, MANIFEST_NAME, NonFinitePolicy, PartInfo};
use crate::store::{Location, MULTIPART_THRESHOLD};
use crate::table::writer_properties;

/// How one kept column's text becomes a Parquet value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Conv {
    /// int64 (numeric counters, 0/1 flags, integer labels): the integer literal; a non-finite
    /// feature value (Zero policy) is 0.
    Int,
    /// float64; a non-finite value (Zero policy) is 0.
    Float,
    /// Categorical or label string.
    Str,
}

/// A kept column: its source position, conversion, and whether it is the label.
#[derive(Debug, Clone, Copy)]
pub(super) struct OutColumn {
    pub source: usize,
    pub conv: Conv,
    pub is_label: bool,
}

enum Builder {
    Int(Int64Builder),
    Float(Float64Builder),
    Str(StringBuilder),
}

impl Builder {
    fn new(conv: Conv) -> Self {
        match conv {
            Conv::Int => Builder::Int(Int64Builder::new()),
            Conv::Float => Builder::Float(Float64Builder::new()),
            Conv::Str => Builder::Str(StringBuilder::new()),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Int(b) => Arc::new(b.finish()),
            Builder::Float(b) => Arc::new(b.finish()),
            Builder::Str(b) => Arc::new(b.finish()),
        }
    }
}

/// A file writer that hashes and counts what passes through it, so a part's sha256 and size
/// need no second read.
struct HashingFile {
    file: BufWriter<File>,
    hasher: Sha256,
    bytes: u64,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        if let Some(done) = buf.get(..n) {
            self.hasher.update(done);
        }
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// A part written to the local temporary directory.
#[derive(Debug, Clone)]
pub(super) struct LocalPart {
    pub file: PathBuf,
    pub info: PartInfo,
}

/// One part being written. Columns are encoded and compressed in parallel (contiguous column
/// ranges per thread, as [`ArrowColumnWriter`] allows); the encoded column chunks are then
/// appended in order, so the file is the one `ArrowWriter` writes with the same settings.
struct PartWriter {
    writer: SerializedFileWriter<HashingFile>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    /// The open row group's column writers and its rows so far.
    group: Option<(Vec<ArrowColumnWriter>, usize)>,
    row_group_rows: usize,
    file: PathBuf,
    name: String,
    rows: u64,
}

fn parquet_err(location: &Path) -> impl Fn(parquet::errors::ParquetError) -> Error + '_ {
    move |source| Error::Parquet {
        location: location.display().to_string(),
        source,
    }
}

impl PartWriter {
    fn create(dir: &Path, index: usize, schema: &SchemaRef, row_group_rows: usize) -> Result<Self> {
        let name = format!("part-{index:05}.parquet");
        let file = dir.join(&name);
        let f = File::create(&file)
            .map_err(|e| Error::io(format!("creating {}", file.display()), e))?;
        let sink = HashingFile {
            file: BufWriter::with_capacity(1 << 20, f),
            hasher: Sha256::new(),
            bytes: 0,
        };
        // Through `ArrowWriter` so that the file carries the same metadata (the Arrow schema)
        // as one it writes.
        let (writer, factory) = ArrowWriter::try_new(
            sink,
            schema.clone(),
            Some(writer_properties(row_group_rows)),
        )
        .and_then(ArrowWriter::into_serialized_writer)
        .map_err(parquet_err(&file))?;
        Ok(Self {
            writer,
            factory,
            schema: schema.clone(),
            group: None,
            row_group_rows: row_group_rows.max(1),
            file,
            name,
            rows: 0,
        })
    }

    /// Encodes `batch` into the open row group (opened if needed), closing the group when it is
    /// full. A batch never spans two row groups (the caller cuts batches at their boundaries).
    fn write(&mut self, batch: &RecordBatch, ranges: &[Range<usize>]) -> Result<()> {
        let location = self.file.clone();
        let err = parquet_err(&location);
        let (writers, rows) = match self.group.as_mut() {
            Some(g) => g,
            None => {
                let index = self.writer.flushed_row_groups().len();
                let writers = self.factory.create_column_writers(index).map_err(&err)?;
                self.group.insert((writers, 0))
            }
        };
        let fields = self.schema.fields();
        let groups: Vec<_> = ranges
            .iter()
            .cloned()
            .zip(split_by(writers, ranges))
            .collect();
        let encoded = on_groups(groups, |(range, writers)| {
            for (i, w) in range.zip(writers.iter_mut()) {
                let (Some(field), Some(array)) = (fields.get(i), batch.columns().get(i)) else {
                    continue;
                };
                for leaf in compute_leaves(field, array)? {
                    w.write(&leaf)?;
                }
            }
            Ok(())
        });
        for e in encoded {
            e.map_err(&err)?;
        }
        *rows += batch.num_rows();
        self.rows += batch.num_rows() as u64;
        if *rows >= self.row_group_rows {
            self.close_group(ranges)?;
        }
        Ok(())
    }

    /// Closes the open row group: the column writers finish their last pages in parallel, then
    /// the chunks are appended to the file in column order.
    fn close_group(&mut self, ranges: &[Range<usize>]) -> Result<()> {
        let Some((writers, _)) = self.group.take() else {
            return Ok(());
        };
        let err = parquet_err(&self.file);
        // `ranges` covers every column, so every writer lands in a group.
        let mut writers = writers.into_iter();
        let groups: Vec<Vec<ArrowColumnWriter>> = ranges
            .iter()
            .map(|range| writers.by_ref().take(range.len()).collect())
            .collect();
        let closed = on_groups(groups, |writers| {
            writers
                .into_iter()
                .map(ArrowColumnWriter::close)
                .collect::<parquet::errors::Result<Vec<_>>>()
        });
        let mut group = self.writer.next_row_group().map_err(&err)?;
        for chunks in closed {
            for chunk in chunks.map_err(&err)? {
                chunk.append_to_row_group(&mut group).map_err(&err)?;
            }
        }
        group.close().map_err(&err)?;
        Ok(())
    }

    fn finish(mut self, ranges: &[Range<usize>]) -> Result<LocalPart> {
        self.close_group(ranges)?;
        let location = self.file.clone();
        let err = parquet_err(&location);
        let row_groups: Vec<u64> = self
            .writer
            .flushed_row_groups()
            .iter()
            .map(|g| g.num_rows().max(0) as u64)
            .collect();
        let mut sink = self.writer.into_inner().map_err(&err)?;
        sink.flush()
            .map_err(|e| Error::io(format!("writing {}", self.file.display()), e))?;
        Ok(LocalPart {
            file: self.file,
            info: PartInfo {
                path: self.name,
                rows: self.rows,
                bytes: sink.bytes,
                sha256: hex::encode(sink.hasher.finalize()),
                row_groups,
            },
        })
    }
}

/// Integers below this magnitude are exact in `f64`.
const EXACT_INT: f64 = 9_007_199_254_740_992.0;

/// What pass 2 needs besides the plan.
pub(super) struct WriteSpec<'a> {
    pub inputs: &'a [PathBuf],
    pub plan: &'a Plan,
    /// Feature columns read from every row (source indices), as in pass 1.
    pub features: &'a [usize],
    /// The inferred type of each feature (numeric or not): decides non-finite row drops.
    pub numeric: &'a [bool],
    pub columns: &'a [OutColumn],
    pub schema: SchemaRef,
    pub policy: NonFinitePolicy,
    pub dedup: bool,
    pub rows_per_part: usize,
    pub row_group_rows: usize,
    pub threads: usize,
    /// Check numeric fields for non-finite values again (Drop policy). Not needed when pass 2
    /// replays exactly the records pass 1 saw and pass 1 dropped none for that reason.
    pub recheck_non_finite: bool,
}

/// Pass 2, fed the input piece by piece: applies the same row cleaning as pass 1 and writes the
/// kept rows into parts under `dir`.
pub(super) struct PartsWriter<'a> {
    spec: &'a WriteSpec<'a>,
    dir: &'a Path,
    /// Numeric features (feature index, source column): the ones a non-finite value drops a
    /// record for.
    numeric: Vec<(usize, usize)>,
    numeric_ranges: Vec<Range<usize>>,
    /// Feature index of each output column (unused for the label).
    out_features: Vec<usize>,
    out_ranges: Vec<Range<usize>>,
    batch_rows: usize,
    builders: Vec<Builder>,
    in_batch: usize,
    parts: Vec<LocalPart>,
    part: Option<PartWriter>,
    kept_per_file: Vec<u64>,
    rows_kept: u64,
    seen: Option<HashSet<u128>>,
}

impl<'a> PartsWriter<'a> {
    pub fn new(spec: &'a WriteSpec<'a>, dir: &'a Path) -> Self {
        let numeric: Vec<(usize, usize)> = spec
            .features
            .iter()
            .zip(spec.numeric)
            .enumerate()
            .filter(|(_, (_, n))| **n)
            .map(|(k, (&c, _))| (k, c))
            .collect();
        let out_features = spec
            .columns
            .iter()
            .map(|col| {
                spec.features
                    .iter()
                    .position(|&f| f == col.source)
                    .unwrap_or(usize::MAX)
            })
            .collect();
        Self {
            numeric_ranges: ranges(numeric.len(), spec.threads),
            numeric,
            out_features,
            out_ranges: ranges(spec.columns.len(), spec.threads),
            batch_rows: spec.row_group_rows.clamp(1, 16_384),
            builders: spec.columns.iter().map(|c| Builder::new(c.conv)).collect(),
            in_batch: 0,
            parts: Vec::new(),
            part: None,
            kept_per_file: Vec::with_capacity(spec.inputs.len()),
            rows_kept: 0,
            seen: spec.dedup.then(Default::default),
            spec,
            dir,
        }
    }

    pub fn feed(&mut self, piece: &Piece) -> Result<()> {
        match piece {
            Piece::Rows(chunk) => self.chunk(chunk),
            Piece::FileEnd { .. } => {
                self.kept_per_file.push(std::mem::take(&mut self.rows_kept));
                Ok(())
            }
        }
    }

    /// Writes what is left and closes the last part. Returns the parts and the rows kept per
    /// input file.
    pub fn finish(mut self) -> Result<(Vec<LocalPart>, Vec<u64>)> {
        self.flush()?;
        if let Some(p) = self.part.take() {
            self.parts.push(p.finish(&self.out_ranges)?);
        }
        Ok((self.parts, self.kept_per_file))
    }

    fn chunk(&mut self, chunk: &Chunk) -> Result<()> {
        let spec = self.spec;
        let plan = spec.plan;
        let path = spec
            .inputs
            .get(chunk.file)
            .map(PathBuf::as_path)
            .unwrap_or(Path::new(""));
        let (labels, label_error) = chunk_labels(chunk, plan, path);
        let rows = labels.len();

        // Records with a non-finite value in a numeric column (Drop policy), by column group.
        let mut bad = vec![false; rows];
        if spec.policy == NonFinitePolicy::Drop && spec.recheck_non_finite {
            let found = on_groups(self.numeric_ranges.clone(), |range| {
                let numeric = self.numeric.get(range).unwrap_or_default();
                let mut bad = vec![false; rows];
                for (r, (b, &line)) in bad.iter_mut().zip(&chunk.lines).enumerate() {
                    let rec = chunk.row(r);
                    for &(k, c) in numeric {
                        let text =
                            field_text(rec, k, c, plan, path, line).map_err(|e| (r, k, e))?;
                        if classify(text).is_non_finite() {
                            *b = true;
                            break;
                        }
                    }
                }
                Ok::<_, GroupError>(bad)
            });
            for g in all_ok(found)? {
                bad.iter_mut().zip(g).for_each(|(b, g)| *b |= g);
            }
        }
        if let Some(e) = label_error {
            return Err(e);
        }

        let mut kept: Vec<usize> = Vec::with_capacity(rows);
        for (r, label) in labels.iter().enumerate() {
            if label.text.is_empty() || bad.get(r).copied().unwrap_or(false) {
                continue;
            }
            if let Some(seen) = self.seen.as_mut()
                && !seen.insert(row_key(chunk.row(r), &label.text))
            {
                continue;
            }
            kept.push(r);
        }
        self.rows_kept += kept.len() as u64;

        // The kept records in runs that end at batch, row-group and part boundaries.
        let mut rest = kept.as_slice();
        while !rest.is_empty() {
            let part_rows = self.part.as_ref().map_or(0, |p| p.rows) as usize + self.in_batch;
            let group_room = spec.row_group_rows - part_rows % spec.row_group_rows;
            let room = (self.batch_rows - self.in_batch)
                .min(group_room)
                .min(spec.rows_per_part.saturating_sub(part_rows))
                .max(1);
            let (run, tail) = rest.split_at(room.min(rest.len()));
            rest = tail;
            self.append(chunk, path, &labels, run)?;
            self.in_batch += run.len();
            let part_rows = part_rows + run.len();
            if self.in_batch >= self.batch_rows
                || part_rows.is_multiple_of(spec.row_group_rows)
                || part_rows >= spec.rows_per_part
            {
                self.flush()?;
                if part_rows >= spec.rows_per_part
                    && let Some(p) = self.part.take()
                {
                    self.parts.push(p.finish(&self.out_ranges)?);
                }
            }
        }
        Ok(())
    }

    /// Appends records `run` of `chunk` to the column builders, by column group.
    fn append(
        &mut self,
        chunk: &Chunk,
        path: &Path,
        labels: &[Label<'_>],
        run: &[usize],
    ) -> Result<()> {
        let spec = self.spec;
        let plan = spec.plan;
        let groups: Vec<_> = split_by(&mut self.builders, &self.out_ranges)
            .into_iter()
            .zip(&self.out_ranges)
            .map(|(builders, range)| {
                (
                    range.start,
                    spec.columns.get(range.clone()).unwrap_or_default(),
                    self.out_features.get(range.clone()).unwrap_or_default(),
                    builders,
                )
            })
            .collect();
        let results = on_groups(groups, |(first, columns, features, builders)| {
            for &r in run {
                let (Some(&line), Some(label)) = (chunk.lines.get(r), labels.get(r)) else {
                    continue;
                };
                let rec = chunk.row(r);
                let cols = columns.iter().zip(features).zip(builders.iter_mut());
                for (j, ((col, &k), builder)) in cols.enumerate() {
                    // A number pass 1 counted (kept with the chunk) needs no second parse: the
                    // float as it is, an integer when it is exact (below 2^53).
                    if !col.is_label {
                        match (&mut *builder, chunk.value(k, r)) {
                            (Builder::Float(b), Some(v)) => {
                                b.append_value(v);
                                continue;
                            }
                            (Builder::Int(b), Some(v)) if v.abs() < EXACT_INT => {
                                b.append_value(v as i64);
                                continue;
                            }
                            _ => {}
                        }
                    }
                    let text: &str = if col.is_label {
                        &label.text
                    } else {
                        field_text(rec, k, col.source, plan, path, line)
                            .map_err(|e| (r, first + j, e))?
                    };
                    let bad = || {
                        let e = Error::InputChanged {
                            path: path.to_path_buf(),
                            detail: format!(
                                "line {line}, column `{}`: `{text}` is not what the first pass \
                                 read",
                                plan.name(col.source)
                            ),
                        };
                        (r, first + j, e)
                    };
                    match builder {
                        Builder::Int(b) => match text.parse::<i64>() {
                            Ok(v) => b.append_value(v),
                            // Zero policy (Drop removed such rows, Error stopped in pass 1).
                            Err(_) if !col.is_label && classify(text).is_non_finite() => {
                                b.append_value(0)
                            }
                            Err(_) => return Err(bad()),
                        },
                        Builder::Float(b) => match classify(text) {
                            Cell::Finite { v, .. } => b.append_value(v),
                            Cell::NonFinite | Cell::Missing if !col.is_label => b.append_value(0.0),
                            _ => return Err(bad()),
                        },
                        Builder::Str(b) => b.append_value(text),
                    }
                }
            }
            Ok(())
        });
        all_ok(results).map(drop)
    }

    /// Writes the builders' rows as one batch of the current part (opened if needed).
    fn flush(&mut self) -> Result<()> {
        let spec = self.spec;
        let arrays: Vec<ArrayRef> = self.builders.iter_mut().map(Builder::finish).collect();
        self.in_batch = 0;
        let batch =
            RecordBatch::try_new(spec.schema.clone(), arrays).map_err(|source| Error::Arrow {
                location: self.dir.display().to_string(),
                source,
            })?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let part = match self.part.as_mut() {
            Some(p) => p,
            None => self.part.insert(PartWriter::create(
                self.dir,
                self.parts.len(),
                &spec.schema,
                spec.row_group_rows,
            )?),
        };
        part.write(&batch, &self.out_ranges)
    }
}

/// True for names this converter gives its parts (`part-00000.parquet`), and only those: other
/// files at the destination are never touched.
fn is_part_name(name: &str) -> bool {
    name.strip_prefix("part-")
        .and_then(|s| s.strip_suffix(".parquet"))
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Uploads one local part, streaming large ones in multipart chunks so memory stays flat.
async fn upload(out: &Location, part: &LocalPart) -> Result<()> {
    let name = part.info.path.as_str();
    let read_err = |e| Error::io(format!("reading {}", part.file.display()), e);
    if part.info.bytes <= MULTIPART_THRESHOLD as u64 {
        let bytes = std::fs::read(&part.file).map_err(read_err)?;
        return out.put(name, Bytes::from(bytes)).await;
    }
    let store: &Arc<dyn ObjectStore> = out.store();
    let upload = store
        .put_multipart(&out.path(name))
        .await
        .map_err(|e| Error::store(out.display(name), e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, 8 * 1024 * 1024);
    let mut file = File::open(&part.file).map_err(read_err)?;
    let mut buf = vec![0u8; 8 * 1024 * 1024];
    let streamed: Result<()> = async {
        loop {
            let n = file.read(&mut buf).map_err(read_err)?;
            let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
                return Ok(());
            };
            writer
                .wait_for_capacity(4)
                .await
                .map_err(|e| Error::store(out.display(name), e))?;
            writer.write(chunk);
        }
    }
    .await;
    match streamed {
        Ok(()) => writer
            .finish()
            .await
            .map(|_| ())
            .map_err(|e| Error::store(out.display(name), e)),
        Err(e) => {
            let _ = writer.abort().await;
            Err(e)
        }
    }
}

/// Publishes the dataset: removes the dataset being replaced (manifest first, so no manifest
/// ever describes a half-replaced dataset), uploads the parts, writes `_dataset.json` last. On
/// failure the parts uploaded so far are deleted (best effort).
pub(super) async fn publish(
    out: &Location,
    parts: &[LocalPart],
    manifest: Bytes,
    overwrite: bool,
) -> Result<()> {
    if let Some(existing) = crate::dataset::existing_manifest(out).await? {
        if !overwrite {
            return Err(Error::DatasetExists {
                location: out.display(existing),
            });
        }
        for name in [MANIFEST_NAME, LEGACY_MANIFEST_NAME] {
            out.delete(name).await?;
        }
        for meta in out.list("").await? {
            let rel = out.relative(&meta.location);
            if is_part_name(&rel) {
                out.delete(&rel).await?;
            }
        }
    }
    // Parts whose upload was started: the ones to remove if anything fails.
    let mut started: Vec<&str> = Vec::new();
    let result: Result<()> = async {
        for part in parts {
            started.push(part.info.path.as_str());
            upload(out, part).await?;
        }
        if overwrite {
            out.put(MANIFEST_NAME, manifest).await
        } else if out.put_if_absent(MANIFEST_NAME, manifest).await? {
            Ok(())
        } else {
            // Another conversion committed here meanwhile; its manifest stays, ours goes.
            Err(Error::DatasetExists {
                location: out.display(MANIFEST_NAME),
            })
        }
    }
    .await;
    if let Err(e) = result {
        for name in started {
            if let Err(cleanup) = out.delete(name).await {
                tracing::warn!(
                    "could not remove {} after a failed upload: {cleanup}",
                    out.display(name)
                );
            }
        }
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_this_converters_part_names_are_recognised() {
        assert!(is_part_name("part-00000.parquet"));
        assert!(is_part_name("part-123456.parquet"));
        for other in [
            "part-0000-abc.snappy.parquet",
            "part-.parquet",
            "sub/part-00000.parquet",
            "dataset.json",
        ] {
            assert!(!is_part_name(other), "{other}");
        }
    }
}
