//! Reading one input file as CSV records with their physical line numbers.
//!
//! Files are streamed: plain or gzip (recognised by the gzip magic bytes, so a compressed file
//! without a `.gz` name works too), a UTF-8 byte-order mark is removed, CRLF and LF endings are
//! both accepted and blank lines are skipped (csv-core skips empty lines; a line holding only
//! whitespace is skipped here). Records stay raw bytes: UTF-8 is checked per field by the caller,
//! which knows the column names an error must mention.
//!
//! Line numbers: the csv crate's record position is where the *previous* read stopped, which is
//! off by the skipped blank lines and by the `\n` of a CRLF pair that is still unread. So records
//! are terminated by `\n` only (a CR before it is removed from the last field by [`RawRow`]), and
//! the input always ends with a `\n`; then after each record exactly its own newlines have been
//! counted, and its first line is `line_after - 1 - newlines inside quoted fields`.

use std::fs::File;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use csv::ByteRecord;
use flate2::read::MultiGzDecoder;
use indicatif::ProgressBar;

use crate::error::{Error, Result};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const UTF8_BOM: [u8; 3] = [0xef, 0xbb, 0xbf];

/// Counts the bytes read from the file itself (compressed bytes for a gzip file), which is what
/// the progress bar's total is measured in.
struct Counting<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

type BoxRead = Box<dyn Read + Send>;

/// Reads up to `n` bytes (fewer only at end of input) and returns them with a reader that yields
/// those bytes again followed by the rest: a peek that works on any `Read`.
fn peek(mut reader: BoxRead, n: usize) -> std::io::Result<(Vec<u8>, BoxRead)> {
    let mut head = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match reader.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    head.truncate(got);
    Ok((head, reader))
}

/// Opens `path` as decoded text bytes: gunzipped if it starts with the gzip magic, BOM removed.
fn open_text(path: &Path, bar: &ProgressBar) -> Result<BoxRead> {
    let read_err = |source| Error::ReadFile {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let raw: BoxRead = Box::new(Counting {
        inner: file,
        bar: bar.clone(),
    });
    let (magic, rest) = peek(raw, GZIP_MAGIC.len()).map_err(read_err)?;
    let again: BoxRead = Box::new(Cursor::new(magic.clone()).chain(rest));
    let decoded: BoxRead = if magic == GZIP_MAGIC {
        // Multi-member: `cat a.gz b.gz` and bgzip output are valid gzip files too.
        Box::new(MultiGzDecoder::new(again))
    } else {
        again
    };
    let (bom, rest) = peek(decoded, UTF8_BOM.len()).map_err(read_err)?;
    let text: BoxRead = if bom == UTF8_BOM {
        rest
    } else {
        Box::new(Cursor::new(bom).chain(rest))
    };
    // A final newline, so that the last record is terminated like every other (see module doc);
    // an extra empty line is skipped.
    Ok(Box::new(text.chain(Cursor::new(b"\n"))))
}

/// One record as the CSV reader holds it. The last field loses a trailing `\r` (the CR of a CRLF
/// line ending).
#[derive(Clone, Copy)]
pub(super) struct RawRow<'a> {
    record: &'a ByteRecord,
}

impl<'a> RawRow<'a> {
    pub(super) fn len(&self) -> usize {
        self.record.len()
    }

    pub(super) fn get(&self, i: usize) -> Option<&'a [u8]> {
        let field = self.record.get(i)?;
        if i + 1 == self.record.len() {
            Some(field.strip_suffix(b"\r").unwrap_or(field))
        } else {
            Some(field)
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

/// The records of one input file.
pub(super) struct Records {
    path: PathBuf,
    reader: csv::Reader<BoxRead>,
    record: ByteRecord,
}

impl Records {
    pub(super) fn open(path: &Path, bar: &ProgressBar) -> Result<Self> {
        let text = open_text(path, bar)?;
        let reader = csv::ReaderBuilder::new()
            // The header is read as an ordinary record so that headerless presets and line
            // numbers work the same way; ragged rows are reported by the caller with the
            // expected width.
            .has_headers(false)
            .flexible(true)
            .terminator(csv::Terminator::Any(b'\n'))
            .buffer_capacity(1 << 16)
            .from_reader(text);
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            record: ByteRecord::new(),
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Advances to the next non-blank record; returns its 1-based physical line number (where the
    /// record starts), or `None` at end of file.
    pub(super) fn next_record(&mut self) -> Result<Option<u64>> {
        loop {
            let more = self
                .reader
                .read_byte_record(&mut self.record)
                .map_err(|e| csv_error(&self.path, e))?;
            if !more {
                return Ok(None);
            }
            let row = self.record();
            let blank = row.len() == 1
                && row
                    .get(0)
                    .is_some_and(|f| f.iter().all(u8::is_ascii_whitespace));
            if blank {
                continue;
            }
            let inner_newlines = self
                .record
                .as_slice()
                .iter()
                .filter(|&&b| b == b'\n')
                .count() as u64;
            let after = self.reader.position().line();
            return Ok(Some(after.saturating_sub(1 + inner_newlines).max(1)));
        }
    }

    /// The current record (after `next_record` returned a line).
    pub(super) fn record(&self) -> RawRow<'_> {
        RawRow {
            record: &self.record,
        }
    }
}

fn csv_error(path: &Path, e: csv::Error) -> Error {
    let line = e.position().map(|p| p.line()).unwrap_or(0);
    let message = e.to_string();
    match e.into_kind() {
        csv::ErrorKind::Io(source) => Error::ReadFile {
            path: path.to_path_buf(),
            source,
        },
        _ => Error::Csv {
            path: path.to_path_buf(),
            line,
            message,
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write;

    use super::*;

    fn lines_of(path: &Path) -> Vec<(u64, Vec<String>)> {
        let mut r = Records::open(path, &ProgressBar::hidden()).unwrap();
        let mut out = Vec::new();
        while let Some(line) = r.next_record().unwrap() {
            let fields = r
                .record()
                .iter()
                .map(|f| String::from_utf8(f.to_vec()).unwrap())
                .collect();
            out.push((line, fields));
        }
        out
    }

    #[test]
    fn gzip_is_detected_by_magic_bytes_and_bom_crlf_blank_lines_are_handled() {
        let dir = tempfile::tempdir().unwrap();
        let text =
            b"\xef\xbb\xbfa,b\r\n1,2\r\n\r\n   \r\n3,\"x,y\"\r\n\r\n\"multi\nline\",\"q\"\r\n\n7,8";
        // A gzip file with a misleading name.
        let gz = dir.path().join("data.csv");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(text).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        let plain = dir.path().join("plain.csv");
        std::fs::write(&plain, text).unwrap();
        for path in [&gz, &plain] {
            let got = lines_of(path);
            assert_eq!(
                got,
                vec![
                    (1, vec!["a".to_string(), "b".into()]),
                    (2, vec!["1".into(), "2".into()]),
                    (5, vec!["3".into(), "x,y".into()]),
                    (7, vec!["multi\nline".into(), "q".into()]),
                    (10, vec!["7".into(), "8".into()]),
                ],
                "{}",
                path.display()
            );
        }
    }

    #[test]
    fn empty_and_tiny_files_read_as_no_records() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [("empty", &b""[..]), ("one", b"\x1f"), ("ws", b" \n\t\n")] {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            let got = lines_of(&p);
            if name == "one" {
                assert_eq!(got.len(), 1, "a single odd byte is one record");
            } else {
                assert!(got.is_empty(), "{name}: {got:?}");
            }
        }
    }

    #[test]
    fn corrupt_gzip_is_a_read_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.csv.gz");
        std::fs::write(&p, b"\x1f\x8b\x08\x00garbage-garbage-garbage").unwrap();
        // The error may come at open (the BOM check reads the first bytes) or at a later read.
        let err = match Records::open(&p, &ProgressBar::hidden()) {
            Err(e) => e,
            Ok(mut r) => loop {
                match r.next_record() {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("corrupt gzip read to the end"),
                    Err(e) => break e,
                }
            },
        };
        assert!(matches!(err, Error::ReadFile { .. }), "{err:?}");
        assert!(err.to_string().contains("bad.csv.gz"), "{err}");
    }
}
