//! [`RelPath`]: a path inside the replicated root, as raw bytes.
//!
//! File names on Linux are bytes, not UTF-8, so paths travel as bytes. A `RelPath`
//! is checked when it is made and again when it is decoded, so a crafted frame
//! cannot name `..`, an absolute path or an empty component.

use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Why a path was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    /// The path starts with `/`.
    #[error("path {path:?} is absolute")]
    Absolute { path: String },
    /// A component is `..` or `.`.
    #[error("path {path:?} has a `{component}` component")]
    DotComponent { path: String, component: &'static str },
    /// Two slashes in a row, or a trailing slash.
    #[error("path {path:?} has an empty component")]
    EmptyComponent { path: String },
    /// A NUL byte, which no file name may hold.
    #[error("path {path:?} contains a NUL byte")]
    Nul { path: String },
}

/// A validated path relative to the root. The empty path names the root itself.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RelPath(#[serde(with = "serde_bytes")] Vec<u8>);

impl RelPath {
    /// The root directory itself, as a constant.
    pub const EMPTY: RelPath = RelPath(Vec::new());

    /// The root directory itself.
    pub fn root() -> Self {
        RelPath(Vec::new())
    }

    /// Validates raw bytes as a relative path.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<Self, PathError> {
        let bytes = bytes.into();
        let shown = || String::from_utf8_lossy(&bytes).into_owned();
        if bytes.is_empty() {
            return Ok(RelPath(bytes));
        }
        if bytes.contains(&0) {
            return Err(PathError::Nul { path: shown() });
        }
        if bytes[0] == b'/' {
            return Err(PathError::Absolute { path: shown() });
        }
        for component in bytes.split(|&b| b == b'/') {
            match component {
                b"" => return Err(PathError::EmptyComponent { path: shown() }),
                b"." => return Err(PathError::DotComponent { path: shown(), component: "." }),
                b".." => return Err(PathError::DotComponent { path: shown(), component: ".." }),
                _ => {}
            }
        }
        Ok(RelPath(bytes))
    }

    /// Validates a [`Path`] as a relative path.
    pub fn from_path(path: &Path) -> Result<Self, PathError> {
        Self::from_bytes(path.as_os_str().as_bytes())
    }

    /// `self/name`.
    pub fn join(&self, name: &OsStr) -> Result<Self, PathError> {
        let mut bytes = self.0.clone();
        if !bytes.is_empty() {
            bytes.push(b'/');
        }
        bytes.extend_from_slice(name.as_bytes());
        Self::from_bytes(bytes)
    }

    /// True for the root itself.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path as an OS path, `.` for the root.
    pub fn as_path(&self) -> &Path {
        if self.0.is_empty() {
            Path::new(".")
        } else {
            Path::new(OsStr::from_bytes(&self.0))
        }
    }

    /// The parent directory, or `None` for the root.
    pub fn parent(&self) -> Option<RelPath> {
        if self.0.is_empty() {
            return None;
        }
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => Some(RelPath(self.0[..i].to_vec())),
            None => Some(RelPath::root()),
        }
    }

    /// The last component, or `None` for the root.
    pub fn file_name(&self) -> Option<&OsStr> {
        if self.0.is_empty() {
            return None;
        }
        let start = self.0.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
        Some(OsStr::from_bytes(&self.0[start..]))
    }

    /// True when `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        other.0.is_empty()
            || self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.get(other.0.len()) == Some(&b'/'))
    }

    /// Replaces the prefix `from` with `to` (for paths below a renamed directory).
    pub fn rebase(&self, from: &RelPath, to: &RelPath) -> Option<RelPath> {
        if !self.starts_with(from) {
            return None;
        }
        let rest = &self.0[from.0.len()..];
        let rest = rest.strip_prefix(b"/").unwrap_or(rest);
        let mut bytes = to.0.clone();
        if !bytes.is_empty() && !rest.is_empty() {
            bytes.push(b'/');
        }
        bytes.extend_from_slice(rest);
        Some(RelPath(bytes))
    }
}

thread_local! {
    /// postcard reports every custom error as the same opaque variant; the refused
    /// path is kept here so the frame decoder can say which path was refused and why.
    static LAST_REFUSED: std::cell::RefCell<Option<PathError>> = const { std::cell::RefCell::new(None) };
}

/// Takes the path refusal recorded by the last failed decode on this thread.
pub(crate) fn take_last_refused() -> Option<PathError> {
    LAST_REFUSED.with(|cell| cell.borrow_mut().take())
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: serde_bytes::ByteBuf = Deserialize::deserialize(deserializer)?;
        crate::limit::charge::<D::Error>(bytes.len())?;
        RelPath::from_bytes(bytes.into_vec()).map_err(|e| {
            let message = e.to_string();
            LAST_REFUSED.with(|cell| *cell.borrow_mut() = Some(e));
            serde::de::Error::custom(message)
        })
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// Shows the path for logs and messages: it comes from the peer, so control
/// characters (a newline could forge a log line, an escape sequence could
/// rewrite a terminal), backslashes and bytes that are not UTF-8 are escaped
/// (`\n`, `\\`, `\x1b`, `\xff`); everything else is shown as it is.
impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str(".");
        }
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    '\n' => f.write_str("\\n")?,
                    '\r' => f.write_str("\\r")?,
                    '\t' => f.write_str("\\t")?,
                    c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
                    c => fmt::Write::write_char(f, c)?,
                }
            }
            for byte in chunk.invalid() {
                write!(f, "\\x{byte:02x}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_escapes() {
        assert!(matches!(RelPath::from_bytes("../x"), Err(PathError::DotComponent { .. })));
        assert!(matches!(RelPath::from_bytes("a/../../x"), Err(PathError::DotComponent { .. })));
        assert!(matches!(RelPath::from_bytes("/etc/passwd"), Err(PathError::Absolute { .. })));
        assert!(matches!(RelPath::from_bytes("a//b"), Err(PathError::EmptyComponent { .. })));
        assert!(matches!(RelPath::from_bytes(b"a\0b".to_vec()), Err(PathError::Nul { .. })));
        assert!(RelPath::from_bytes("a/b c/d").is_ok());
    }

    #[test]
    fn display_escapes_what_could_forge_a_log_line() {
        let forged = RelPath::from_bytes(b"a\n2026-01-01T00:00:00Z INFO forged\x1b[2J\\b\xff".to_vec()).unwrap();
        let shown = forged.to_string();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert_eq!(shown, "a\\n2026-01-01T00:00:00Z INFO forged\\u{1b}[2J\\\\b\\xff");
        assert_eq!(RelPath::from_bytes("plain/ünïcode").unwrap().to_string(), "plain/ünïcode");
        assert_eq!(RelPath::root().to_string(), ".");
    }

    #[test]
    fn decoding_validates() {
        let evil = postcard::to_stdvec(&serde_bytes::ByteBuf::from(b"../../etc".to_vec())).unwrap();
        assert!(postcard::from_bytes::<RelPath>(&evil).is_err());
    }

    #[test]
    fn rebase_and_parent() {
        let p = RelPath::from_bytes("a/b/c").unwrap();
        let from = RelPath::from_bytes("a/b").unwrap();
        let to = RelPath::from_bytes("z").unwrap();
        assert_eq!(p.rebase(&from, &to).unwrap(), RelPath::from_bytes("z/c").unwrap());
        assert_eq!(from.rebase(&from, &to).unwrap(), to);
        assert!(RelPath::from_bytes("a/bc").unwrap().rebase(&from, &to).is_none());
        assert_eq!(p.parent().unwrap(), from);
        assert_eq!(p.file_name().unwrap(), "c");
        assert_eq!(RelPath::from_bytes("x").unwrap().parent().unwrap(), RelPath::root());
    }
}
