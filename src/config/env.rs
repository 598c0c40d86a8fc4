//! `${VAR}` in the config text, replaced before TOML sees it, so secrets can come from
//! the environment (systemd credentials, Kubernetes Secrets as variables) instead of the
//! file. The environment is passed in as a lookup, so tests and the fuzzer need not touch
//! the process environment; [`super::load`] passes `std::env::var`.

use super::problems::Problem;

/// The environment variable that may hold the token-store key (instead of `key_file`).
pub const STORE_KEY_ENV: &str = "SMTP_OAUTH_RELAY_STORE_KEY";

/// Replaces `${NAME}` with the environment variable NAME, line by line so TOML line
/// numbers stay right. `$${` is a literal `${`. Inside a "basic string" the value is
/// escaped for TOML, so a secret containing `"` or `\` cannot break the file; comments
/// are left alone. An unset variable, or one holding a line break, is a problem.
pub fn expand_env(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<Problem>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let mut in_basic = false;
        let mut in_literal = false;
        let mut chars = line.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '\\' if in_basic => {
                    out.push(c);
                    if let Some((_, escaped)) = chars.next() {
                        out.push(escaped);
                    }
                    continue;
                }
                '"' if !in_literal => in_basic = !in_basic,
                '\'' if !in_basic => in_literal = !in_literal,
                '#' if !in_basic && !in_literal => {
                    out.push_str(&line[at..]);
                    break;
                }
                '$' if line[at..].starts_with("$${") => {
                    out.push_str("${");
                    chars.next();
                    chars.next();
                    continue;
                }
                '$' if line[at..].starts_with("${") => {
                    let Some(end) = line[at..].find('}') else {
                        problems.push(Problem {
                            line: Some(index + 1),
                            field: String::new(),
                            message: "\"${\" without a closing \"}\"".to_string(),
                        });
                        out.push(c);
                        continue;
                    };
                    let name = &line[at + 2..at + end];
                    match lookup(name) {
                        Some(value) if value.contains(['\n', '\r']) => problems.push(Problem {
                            line: Some(index + 1),
                            field: String::new(),
                            message: format!("environment variable {name} contains a line break"),
                        }),
                        Some(value) if in_basic => {
                            for v in value.chars() {
                                match v {
                                    '"' => out.push_str("\\\""),
                                    '\\' => out.push_str("\\\\"),
                                    other => out.push(other),
                                }
                            }
                        }
                        Some(value) => out.push_str(&value),
                        None => problems.push(Problem {
                            line: Some(index + 1),
                            field: String::new(),
                            message: format!("environment variable {name} is not set"),
                        }),
                    }
                    // Skip past the closing brace.
                    while let Some((position, _)) = chars.peek() {
                        if *position > at + end {
                            break;
                        }
                        chars.next();
                    }
                    continue;
                }
                _ => {}
            }
            out.push(c);
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}
