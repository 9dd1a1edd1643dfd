//! Pass 2 (Parquet parts in a local temporary directory) and publishing them to the destination.
//!
//! Parts are written locally first so that nothing reaches the destination before the whole
//! conversion has succeeded; the destination then receives the parts and, last, `dataset.json`.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Float64Builder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::SchemaRef;
use bytes::Bytes;
use indicatif::ProgressBar;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use parquet::arrow::ArrowWriter;
use sha2::{Digest, Sha256};

use super::plan::Plan;
use super::scan::{Cell, classify, field_text, open_rows, row_key, row_label};
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

struct PartWriter {
    writer: ArrowWriter<HashingFile>,
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
        let writer = ArrowWriter::try_new(
            sink,
            schema.clone(),
            Some(writer_properties(row_group_rows)),
        )
        .map_err(parquet_err(&file))?;
        Ok(Self {
            writer,
            file,
            name,
            rows: 0,
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        self.writer.write(batch).map_err(parquet_err(&self.file))
    }

    fn finish(mut self) -> Result<LocalPart> {
        self.writer.flush().map_err(parquet_err(&self.file))?;
        let row_groups: Vec<u64> = self
            .writer
            .flushed_row_groups()
            .iter()
            .map(|g| g.num_rows().max(0) as u64)
            .collect();
        let mut sink = self.writer.into_inner().map_err(parquet_err(&self.file))?;
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
}

/// Pass 2: re-reads the inputs, applies the same row cleaning as pass 1, and writes the kept rows
/// into parts under `dir`. Returns the parts and the rows kept per input file.
pub(super) fn write_parts(
    spec: &WriteSpec<'_>,
    dir: &Path,
    bar: &ProgressBar,
) -> Result<(Vec<LocalPart>, Vec<u64>)> {
    let plan = spec.plan;
    let batch_rows = spec.row_group_rows.clamp(1, 16_384);
    let mut builders: Vec<Builder> = spec.columns.iter().map(|c| Builder::new(c.conv)).collect();
    let mut in_batch = 0usize;
    let mut parts: Vec<LocalPart> = Vec::new();
    let mut part: Option<PartWriter> = None;
    let mut kept_per_file = Vec::with_capacity(spec.inputs.len());
    let mut seen: Option<std::collections::HashSet<u128>> = spec.dedup.then(Default::default);
    let first = spec
        .inputs
        .first()
        .map(PathBuf::as_path)
        .unwrap_or(Path::new(""));

    let flush = |builders: &mut Vec<Builder>,
                 part: &mut Option<PartWriter>,
                 parts: &mut Vec<LocalPart>|
     -> Result<()> {
        let arrays: Vec<ArrayRef> = builders.iter_mut().map(Builder::finish).collect();
        let batch =
            RecordBatch::try_new(spec.schema.clone(), arrays).map_err(|source| Error::Arrow {
                location: dir.display().to_string(),
                source,
            })?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if part.is_none() {
            *part = Some(PartWriter::create(
                dir,
                parts.len(),
                &spec.schema,
                spec.row_group_rows,
            )?);
        }
        if let Some(p) = part.as_mut() {
            p.write(&batch)?;
        }
        Ok(())
    };

    for path in spec.inputs {
        let mut records = open_rows(path, first, plan, bar)?;
        let mut kept = 0u64;
        let changed = |detail: String| Error::InputChanged {
            path: path.clone(),
            detail,
        };
        while let Some(line) = records.next_record()? {
            let rec = records.record();
            let label = row_label(rec, plan, path, line)?;
            if label.text.is_empty() {
                continue;
            }
            if spec.policy == NonFinitePolicy::Drop {
                let mut drop = false;
                for (&c, _) in spec.features.iter().zip(spec.numeric).filter(|(_, n)| **n) {
                    if classify(field_text(rec, c, plan, path, line)?).is_non_finite() {
                        drop = true;
                        break;
                    }
                }
                if drop {
                    continue;
                }
            }
            if let Some(seen) = seen.as_mut()
                && !seen.insert(row_key(rec, spec.features, &label.text))
            {
                continue;
            }
            for (col, builder) in spec.columns.iter().zip(builders.iter_mut()) {
                let text: &str = if col.is_label {
                    &label.text
                } else {
                    field_text(rec, col.source, plan, path, line)?
                };
                let bad = || {
                    changed(format!(
                        "line {line}, column `{}`: `{text}` is not what the first pass read",
                        plan.name(col.source)
                    ))
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
            kept += 1;
            in_batch += 1;
            let part_rows = part.as_ref().map_or(0, |p| p.rows) + in_batch as u64;
            if in_batch >= batch_rows || part_rows >= spec.rows_per_part as u64 {
                flush(&mut builders, &mut part, &mut parts)?;
                in_batch = 0;
                if part_rows >= spec.rows_per_part as u64
                    && let Some(p) = part.take()
                {
                    parts.push(p.finish()?);
                }
            }
        }
        kept_per_file.push(kept);
    }
    flush(&mut builders, &mut part, &mut parts)?;
    if let Some(p) = part.take() {
        parts.push(p.finish()?);
    }
    Ok((parts, kept_per_file))
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
