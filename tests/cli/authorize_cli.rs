//! `smtp-oauth-relay authorize` and `smtp-oauth-relay token`, driven through the real binary
//! against the fake Google consent screen and token endpoint, with a relay (in process) that
//! then sends with what `authorize` stored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{ExitStatus, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::common::*;
use smtp_oauth_relay::credentials::secret::Secret;
use smtp_oauth_relay::credentials::store::StoredToken;
use smtp_oauth_relay::sandbox::token_issuer::{ConsentMode, GMAIL_SCOPE};

const BIN: &str = env!("CARGO_BIN_EXE_smtp-oauth-relay");
/// How long any single step of the child may take.
const STEP: Duration = Duration::from_secs(60);

/// A running `smtp-oauth-relay` whose stdout is read line by line. The child is killed when
/// this is dropped before it exited (a failing assertion leaves nothing running).
struct Cli {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    seen: Vec<String>,
    stderr: tokio::task::JoinHandle<String>,
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn all(&self) -> String {
        format!(
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

impl Cli {
    fn spawn(args: &[&str], browser: Option<&str>) -> Cli {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env_remove("SMTP_OAUTH_RELAY_CONFIG")
            .env_remove("SMTP_OAUTH_RELAY_STORE_KEY")
            .env_remove("SMTP_OAUTH_RELAY_LOG_FORMAT")
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        match browser {
            Some(browser) => command.env("BROWSER", browser),
            None => command.env_remove("BROWSER"),
        };
        let mut child = command.spawn().unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stderr_pipe = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text).await;
            text
        });
        Cli {
            child,
            stdin,
            stdout,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Reads stdout until a line starting with `prefix` (which is returned).
    async fn line_starting_with(&mut self, prefix: &str) -> String {
        loop {
            let next = tokio::time::timeout(STEP, self.stdout.next_line()).await;
            match next {
                Ok(Ok(Some(line))) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                other => {
                    let _ = self.child.start_kill();
                    let stderr = tokio::time::timeout(STEP, &mut self.stderr)
                        .await
                        .map(|r| r.unwrap_or_default())
                        .unwrap_or_default();
                    panic!(
                        "no line starting with {prefix:?} ({other:?})\n--- stdout ---\n{}\n--- stderr ---\n{stderr}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    async fn write_stdin(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
    }

    /// Reads the rest of the output and waits for the exit.
    async fn finish(mut self) -> Finished {
        drop(self.stdin.take());
        let rest = async {
            while let Some(line) = self.stdout.next_line().await.unwrap() {
                self.seen.push(line);
            }
            let status = self.child.wait().await.unwrap();
            let stderr = (&mut self.stderr).await.unwrap();
            (status, stderr)
        };
        let (status, stderr) = tokio::time::timeout(STEP, rest)
            .await
            .unwrap_or_else(|_| panic!("the child did not finish within {STEP:?}"));
        Finished {
            status,
            stdout: self.seen.join("\n"),
            stderr,
        }
    }
}

fn config_arg(env: &Env) -> String {
    env.path("relay.toml").to_str().unwrap().to_string()
}

fn store_env() -> Options {
    Options {
        support_from_store: true,
        ..Options::default()
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// "Opens" the consent URL: the fake consent screen answers with a redirect; its target.
async fn consent_redirect(url: &str) -> String {
    let response = http().get(url).send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::FOUND, "{url}");
    response
        .headers()
        .get(reqwest::header::LOCATION)
        .expect("a Location header")
        .to_str()
        .unwrap()
        .to_string()
}

async fn send_ok(env: &Env, subject: &str) {
    env.send_as(SCANNER, SUPPORT_EMAIL, "rcpt@example.net", subject)
        .await
        .expect_code(250);
}

/// Asserts a successful authorize run stored a refresh token the issuer knows, that the
/// token appears nowhere in the output, and returns it.
fn assert_stored_a_valid_token(env: &Env, finished: &Finished) -> String {
    let all = finished.all();
    assert!(finished.status.success(), "{all}");
    assert!(
        finished
            .stdout
            .contains(&format!("account: {SUPPORT_EMAIL}")),
        "{all}"
    );
    assert!(
        finished
            .stdout
            .contains(&format!("scopes granted: {GMAIL_SCOPE}")),
        "{all}"
    );
    assert!(finished.stdout.contains("asset support: OK"), "{all}");
    let stored = env.store().get("support").unwrap().expect("a stored token");
    let token = stored.refresh_token.expose().to_string();
    assert_ne!(token, SUPPORT_REFRESH, "a new grant");
    assert!(
        env.issuer
            .current_refresh_tokens(SUPPORT_EMAIL)
            .contains(&token),
        "the issuer does not know the stored token"
    );
    assert_eq!(stored.account.as_deref(), Some(SUPPORT_EMAIL));
    assert_eq!(stored.scopes, vec![GMAIL_SCOPE.to_string()]);
    for secret in [token.as_str(), SUPPORT_SECRET, "ya29."] {
        assert!(!all.contains(secret), "{secret} leaked:\n{all}");
    }
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_no_browser_paste_flow_stores_a_token_the_relay_uses() {
    let env = Env::with(store_env()).await;
    let config = config_arg(&env);
    let mut cli = Cli::spawn(
        &["authorize", "support", "--no-browser", "--config", &config],
        None,
    );
    let url = cli.line_starting_with(&env.issuer.auth_url()).await;
    let location = consent_redirect(&url).await;
    assert!(location.starts_with("http://127.0.0.1:"), "{location}");
    assert!(location.contains("code="), "{location}");
    cli.write_stdin(&format!("{location}\n")).await;
    let finished = cli.finish().await;
    assert_stored_a_valid_token(&env, &finished);
    let request = env.issuer.last_authorization_request().unwrap();
    assert_eq!(request["client_id"], "support-client");
    assert_eq!(request["code_challenge_method"], "S256");
    assert_eq!(request["access_type"], "offline");
    assert_eq!(request["login_hint"], SUPPORT_EMAIL);

    // The running relay picks it up from the store.
    send_ok(&env, "after-authorize").await;
    assert_eq!(env.gmail.messages()[0].auth_user, SUPPORT_EMAIL);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_browser_flow_receives_the_redirect_on_loopback() {
    let env = Env::with(store_env()).await;
    let config = config_arg(&env);
    // `true URL`: a "browser" that opens nothing.
    let mut cli = Cli::spawn(&["authorize", "support", "--config", &config], Some("true"));
    let url = cli.line_starting_with(&env.issuer.auth_url()).await;
    cli.line_starting_with("Waiting for the browser").await;
    let location = consent_redirect(&url).await;
    assert!(location.starts_with("http://127.0.0.1:"), "{location}");
    // The browser follows the redirect to the child's one-shot listener.
    let page = http().get(&location).send().await.unwrap();
    assert_eq!(page.status(), reqwest::StatusCode::OK);
    let body = page.text().await.unwrap();
    assert!(body.contains("you can close this tab"), "{body}");
    let finished = cli.finish().await;
    assert!(
        finished.stdout.contains("a browser was started"),
        "{}",
        finished.all()
    );
    assert_stored_a_valid_token(&env, &finished);
    send_ok(&env, "after-browser-authorize").await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_access_denied_fails_and_leaves_the_store_alone() {
    let env = Env::with(store_env()).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    env.store()
        .put(
            "support",
            StoredToken::new(
                Secret::new(SUPPORT_REFRESH),
                Some(SUPPORT_EMAIL.into()),
                vec![GMAIL_SCOPE.into()],
                now,
            ),
        )
        .unwrap();
    let before = std::fs::read(env.path("tokens.json")).unwrap();
    env.issuer.set_consent(ConsentMode::Deny);

    let config = config_arg(&env);
    let mut cli = Cli::spawn(
        &["authorize", "support", "--no-browser", "--config", &config],
        None,
    );
    let url = cli.line_starting_with(&env.issuer.auth_url()).await;
    let location = consent_redirect(&url).await;
    assert!(location.contains("error=access_denied"), "{location}");
    cli.write_stdin(&format!("{location}\n")).await;
    let finished = cli.finish().await;
    let all = finished.all();
    assert!(!finished.status.success(), "{all}");
    assert!(finished.stderr.contains("access was denied"), "{all}");
    assert!(finished.stderr.contains("Allow"), "{all}");
    assert_eq!(std::fs::read(env.path("tokens.json")).unwrap(), before);
    // The relay still works with the old token.
    send_ok(&env, "still-old-token").await;
    env.stop().await;
}

/// A consent given by another account (a browser signed in to several) is refused before
/// it reaches the store: the old grant stays, and the relay keeps sending with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_for_the_wrong_account_keeps_the_old_grant() {
    let env = Env::with(store_env()).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    env.store()
        .put(
            "support",
            StoredToken::new(
                Secret::new(SUPPORT_REFRESH),
                Some(SUPPORT_EMAIL.into()),
                vec![GMAIL_SCOPE.into()],
                now,
            ),
        )
        .unwrap();
    let before = std::fs::read(env.path("tokens.json")).unwrap();
    env.issuer.set_consent_email("intruder@example.net");

    let config = config_arg(&env);
    let mut cli = Cli::spawn(
        &["authorize", "support", "--no-browser", "--config", &config],
        None,
    );
    let url = cli.line_starting_with(&env.issuer.auth_url()).await;
    let location = consent_redirect(&url).await;
    assert!(location.contains("code="), "{location}");
    cli.write_stdin(&format!("{location}\n")).await;
    let finished = cli.finish().await;
    let all = finished.all();
    assert!(!finished.status.success(), "{all}");
    assert!(finished.stderr.contains("another account"), "{all}");
    assert!(finished.stderr.contains(SUPPORT_EMAIL), "{all}");
    assert!(!all.contains("ya29."), "{all}");
    // The provider was asked for the right account in the first place.
    let request = env.issuer.last_authorization_request().unwrap();
    assert_eq!(request["login_hint"], SUPPORT_EMAIL);
    assert_eq!(std::fs::read(env.path("tokens.json")).unwrap(), before);
    send_ok(&env, "still-the-old-grant").await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_command_shows_the_state_and_only_shows_the_token_when_asked() {
    let env = Env::with(store_env()).await;
    let config = config_arg(&env);

    // Not authorized yet.
    let finished = Cli::spawn(&["token", "support", "--config", &config], None)
        .finish()
        .await;
    let all = finished.all();
    assert!(!finished.status.success(), "{all}");
    assert!(all.contains("smtp-oauth-relay authorize support"), "{all}");

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    env.store()
        .put(
            "support",
            StoredToken::new(
                Secret::new(SUPPORT_REFRESH),
                Some(SUPPORT_EMAIL.into()),
                vec![GMAIL_SCOPE.into()],
                now,
            ),
        )
        .unwrap();

    let finished = Cli::spawn(&["token", "support", "--config", &config], None)
        .finish()
        .await;
    let all = finished.all();
    assert!(finished.status.success(), "{all}");
    assert!(finished.stdout.contains("source: the token store"), "{all}");
    assert!(finished.stdout.contains("valid for"), "{all}");
    for secret in ["ya29.", SUPPORT_REFRESH, SUPPORT_SECRET] {
        assert!(
            !all.contains(secret),
            "{secret} appears without --show:\n{all}"
        );
    }

    let finished = Cli::spawn(&["token", "support", "--show", "--config", &config], None)
        .finish()
        .await;
    let all = finished.all();
    assert!(finished.status.success(), "{all}");
    let token = finished
        .stdout
        .lines()
        .filter_map(|line| line.trim().strip_prefix("access token: "))
        .find(|value| !value.starts_with("valid for"))
        .unwrap_or_else(|| panic!("no access token printed:\n{all}"))
        .trim()
        .to_string();
    assert!(
        env.tokens.is_valid(SUPPORT_EMAIL, &token),
        "{token} is not valid at the fake Gmail"
    );
    for secret in [SUPPORT_REFRESH, SUPPORT_SECRET] {
        assert!(!all.contains(secret), "{secret} leaked:\n{all}");
    }
    env.stop().await;
}
