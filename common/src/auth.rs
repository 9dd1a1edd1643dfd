//! Bearer tokens of the control plane. A coordinator can require one token of clients (submit,
//! cancel, status, watch) and one of workers (register, assignments, rendezvous, reports); a
//! client or worker presents its token from a file (`--token-file`) or `FLOWSYNTH_TOKEN`.
//! A [`Token`] never prints its value: `Debug` and `Display` show a placeholder, so it cannot end
//! up in a log line, a status output or an error message by accident.

use std::fmt;
use std::path::Path;

use crate::{Error, Result};

/// The variable a client or worker takes its token from when no `--token-file` is given.
pub const TOKEN_ENV: &str = "FLOWSYNTH_TOKEN";

/// The gRPC metadata key the token travels in (`authorization: Bearer <token>`).
pub const AUTHORIZATION: &str = "authorization";

/// A secret bearer token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A token from text (surrounding whitespace, such as a file's final newline, removed);
    /// `None` when nothing is left.
    pub fn new(text: &str) -> Option<Self> {
        let t = text.trim();
        (!t.is_empty()).then(|| Self(t.to_string()))
    }

    /// Reads a token file; an unreadable, empty or non-UTF-8 file is an error naming it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        Self::new(&text).ok_or_else(|| Error::Config {
            location: path.display().to_string(),
            message: "the token file is empty".into(),
        })
    }

    /// The token of a client or worker: `file` if given, else `FLOWSYNTH_TOKEN` if set.
    pub fn for_client(file: Option<&Path>) -> Result<Option<Self>> {
        match file {
            Some(f) => Self::from_file(f).map(Some),
            None => Ok(std::env::var(TOKEN_ENV).ok().and_then(|t| Self::new(&t))),
        }
    }

    /// The value of the `authorization` header that presents this token.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Whether an `authorization` header value presents this token (compared in constant time,
    /// so the time taken says nothing about how much of a guess was right).
    pub fn is_presented_by(&self, header: &[u8]) -> bool {
        let Some(presented) = header.strip_prefix(b"Bearer ") else {
            return false;
        };
        same_secret(presented, self.0.as_bytes())
    }
}

/// The gRPC metadata key a worker presents its registration's session secret in: worker calls
/// name a worker id, and only the process that registered it knows the session.
pub const WORKER_SESSION: &str = "x-flowsynth-worker-session";

/// Whether `presented` equals `expected`, compared in constant time (the time taken says nothing
/// about how much of a guess was right).
pub fn same_secret(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = presented.len() ^ expected.len();
    for (i, e) in expected.iter().enumerate() {
        diff |= usize::from(presented.get(i).copied().unwrap_or(0) ^ e);
    }
    diff == 0
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly_and_never_print() {
        let t = Token::new(" s3cret-value\n").unwrap();
        assert!(t.is_presented_by(b"Bearer s3cret-value"));
        for wrong in [
            &b"Bearer s3cret-valu"[..],
            b"Bearer s3cret-value2",
            b"bearer s3cret-value",
            b"s3cret-value",
            b"Bearer ",
        ] {
            assert!(
                !t.is_presented_by(wrong),
                "{}",
                String::from_utf8_lossy(wrong)
            );
        }
        assert!(!format!("{t:?} {t}").contains("s3cret"));
        assert_eq!(Token::new("  \n"), None);
    }

    #[test]
    fn token_files_are_read_and_an_empty_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("t");
        std::fs::write(&good, "abc\n").unwrap();
        assert!(
            Token::from_file(&good)
                .unwrap()
                .is_presented_by(b"Bearer abc")
        );
        let empty = dir.path().join("e");
        std::fs::write(&empty, "\n").unwrap();
        let err = Token::from_file(&empty).unwrap_err().to_string();
        assert!(
            err.contains("empty") && err.contains(empty.to_str().unwrap()),
            "{err}"
        );
        let missing = dir.path().join("m");
        assert!(
            Token::from_file(&missing)
                .unwrap_err()
                .to_string()
                .contains("m")
        );
    }
}
