//! Records in chunks, read on their own thread, and the column groups a chunk is processed in.
//!
//! Both passes see the input as a sequence of [`Piece`]s: chunks of up to [`CHUNK_ROWS`]
//! consecutive records of one file, stored flat (one byte buffer, one end offset per field), and
//! an end-of-file marker with the file's record count. A reader thread decompresses and splits
//! the CSV while the pass works on the previous chunk, and an input whose chunks fit the memory
//! budget is kept after pass 1 and replayed to pass 2 instead of being read and parsed again.
//!
//! Within a chunk the per-column work (UTF-8 check, number parsing, statistics, Arrow values) is
//! split over threads by contiguous column ranges. Each column's state is only ever touched by
//! the thread that owns its range, in row order, so every result is the same as a serial run's
//! whatever the thread count; the decisions that need a whole row (dropping it, duplicates, the
//! quantile sample) are made between the column phases on one thread.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, sync_channel};

use indicatif::ProgressBar;

use super::input::RawRow;
use super::plan::Plan;
use super::scan::{check_width, open_rows};
use crate::error::{Error, Result};

/// Records per chunk: enough that hand-offs between threads cost nothing, few enough that a
/// chunk's fields stay in the cache while its column groups go over them.
const CHUNK_ROWS: usize = 4096;
/// A chunk is also closed at this many bytes of field text, so wide or long-text inputs do not
/// make huge chunks (and field offsets fit in `u32`).
const CHUNK_BYTES: usize = 16 << 20;
/// Chunks in flight between the reader thread and the pass: bounds the reader's lead.
const CHANNEL_CHUNKS: usize = 2;

/// The feature fields of a chunk's records, back to back: checked as UTF-8 once for the whole
/// chunk, so that the usual all-valid input needs no check per field.
#[derive(Debug)]
enum Text {
    Valid(String),
    /// Some field is not UTF-8: fields are checked one by one (and the bad one reported).
    Raw(Vec<u8>),
}

impl Text {
    fn bytes(&self) -> &[u8] {
        match self {
            Text::Valid(s) => s.as_bytes(),
            Text::Raw(b) => b,
        }
    }
}

/// Consecutive records of one file (width already checked), holding what the passes read: the
/// feature fields and the label. Dropped columns are not kept.
#[derive(Debug)]
pub(super) struct Chunk {
    /// Index of the file in the inputs.
    pub file: usize,
    /// Feature fields per record.
    features: usize,
    text: Text,
    /// End offset in `text` of each feature field, `features` per record.
    ends: Vec<u32>,
    labels: Vec<u8>,
    label_ends: Vec<u32>,
    /// Physical line number where each record starts.
    pub lines: Vec<u64>,
    /// Input bytes (as the progress bar counts them) read for this chunk, so that a replay of
    /// kept chunks advances the bar like a read would.
    input_bytes: u64,
    /// Per feature, each record's numeric value as pass 1 counted it in the statistics (NaN
    /// where it counted none, or the record was not kept); empty until pass 1 attaches them to
    /// a chunk it keeps.
    values: Vec<Vec<f64>>,
}

/// The longest field a flow record may hold: flow features are numbers and short names; a
/// longer field is binary data or a broken quote that swallowed the rest of the file.
pub(super) const MAX_FIELD_BYTES: usize = 1 << 20;

/// Refuses a field no CSV of flows holds: a NUL byte (binary data) or more than
/// [`MAX_FIELD_BYTES`]; the error names file, line and field (1-based column number).
fn check_field(field: &[u8], column: usize, label: usize, line: u64, path: &Path) -> Result<()> {
    let what = |m: String| Error::Csv {
        path: path.to_path_buf(),
        line,
        message: format!(
            "field {}{} {m}",
            column + 1,
            if column == label { " (the label)" } else { "" }
        ),
    };
    if field.len() > MAX_FIELD_BYTES {
        return Err(what(format!(
            "is {} bytes long, over the {} MiB a flow field may have (binary data, or an \
             unclosed quote?)",
            field.len(),
            MAX_FIELD_BYTES >> 20
        )));
    }
    if field.contains(&0) {
        return Err(what("holds a NUL byte: binary data, not CSV text".into()));
    }
    Ok(())
}

/// A chunk being filled by the reader.
struct Filling {
    chunk: Chunk,
    data: Vec<u8>,
}

impl Filling {
    fn new(file: usize, features: usize) -> Self {
        Self {
            chunk: Chunk {
                file,
                features,
                text: Text::Raw(Vec::new()),
                ends: Vec::with_capacity(CHUNK_ROWS * features),
                labels: Vec::new(),
                label_ends: Vec::with_capacity(CHUNK_ROWS),
                lines: Vec::with_capacity(CHUNK_ROWS),
                input_bytes: 0,
                values: Vec::new(),
            },
            data: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.chunk.lines.len()
    }

    fn full(&self) -> bool {
        self.len() >= CHUNK_ROWS || self.data.len() >= CHUNK_BYTES
    }

    /// Appends a record's feature fields (source columns `features`) and its label.
    fn push(
        &mut self,
        rec: RawRow<'_>,
        features: &[usize],
        label: usize,
        line: u64,
        path: &Path,
    ) -> Result<()> {
        let too_long = || Error::Csv {
            path: path.to_path_buf(),
            line,
            message: "a record longer than 4 GiB".into(),
        };
        let c = &mut self.chunk;
        for &f in features {
            let field = rec.get(f).unwrap_or_default();
            check_field(field, f, label, line, path)?;
            self.data.extend_from_slice(field);
            c.ends
                .push(u32::try_from(self.data.len()).map_err(|_| too_long())?);
        }
        let label_field = rec.get(label).unwrap_or_default();
        check_field(label_field, label, label, line, path)?;
        c.labels.extend_from_slice(label_field);
        c.label_ends
            .push(u32::try_from(c.labels.len()).map_err(|_| too_long())?);
        c.lines.push(line);
        Ok(())
    }

    fn finish(mut self, input_bytes: u64) -> Chunk {
        self.chunk.input_bytes = input_bytes;
        self.data.shrink_to_fit();
        self.chunk.text = match String::from_utf8(self.data) {
            Ok(s) => Text::Valid(s),
            Err(e) => Text::Raw(e.into_bytes()),
        };
        self.chunk
    }
}

impl Chunk {
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Memory the chunk holds, for the budget of kept chunks.
    fn bytes(&self) -> usize {
        self.text.bytes().len()
            + self.labels.capacity()
            + 4 * (self.ends.capacity() + self.label_ends.capacity())
            + 8 * self.lines.capacity()
            + 8 * self.values.iter().map(Vec::capacity).sum::<usize>()
    }

    /// Attaches pass 1's values (one vector per feature, one value per record), so that pass 2
    /// does not parse the same text again.
    pub fn set_values(&mut self, values: Vec<Vec<f64>>) {
        self.values = values;
    }

    /// Feature `k`'s value in record `r` as pass 1 counted it, if it counted a finite one.
    pub fn value(&self, k: usize, r: usize) -> Option<f64> {
        self.values
            .get(k)?
            .get(r)
            .copied()
            .filter(|v| v.is_finite())
    }

    /// Record `r` (`r < len()`).
    pub fn row(&self, r: usize) -> Row<'_> {
        let first = r * self.features;
        let before = |ends: &[u32], i: usize| match i.checked_sub(1) {
            Some(prev) => ends.get(prev).copied().unwrap_or(0),
            None => 0,
        };
        let label_start = before(&self.label_ends, r) as usize;
        let label_end = self.label_ends.get(r).map_or(label_start, |&e| e as usize);
        Row {
            text: &self.text,
            ends: self
                .ends
                .get(first..first + self.features)
                .unwrap_or_default(),
            start: before(&self.ends, first),
            label: self.labels.get(label_start..label_end).unwrap_or_default(),
        }
    }
}

/// One record of a chunk.
#[derive(Clone, Copy)]
pub(super) struct Row<'a> {
    text: &'a Text,
    ends: &'a [u32],
    /// Offset of the first feature field.
    start: u32,
    label: &'a [u8],
}

impl<'a> Row<'a> {
    fn range(&self, k: usize) -> Option<Range<usize>> {
        let end = *self.ends.get(k)?;
        let start = match k.checked_sub(1) {
            Some(prev) => *self.ends.get(prev)?,
            None => self.start,
        };
        Some(start as usize..end as usize)
    }

    /// Feature fields in the record.
    pub fn features(&self) -> usize {
        self.ends.len()
    }

    /// Feature field `k` (the `k`-th of the plan's features), `None` beyond them.
    pub fn feature(&self, k: usize) -> Option<&'a [u8]> {
        self.text.bytes().get(self.range(k)?)
    }

    /// Feature field `k` as text, when the chunk is valid UTF-8 and the field ends on character
    /// boundaries (else `None`: check the bytes with [`Row::feature`]).
    pub fn feature_str(&self, k: usize) -> Option<&'a str> {
        match self.text {
            Text::Valid(s) => s.get(self.range(k)?),
            Text::Raw(_) => None,
        }
    }

    /// The raw label field.
    pub fn label(&self) -> &'a [u8] {
        self.label
    }
}

/// What the passes are fed, in input order.
#[derive(Debug)]
pub(super) enum Piece {
    Rows(Chunk),
    /// File `file` is read to the end; it held `rows` records after its header.
    FileEnd {
        file: usize,
        rows: u64,
    },
}

/// Reads every input on a second thread and hands its pieces to `each` on this one, in order.
/// The first error, the reader's or `each`'s, stops both and is returned.
pub(super) fn stream(
    inputs: &[PathBuf],
    plan: &Plan,
    bar: &ProgressBar,
    mut each: impl FnMut(Piece) -> Result<()>,
) -> Result<()> {
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<Result<Piece>>(CHANNEL_CHUNKS);
        let reader = std::thread::Builder::new()
            .name("convert-read".into())
            .spawn_scoped(scope, move || read_all(inputs, plan, bar, &tx))
            .map_err(|e| Error::io("starting the CSV reader thread", e))?;
        let mut result = Ok(());
        for piece in rx.iter() {
            if let Err(e) = piece.and_then(&mut each) {
                result = Err(e);
                break;
            }
        }
        // The reader's next send fails once the receiver is gone, and it stops.
        drop(rx);
        // A panic in the reader is a bug; re-raise it here rather than lose it.
        if let Err(p) = reader.join() {
            std::panic::resume_unwind(p);
        }
        result
    })
}

/// The reader thread: every file's records in chunks, then its end marker. Returns when done, at
/// its first error (sent on), or when the receiver is gone.
fn read_all(inputs: &[PathBuf], plan: &Plan, bar: &ProgressBar, tx: &SyncSender<Result<Piece>>) {
    let first = inputs
        .first()
        .map(PathBuf::as_path)
        .unwrap_or(Path::new(""));
    let features = plan.features();
    for (file, path) in inputs.iter().enumerate() {
        let read = || -> Result<bool> {
            let mut records = open_rows(path, first, plan, bar)?;
            let mut chunk = Filling::new(file, features.len());
            let mut rows = 0u64;
            let mut read_to = bar.position();
            let mut progress = || {
                let at = bar.position();
                at.saturating_sub(std::mem::replace(&mut read_to, at))
            };
            while let Some(line) = records.next_record()? {
                let rec = records.record();
                check_width(rec.len(), plan, path, line)?;
                chunk.push(rec, &features, plan.label, line, path)?;
                rows += 1;
                if chunk.full() {
                    let full = std::mem::replace(&mut chunk, Filling::new(file, features.len()));
                    if tx.send(Ok(Piece::Rows(full.finish(progress())))).is_err() {
                        return Ok(false);
                    }
                }
            }
            if chunk.len() > 0 && tx.send(Ok(Piece::Rows(chunk.finish(progress())))).is_err() {
                return Ok(false);
            }
            Ok(tx.send(Ok(Piece::FileEnd { file, rows })).is_ok())
        };
        match read() {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    }
}

/// Pieces kept after pass 1 while they fit the budget, to be replayed to the later passes.
pub(super) struct Kept {
    budget: usize,
    bytes: usize,
    /// `None` once the budget was exceeded: the input is read again.
    pieces: Option<Vec<Piece>>,
}

impl Kept {
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            bytes: 0,
            pieces: (budget > 0).then(Vec::new),
        }
    }

    pub fn keep(&mut self, piece: Piece) {
        if let Piece::Rows(c) = &piece {
            self.bytes += c.bytes();
        }
        if self.bytes > self.budget {
            self.pieces = None;
        } else if let Some(p) = self.pieces.as_mut() {
            p.push(piece);
        }
    }

    /// Whether pieces are still kept (the budget has not been exceeded so far).
    pub fn keeping(&self) -> bool {
        self.pieces.is_some()
    }

    /// The whole input, when it fit.
    pub fn pieces(&self) -> Option<&[Piece]> {
        self.pieces.as_deref()
    }
}

/// Feeds the kept pieces to `each` when the input fit the budget, else reads it again.
pub(super) fn replay(
    kept: &Kept,
    inputs: &[PathBuf],
    plan: &Plan,
    bar: &ProgressBar,
    mut each: impl FnMut(&Piece) -> Result<()>,
) -> Result<()> {
    match kept.pieces() {
        Some(pieces) => pieces.iter().try_for_each(|piece| {
            if let Piece::Rows(chunk) = piece {
                bar.inc(chunk.input_bytes);
            }
            each(piece)
        }),
        None => stream(inputs, plan, bar, |p| each(&p)),
    }
}

/// Splits `0..n` into at most `threads` contiguous ranges of near-equal length (none empty).
pub(super) fn ranges(n: usize, threads: usize) -> Vec<Range<usize>> {
    let parts = threads.clamp(1, n.max(1));
    (0..parts)
        .map(|i| (i * n / parts)..((i + 1) * n / parts))
        .filter(|r| !r.is_empty())
        .collect()
}

/// Runs `f` on every group, the first on this thread and the others on scoped threads, and
/// returns the results in group order.
pub(super) fn on_groups<G: Send, T: Send>(groups: Vec<G>, f: impl Fn(G) -> T + Sync) -> Vec<T> {
    if groups.len() <= 1 {
        return groups.into_iter().map(&f).collect();
    }
    let f = &f;
    std::thread::scope(|scope| {
        let mut groups = groups.into_iter();
        let first = groups.next();
        let handles: Vec<_> = groups.map(|g| scope.spawn(move || f(g))).collect();
        let mut out: Vec<T> = first.into_iter().map(f).collect();
        for h in handles {
            match h.join() {
                Ok(t) => out.push(t),
                // A panic in a group is a bug; re-raise it on this thread rather than lose it.
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        out
    })
}

/// Splits `items` into consecutive mutable pieces of the lengths of `ranges` (what `ranges`
/// returned for `items.len()`), one per column group.
pub(super) fn split_by<'a, T>(mut items: &'a mut [T], ranges: &[Range<usize>]) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let (mine, rest) = items.split_at_mut(r.len().min(items.len()));
        items = rest;
        out.push(mine);
    }
    out
}

/// An error a column group found, with its (row, column) position in the chunk.
pub(super) type GroupError = (usize, usize, Error);

/// The groups' results in order, or the earliest error any group found, by (row, column)
/// position: the one a serial pass would have stopped at.
pub(super) fn all_ok<T>(results: Vec<std::result::Result<T, GroupError>>) -> Result<Vec<T>> {
    let mut done = Vec::with_capacity(results.len());
    let mut first: Option<GroupError> = None;
    for r in results {
        match r {
            Ok(t) => done.push(t),
            Err(e) if first.as_ref().is_none_or(|f| (e.0, e.1) < (f.0, f.1)) => first = Some(e),
            Err(_) => {}
        }
    }
    match first {
        Some((_, _, e)) => Err(e),
        None => Ok(done),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_everything_once() {
        for n in [0, 1, 5, 41, 82] {
            for t in [1, 2, 3, 16, 100] {
                let r = ranges(n, t);
                assert!(r.len() <= t.max(1));
                let all: Vec<usize> = r.iter().cloned().flatten().collect();
                assert_eq!(all, (0..n).collect::<Vec<_>>(), "n={n} t={t}");
            }
        }
    }

    #[test]
    fn groups_return_in_order_and_the_earliest_error_wins() {
        let out = on_groups((0..5).collect(), |g: usize| g * 10);
        assert_eq!(out, [0, 10, 20, 30, 40]);
        let e = |n: &str| Error::InvalidOptions { reason: n.into() };
        let got = all_ok::<()>(vec![
            Err((3, 0, e("a"))),
            Err((1, 7, e("b"))),
            Err((1, 2, e("c"))),
        ])
        .unwrap_err();
        assert!(got.to_string().contains('c'), "{got}");
        assert_eq!(all_ok(vec![Ok::<_, GroupError>(1), Ok(2)]).unwrap(), [1, 2]);
        let mut items = [1, 2, 3, 4, 5];
        let pieces = split_by(&mut items, &ranges(5, 2));
        assert_eq!(pieces.iter().map(|p| p.len()).collect::<Vec<_>>(), [2, 3]);
    }
}
