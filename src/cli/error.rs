//! [`CliError`]: the one error every command body returns, and the exit code it means.
//! `main` prints it once, as `error: …` on stderr, and exits with [`CliError::exit_code`].

use std::fmt::Display;
use std::process::ExitCode;

use crate::config::ConfigError;
use crate::oauth::consent::AuthorizeError;
use crate::oauth::token::HttpClientInitError;

/// sysexits.h: the config is wrong (EX_CONFIG). Deploy checks and service managers tell a
/// config mistake from a crash by it.
pub const EXIT_CONFIG: u8 = 78;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The config, the token store it names, or an asset the command names is wrong: only
    /// an edit fixes it (exit [`EXIT_CONFIG`]).
    #[error("{0}")]
    Config(String),
    /// Anything else that stopped the command (exit 1).
    #[error("{0}")]
    Failed(String),
    /// The command already said what failed on stdout (`check`'s lines, `token`'s last
    /// error): exit 1 and print nothing more.
    #[error("the command failed (see its output)")]
    Reported,
}

impl CliError {
    pub fn config(err: impl Display) -> Self {
        CliError::Config(err.to_string())
    }

    pub fn failed(err: impl Display) -> Self {
        CliError::Failed(err.to_string())
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) => EXIT_CONFIG,
            CliError::Failed(_) | CliError::Reported => 1,
        }
    }

    /// Says the error on stderr (unless the command already did) and gives the exit code.
    pub fn report(&self) -> ExitCode {
        if !matches!(self, CliError::Reported) {
            eprintln!("error: {self}");
        }
        ExitCode::from(self.exit_code())
    }
}

impl From<ConfigError> for CliError {
    fn from(err: ConfigError) -> Self {
        CliError::config(err)
    }
}

impl From<HttpClientInitError> for CliError {
    fn from(err: HttpClientInitError) -> Self {
        CliError::failed(err)
    }
}

impl From<AuthorizeError> for CliError {
    fn from(err: AuthorizeError) -> Self {
        CliError::failed(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_config_errors_exit_78() {
        assert_eq!(CliError::config("x").exit_code(), 78);
        assert_eq!(CliError::failed("x").exit_code(), 1);
        assert_eq!(CliError::Reported.exit_code(), 1);
        assert_eq!(CliError::config("bad key").to_string(), "bad key");
    }
}
