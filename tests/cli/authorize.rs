//! The consent flow (`authorize`) end to end against the sandbox authorization server: a
//! "browser" made of reqwest follows the printed URL, the fake consent screen redirects back,
//! and the relay's one-shot listener (or the paste prompt) takes the code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use smtp_oauth_relay::config::{self, Asset};
use smtp_oauth_relay::credentials::secret::Secret;
use smtp_oauth_relay::oauth::consent::{
    obtain_consent, AuthorizeError, Consent, ConsentOptions, DEFAULT_TIMEOUT,
};
use smtp_oauth_relay::sandbox::token_issuer::{
    AccessTokens, ConsentMode, IssuerAccount, TokenIssuer,
};

const EMAIL: &str = "box@example.com";
const CLIENT_ID: &str = "desktop-client";
const CLIENT_SECRET: &str = "GOCSPX-desktop-secret-Qr5";
const OLD_REFRESH: &str = "1//old-refresh-token";

fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        smtp_oauth_relay::users::hash_password(&Secret::new("app-password")).unwrap()
    })
}

struct Fixture {
    issuer: TokenIssuer,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn issuer() -> Fixture {
    let shutdown = CancellationToken::new();
    let issuer = TokenIssuer::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        vec![IssuerAccount {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            refresh_token: OLD_REFRESH.into(),
            email: EMAIL.into(),
        }],
        AccessTokens::new(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    Fixture {
        issuer,
        _shutdown: shutdown.drop_guard(),
    }
}

/// An asset pointing at the fake. `provider = "google"` with overridden URLs by default, since
/// the fake (like Google) issues refresh tokens only for `access_type=offline`.
fn asset(issuer: &TokenIssuer, provider: &str, extra: &str) -> Asset {
    let text = format!(
        r#"
[[user]]
name = "app"
password_hash = "{hash}"
assets = ["box"]

[[asset]]
name = "box"
email = "{EMAIL}"
provider = "{provider}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
refresh_token = "{OLD_REFRESH}"
senders = ["{EMAIL}"]
auth_url = "{auth_url}"
token_url = "{token_url}"
scope = "https://mail.google.com/"
upstream = "127.0.0.1:1"
{extra}
"#,
        hash = password_hash(),
        auth_url = issuer.auth_url(),
        token_url = issuer.token_url(),
    );
    let config = config::parse(&text, Path::new("t.toml")).unwrap();
    config.assets[0].as_ref().clone()
}

fn options(no_browser: bool) -> ConsentOptions {
    ConsentOptions {
        no_browser,
        open_browser: false,
        timeout: Duration::from_secs(20),
    }
}

/// What `obtain_consent` prints, readable while it runs.
#[derive(Clone, Default)]
struct SharedOutput(Arc<Mutex<Vec<u8>>>);

impl SharedOutput {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// Polls until a line with the consent URL (the auth endpoint) has been printed.
    async fn consent_url(&self, auth_url: &str) -> String {
        for _ in 0..200 {
            if let Some(line) = self.text().lines().find(|line| line.starts_with(auth_url)) {
                return line.to_string();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no consent URL printed; output so far:\n{}", self.text());
    }
}

impl Write for SharedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

type Running = tokio::task::JoinHandle<Result<Consent, AuthorizeError>>;

/// Starts the consent in a task, with `input` as the terminal's stdin.
fn start<R>(asset: Asset, options: ConsentOptions, input: R) -> (Running, SharedOutput)
where
    R: tokio::io::AsyncBufRead + Unpin + Send + 'static,
{
    let output = SharedOutput::default();
    let mut writer = output.clone();
    let task =
        tokio::spawn(async move { obtain_consent(&asset, &options, input, &mut writer).await });
    (task, output)
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The user at the consent screen: GET the URL, return where it redirects.
async fn consent_screen(url: &str) -> String {
    let response = browser().get(url).send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::FOUND, "{url}");
    response
        .headers()
        .get(reqwest::header::LOCATION)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

/// The browser following the redirect to the relay's listener: (status, page).
async fn follow(location: &str) -> (reqwest::StatusCode, String) {
    let response = browser().get(location).send().await.unwrap();
    let status = response.status();
    (status, response.text().await.unwrap())
}

fn query(url: &str) -> HashMap<String, String> {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

async fn finish(task: Running) -> Result<Consent, AuthorizeError> {
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the consent flow must end")
        .unwrap()
}

fn assert_no_secret_in(text: &str, consent: Option<&Consent>) {
    assert!(
        !text.contains(CLIENT_SECRET),
        "client secret printed:\n{text}"
    );
    if let Some(consent) = consent {
        assert!(!text.contains(consent.refresh_token.expose()));
        assert!(!text.contains(consent.access_token.expose()));
    }
}

#[tokio::test]
async fn loopback_flow_end_to_end() {
    let f = issuer().await;
    let asset = asset(&f.issuer, "google", "");
    let (task, output) = start(asset, options(false), BufReader::new(tokio::io::empty()));

    let url = output.consent_url(&f.issuer.auth_url()).await;
    let params = query(&url);
    assert_eq!(params["code_challenge_method"], "S256");
    assert_eq!(params["access_type"], "offline");
    assert_eq!(params["prompt"], "consent");
    assert_eq!(params["scope"], "https://mail.google.com/");
    // The provider is asked for the asset's account.
    assert_eq!(params["login_hint"], EMAIL);
    let redirect_uri = params["redirect_uri"].clone();
    assert!(
        redirect_uri.starts_with("http://127.0.0.1:") && redirect_uri.ends_with("/callback"),
        "{redirect_uri}"
    );
    assert!(!redirect_uri.starts_with("http://127.0.0.1:0/"));

    let location = consent_screen(&url).await;
    assert!(location.starts_with(&redirect_uri), "{location}");
    // A stray request (the favicon) gets a 404 and does not end the flow.
    let base = redirect_uri.trim_end_matches("/callback");
    let (status, _) = follow(&format!("{base}/favicon.ico")).await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND);

    let (status, page) = follow(&location).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert!(page.contains("you can close this tab"), "{page}");

    let consent = finish(task).await.unwrap();
    let current = f.issuer.current_refresh_tokens(EMAIL);
    assert!(current.contains(&consent.refresh_token.expose().to_string()));
    assert_ne!(consent.refresh_token.expose(), OLD_REFRESH);
    assert!(f
        .issuer
        .tokens()
        .is_valid(EMAIL, consent.access_token.expose()));
    assert_eq!(consent.expires_in, Some(Duration::from_secs(3599)));
    assert_eq!(consent.scopes, vec!["https://mail.google.com/".to_string()]);
    assert_eq!(consent.redirect_uri, redirect_uri);
    let text = output.text();
    assert!(text.contains("Waiting for the browser"), "{text}");
    assert_no_secret_in(&text, Some(&consent));
    assert!(!format!("{consent:?}").contains(consent.refresh_token.expose()));

    // The listener is gone once the flow has ended.
    assert!(browser().get(&location).send().await.is_err());
}

#[tokio::test]
async fn no_browser_paste_of_the_full_redirect_url() {
    let f = issuer().await;
    let asset = asset(&f.issuer, "google", "");
    let (mut terminal, input) = tokio::io::duplex(16 * 1024);
    let (task, output) = start(asset, options(true), BufReader::new(input));

    let url = output.consent_url(&f.issuer.auth_url()).await;
    let redirect_uri = query(&url)["redirect_uri"].clone();
    let text = output.text();
    assert!(
        text.contains(&format!("your browser is sent to {redirect_uri}")),
        "{text}"
    );
    assert!(text.contains("paste it here"), "{text}");

    // The browser is elsewhere: its redirect fails to load, the user copies the address.
    let location = consent_screen(&url).await;
    assert!(
        browser().get(&location).send().await.is_err(),
        "nothing may listen in the paste flow"
    );
    terminal
        .write_all(format!("  {location}  \n").as_bytes())
        .await
        .unwrap();

    let consent = finish(task).await.unwrap();
    assert!(f
        .issuer
        .current_refresh_tokens(EMAIL)
        .contains(&consent.refresh_token.expose().to_string()));
    assert!(!output.text().contains("could not be verified"));
    assert_no_secret_in(&output.text(), Some(&consent));
}

#[tokio::test]
async fn no_browser_paste_of_a_bare_code_warns_about_state() {
    let f = issuer().await;
    let asset = asset(&f.issuer, "google", "");
    let (mut terminal, input) = tokio::io::duplex(16 * 1024);
    let (task, output) = start(asset, options(true), BufReader::new(input));

    let url = output.consent_url(&f.issuer.auth_url()).await;
    let code = query(&consent_screen(&url).await)["code"].clone();
    // As seen in an address bar: percent-encoded ("4/0..." shows as "4%2F0...").
    let encoded: String = oauth2::url::form_urlencoded::byte_serialize(code.as_bytes()).collect();
    terminal
        .write_all(format!("{encoded}\n").as_bytes())
        .await
        .unwrap();

    let consent = finish(task).await.unwrap();
    assert!(f
        .issuer
        .current_refresh_tokens(EMAIL)
        .contains(&consent.refresh_token.expose().to_string()));
    let text = output.text();
    assert!(text.contains("could not be verified"), "{text}");
}

/// A callback with another `state` (an old tab, or a forged request from anything that can
/// reach the port) is refused with 400 and does not end the flow: the right one still can.
#[tokio::test]
async fn a_wrong_state_gets_400_and_the_flow_waits_for_the_right_one() {
    let f = issuer().await;
    f.issuer.set_consent(ConsentMode::WrongState);
    let asset = asset(&f.issuer, "google", "");
    let (task, output) = start(asset, options(false), BufReader::new(tokio::io::empty()));

    let url = output.consent_url(&f.issuer.auth_url()).await;
    let exchanges_before = f.issuer.refresh_count();
    let forged = consent_screen(&url).await;
    for _ in 0..2 {
        let (status, page) = follow(&forged).await;
        assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
        assert!(page.contains("state"), "{page}");
    }
    assert_eq!(
        f.issuer.refresh_count(),
        exchanges_before,
        "the forged code must not be exchanged"
    );
    assert!(!task.is_finished(), "a wrong state must not end the flow");
    assert_eq!(f.issuer.current_refresh_tokens(EMAIL), vec![OLD_REFRESH]);

    // The user's own consent still completes the flow.
    f.issuer.set_consent(ConsentMode::Approve);
    let (status, page) = follow(&consent_screen(&url).await).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{page}");
    let consent = finish(task).await.unwrap();
    assert!(f
        .issuer
        .current_refresh_tokens(EMAIL)
        .contains(&consent.refresh_token.expose().to_string()));
    let text = output.text();
    assert!(text.contains("still waiting"), "{text}");
    assert_no_secret_in(&text, Some(&consent));
}

#[tokio::test]
async fn forged_state_is_refused_in_the_paste_flow_too() {
    let f = issuer().await;
    f.issuer.set_consent(ConsentMode::WrongState);
    let asset = asset(&f.issuer, "google", "");
    let (mut terminal, input) = tokio::io::duplex(16 * 1024);
    let (task, output) = start(asset, options(true), BufReader::new(input));

    let url = output.consent_url(&f.issuer.auth_url()).await;
    let location = consent_screen(&url).await;
    terminal
        .write_all(format!("{location}\n").as_bytes())
        .await
        .unwrap();
    let err = finish(task).await.unwrap_err();
    assert!(matches!(err, AuthorizeError::StateMismatch), "{err:?}");
    assert_eq!(f.issuer.current_refresh_tokens(EMAIL), vec![OLD_REFRESH]);
}

#[tokio::test]
async fn access_denied() {
    let f = issuer().await;
    f.issuer.set_consent(ConsentMode::Deny);
    let asset = asset(&f.issuer, "google", "");
    let (task, output) = start(asset, options(false), BufReader::new(tokio::io::empty()));

    let url = output.consent_url(&f.issuer.auth_url()).await;
    let (status, page) = follow(&consent_screen(&url).await).await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
    assert!(page.contains("denied"), "{page}");

    let err = finish(task).await.unwrap_err();
    assert!(
        matches!(err, AuthorizeError::AccessDenied { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("Allow"), "{err}");
}

#[tokio::test]
async fn no_refresh_token_explains_how_to_get_one() {
    let f = issuer().await;
    f.issuer.set_consent(ConsentMode::NoRefreshToken);
    let asset = asset(&f.issuer, "google", "");
    let (task, output) = start(asset, options(false), BufReader::new(tokio::io::empty()));

    let url = output.consent_url(&f.issuer.auth_url()).await;
    let (status, _) = follow(&consent_screen(&url).await).await;
    assert_eq!(status, reqwest::StatusCode::OK);

    let err = finish(task).await.unwrap_err();
    let AuthorizeError::NoRefreshToken { hint } = &err else {
        panic!("expected NoRefreshToken, got {err:?}");
    };
    assert!(
        hint.contains("https://myaccount.google.com/permissions"),
        "{hint}"
    );
    assert_eq!(f.issuer.current_refresh_tokens(EMAIL), vec![OLD_REFRESH]);
}

#[tokio::test]
async fn custom_provider_sends_no_google_parameters() {
    let f = issuer().await;
    let asset = asset(&f.issuer, "custom", "");
    let (task, output) = start(asset, options(false), BufReader::new(tokio::io::empty()));

    let url = output.consent_url(&f.issuer.auth_url()).await;
    let params = query(&url);
    assert!(!params.contains_key("access_type"));
    assert!(!params.contains_key("prompt"));
    follow(&consent_screen(&url).await).await;
    // The fake behaves like Google: no access_type=offline, no refresh token.
    let err = finish(task).await.unwrap_err();
    assert!(
        matches!(err, AuthorizeError::NoRefreshToken { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("offline"), "{err}");
}

#[tokio::test]
async fn timeout_closes_the_listener() {
    let f = issuer().await;
    let asset = asset(&f.issuer, "google", "");
    let options = ConsentOptions {
        timeout: Duration::from_secs(1),
        ..options(false)
    };
    let (task, output) = start(asset, options, BufReader::new(tokio::io::empty()));
    let url = output.consent_url(&f.issuer.auth_url()).await;
    let redirect_uri = query(&url)["redirect_uri"].clone();

    let err = finish(task).await.unwrap_err();
    assert!(
        matches!(err, AuthorizeError::Timeout { secs: 1 }),
        "{err:?}"
    );
    assert!(browser().get(&redirect_uri).send().await.is_err());
}

#[tokio::test]
async fn wrong_states_do_not_outlast_the_timeout() {
    let f = issuer().await;
    f.issuer.set_consent(ConsentMode::WrongState);
    let asset = asset(&f.issuer, "google", "");
    let options = ConsentOptions {
        timeout: Duration::from_secs(2),
        ..options(false)
    };
    let (task, output) = start(asset, options, BufReader::new(tokio::io::empty()));
    let url = output.consent_url(&f.issuer.auth_url()).await;
    let (status, _) = follow(&consent_screen(&url).await).await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
    let err = finish(task).await.unwrap_err();
    assert!(
        matches!(err, AuthorizeError::Timeout { secs: 2 }),
        "{err:?}"
    );
}

#[tokio::test]
async fn paste_timeout() {
    let f = issuer().await;
    let asset = asset(&f.issuer, "google", "");
    let options = ConsentOptions {
        timeout: Duration::from_secs(1),
        ..options(true)
    };
    let (_terminal, input) = tokio::io::duplex(1024);
    let (task, _output) = start(asset, options, BufReader::new(input));
    let err = finish(task).await.unwrap_err();
    assert!(
        matches!(err, AuthorizeError::Timeout { secs: 1 }),
        "{err:?}"
    );
}

#[tokio::test]
async fn explicit_loopback_redirect_uri_is_honoured() {
    let f = issuer().await;
    // A port that was free a moment ago, as an operator would register one.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let wanted = format!("http://127.0.0.1:{port}/oauth/cb");
    let asset = asset(&f.issuer, "google", &format!("redirect_uri = \"{wanted}\""));
    let (task, output) = start(asset, options(false), BufReader::new(tokio::io::empty()));

    let url = output.consent_url(&f.issuer.auth_url()).await;
    assert_eq!(query(&url)["redirect_uri"], wanted);
    // The default path is not served for this asset.
    let (status, _) = follow(&format!("http://127.0.0.1:{port}/callback")).await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND);

    let location = consent_screen(&url).await;
    assert!(location.starts_with(&wanted), "{location}");
    let (status, page) = follow(&location).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert!(page.contains("you can close this tab"), "{page}");

    let consent = finish(task).await.unwrap();
    assert_eq!(consent.redirect_uri, wanted);
    assert!(f
        .issuer
        .current_refresh_tokens(EMAIL)
        .contains(&consent.refresh_token.expose().to_string()));
}

#[tokio::test]
async fn web_client_redirect_needs_no_browser() {
    let f = issuer().await;
    let asset = asset(
        &f.issuer,
        "google",
        "redirect_uri = \"https://relay.example/oauth/callback\"",
    );
    let mut output = Vec::new();
    let err = obtain_consent(
        &asset,
        &options(false),
        BufReader::new(tokio::io::empty()),
        &mut output,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, AuthorizeError::BadRedirectUri { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("--no-browser"), "{err}");

    // With --no-browser the Web client's URI works: the fake knows it as registered.
    f.issuer
        .allow_redirect_uri(CLIENT_ID, "https://relay.example/oauth/callback");
    let (mut terminal, input) = tokio::io::duplex(16 * 1024);
    let (task, output) = start(asset, options(true), BufReader::new(input));
    let url = output.consent_url(&f.issuer.auth_url()).await;
    let location = consent_screen(&url).await;
    assert!(location.starts_with("https://relay.example/oauth/callback?"));
    terminal
        .write_all(format!("{location}\n").as_bytes())
        .await
        .unwrap();
    let consent = finish(task).await.unwrap();
    assert_eq!(consent.redirect_uri, "https://relay.example/oauth/callback");
}

#[tokio::test]
async fn a_used_code_is_an_exchange_error_with_a_hint() {
    let f = issuer().await;
    let asset = asset(&f.issuer, "google", "");
    // First run: take the code but hand it to a second run's paste prompt after the first
    // run has exchanged it.
    let (mut terminal, input) = tokio::io::duplex(16 * 1024);
    let (task, output) = start(asset.clone(), options(true), BufReader::new(input));
    let url = output.consent_url(&f.issuer.auth_url()).await;
    let location = consent_screen(&url).await;
    terminal
        .write_all(format!("{location}\n").as_bytes())
        .await
        .unwrap();
    finish(task).await.unwrap();

    let code = query(&location)["code"].clone();
    let (mut terminal, input) = tokio::io::duplex(16 * 1024);
    let (task, _output) = start(asset, options(true), BufReader::new(input));
    terminal
        .write_all(format!("{code}\n").as_bytes())
        .await
        .unwrap();
    let err = finish(task).await.unwrap_err();
    let AuthorizeError::Exchange { error, hint, .. } = &err else {
        panic!("expected Exchange, got {err:?}");
    };
    assert_eq!(error, "invalid_grant");
    assert!(hint.contains("expired or was already used"), "{hint}");
}

#[tokio::test]
async fn wrong_client_secret_is_an_exchange_error_naming_the_fix() {
    let f = issuer().await;
    let mut asset = asset(&f.issuer, "google", "");
    asset.client_secret = Secret::new("not-the-secret");
    let (task, output) = start(asset, options(false), BufReader::new(tokio::io::empty()));
    let url = output.consent_url(&f.issuer.auth_url()).await;
    follow(&consent_screen(&url).await).await;
    let err = finish(task).await.unwrap_err();
    let AuthorizeError::Exchange { error, hint, .. } = &err else {
        panic!("expected Exchange, got {err:?}");
    };
    assert_eq!(error, "invalid_client");
    assert!(hint.contains("client_secret"), "{hint}");
    assert!(!err.to_string().contains("not-the-secret"));
}

#[test]
fn default_options() {
    let options = ConsentOptions::default();
    assert_eq!(options.timeout, DEFAULT_TIMEOUT);
    assert_eq!(DEFAULT_TIMEOUT, Duration::from_secs(300));
    assert!(!options.no_browser);
}
