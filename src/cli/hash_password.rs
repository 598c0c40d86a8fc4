//! `smtp-oauth-relay hash-password`: reads a password (twice from a terminal, else one
//! line of stdin) and prints its argon2id hash for a `[[user]]` entry.

use std::io::{BufRead, IsTerminal};

use crate::cli::error::CliError;
use crate::credentials::secret::Secret;
use crate::users;

pub fn hash_password() -> Result<(), CliError> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ");
        let second = rpassword::prompt_password("Again: ");
        match (first, second) {
            (Ok(first), Ok(second)) if first == second => first,
            (Ok(_), Ok(_)) => return Err(CliError::failed("the passwords differ")),
            (Err(err), _) | (_, Err(err)) => return Err(cannot_read(err)),
        }
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(cannot_read)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.is_empty() {
        return Err(CliError::failed("the password is empty"));
    }
    let hash = users::hash_password(&Secret::new(password)).map_err(CliError::failed)?;
    println!("{hash}");
    Ok(())
}

fn cannot_read(err: std::io::Error) -> CliError {
    CliError::failed(format!("cannot read the password: {err}"))
}
