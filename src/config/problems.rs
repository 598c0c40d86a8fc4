//! What is wrong with a config, and where: each [`Problem`] names the line and the field,
//! and [`ConfigError`] renders them all as `file:line: field: message`, one per line,
//! the way compilers report errors, so an operator fixes everything in one pass.

use std::path::{Path, PathBuf};

use toml::Spanned;

use super::exposed_mode;

/// One thing wrong with the config, located as precisely as the TOML allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render_problems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    let mut text = format!(
        "{} problem(s) in config file {}:",
        problems.len(),
        path.display()
    );
    for problem in problems {
        let location = match problem.line {
            Some(line) => format!("{}:{line}", path.display()),
            None => path.display().to_string(),
        };
        let field = if problem.field.is_empty() {
            String::new()
        } else {
            format!(" {}:", problem.field)
        };
        text.push_str(&format!("\n  {location}:{field} {}", problem.message));
    }
    text
}

/// Maps byte offsets (TOML spans) to 1-based line numbers.
pub(super) struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub(super) fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { starts }
    }

    pub(super) fn line_of(&self, offset: usize) -> usize {
        match self.starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }
}

/// Collects the problems (and warnings) of one config as validation walks it, so every
/// one of them is reported at once instead of the first only.
pub(super) struct Checker {
    pub(super) lines: LineIndex,
    pub(super) problems: Vec<Problem>,
    pub(super) warnings: Vec<String>,
}

impl Checker {
    /// Warns when the secret file named by `field` can be read by others. Only the path
    /// and the mode are named, never the content.
    pub(super) fn secret_file(&mut self, path: &Path, field: &str) {
        if let Some(mode) = exposed_mode(path) {
            self.warnings.push(format!(
                "{field}: {path} holds a secret and can be read by group or others (mode \
                 {mode:03o}); run `chmod 600 {path}`",
                path = path.display()
            ));
        }
    }

    pub(super) fn at<T>(
        &mut self,
        spanned: &Spanned<T>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        let line = self.lines.line_of(spanned.span().start);
        self.problems.push(Problem {
            line: Some(line),
            field: field.into(),
            message: message.into(),
        });
    }

    pub(super) fn general(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            line: None,
            field: field.into(),
            message: message.into(),
        });
    }
}
