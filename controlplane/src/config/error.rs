//! A configuration problem, located as precisely as the input allows.

use std::fmt;
use std::path::PathBuf;

/// One problem: which file, which document (1-based, as `---` separates them), which line,
/// which resource, which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub document: Option<usize>,
    pub line: Option<u64>,
    /// `Kind name`, when the document got that far.
    pub resource: Option<String>,
    /// Field path, e.g. `spec.http[0].mirror`.
    pub path: Option<String>,
    pub reason: String,
}

impl ConfigError {
    pub fn file(file: PathBuf, reason: impl Into<String>) -> Self {
        Self {
            file,
            document: None,
            line: None,
            resource: None,
            path: None,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(doc) = self.document {
            write!(f, " (document {doc})")?;
        }
        if let Some(resource) = &self.resource {
            write!(f, ": {resource}")?;
        }
        match &self.path {
            Some(path) if !path.is_empty() && path != "." => write!(f, ": {path}: {}", self.reason),
            _ => write!(f, ": {}", self.reason),
        }
    }
}

impl std::error::Error for ConfigError {}
