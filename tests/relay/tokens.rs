//! Issue 3 end to end, in process: the token store as a refresh-token source (including a
//! token written while the relay runs), rotation persisted across a restart, the failure
//! back-off, per-asset failure isolation, single-flight refresh, service accounts, Google's
//! client JSON files and the encrypted store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;
use smtp_oauth_relay::config::{self, ConfigError, RefreshTokenSource};
use smtp_oauth_relay::credentials::secret::Secret;
use smtp_oauth_relay::credentials::store::{StoreKey, StoredToken, TokenStore};
use smtp_oauth_relay::oauth::token::TokenError;
use smtp_oauth_relay::sandbox::token_issuer::{
    IssuerAccount, IssuerMode, ServiceAccount, GMAIL_SCOPE,
};
use smtp_oauth_relay::smtp::reply::Reply;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// What `authorize` stores for `email`.
fn grant(refresh_token: &str, email: &str) -> StoredToken {
    StoredToken::new(
        Secret::new(refresh_token),
        Some(email.to_string()),
        vec![GMAIL_SCOPE.to_string()],
        now(),
    )
}

fn store_options() -> Options {
    Options {
        support_from_store: true,
        ..Options::default()
    }
}

/// Logs in as `user` and sends MAIL FROM; returns the reply (the session is dropped).
async fn mail_from(env: &Env, user: (&str, &str), from: &str) -> Reply {
    env.mail_from_as(user, from).await
}

/// Sends one message as `user` from `from`, expecting 250.
async fn send_ok(env: &Env, user: (&str, &str), from: &str, subject: &str) {
    env.send_as(user, from, "rcpt@example.net", subject)
        .await
        .expect_code(250);
}

#[track_caller]
fn assert_names_asset(reply: &Reply, asset: &str) {
    let text = reply.to_string();
    assert_eq!(reply.code, 454, "{text}");
    assert!(text.contains("4.7.0"), "{text}");
    assert!(
        text.contains(&format!("\"{asset}\"")),
        "reply should name asset {asset}: {text}"
    );
}

fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

// ---------------------------------------------------------------------------------------
// 1-3: the store as the refresh-token source
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn asset_without_refresh_token_reads_it_from_the_store() {
    let env = Env::with(store_options()).await;
    assert_eq!(
        env.relay.config.asset("support").unwrap().refresh_token,
        RefreshTokenSource::Store
    );
    env.store()
        .put("support", grant(SUPPORT_REFRESH, SUPPORT_EMAIL))
        .unwrap();

    send_ok(&env, SCANNER, SUPPORT_EMAIL, "from-store").await;
    let delivered = env.gmail.messages();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].auth_user, SUPPORT_EMAIL);
    assert_eq!(env.issuer.refresh_count(), 1);
    env.stop().await;
}

#[tokio::test]
async fn token_stored_while_running_is_used_at_once_despite_the_back_off() {
    let env = Env::with(Options {
        support_from_store: true,
        timeouts: "token_retry_secs = 30".into(),
        ..Options::default()
    })
    .await;

    let reply = mail_from(&env, SCANNER, SUPPORT_EMAIL).await;
    assert_names_asset(&reply, "support");
    let status = env.relay.tokens.status("support").await.unwrap();
    let error = status.last_error.expect("the failure is remembered");
    assert!(
        matches!(error, TokenError::NotAuthorized { ref asset } if asset == "support"),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("run `smtp-oauth-relay authorize support`"),
        "{error}"
    );
    // Within the back-off nothing changes...
    assert_names_asset(&mail_from(&env, SCANNER, SUPPORT_EMAIL).await, "support");
    assert_eq!(env.issuer.refresh_count(), 0, "no token, no token request");

    // ...until `authorize` writes the store: no restart, no waiting 30 s.
    env.store()
        .put("support", grant(SUPPORT_REFRESH, SUPPORT_EMAIL))
        .unwrap();
    send_ok(&env, SCANNER, SUPPORT_EMAIL, "after-authorize").await;
    assert_eq!(env.gmail.messages().len(), 1);
    assert!(env
        .relay
        .tokens
        .status("support")
        .await
        .unwrap()
        .last_error
        .is_none());
    env.stop().await;
}

#[tokio::test]
async fn rotated_refresh_token_is_persisted_and_survives_a_restart() {
    let mut env = Env::with(store_options()).await;
    let store_path = env.path("tokens.json");
    env.store()
        .put("support", grant(SUPPORT_REFRESH, SUPPORT_EMAIL))
        .unwrap();
    let obtained_at = env.store().get("support").unwrap().unwrap().obtained_at;
    env.issuer.set_rotate_refresh_tokens(true);

    send_ok(&env, SCANNER, SUPPORT_EMAIL, "rotation-1").await;
    let issuer_tokens = env.issuer.current_refresh_tokens(SUPPORT_EMAIL);
    assert_eq!(issuer_tokens.len(), 1, "the old token is invalid now");
    assert_ne!(issuer_tokens[0], SUPPORT_REFRESH);
    let stored = env.store().get("support").unwrap().unwrap();
    assert_ne!(stored.refresh_token.expose(), SUPPORT_REFRESH);
    assert_eq!(stored.refresh_token.expose(), issuer_tokens[0]);
    assert_eq!(stored.account.as_deref(), Some(SUPPORT_EMAIL));
    assert_eq!(stored.obtained_at, obtained_at, "same grant, only rotated");
    assert_eq!(mode_of(&store_path), 0o600);

    // A new process: nothing in memory, only the store.
    env.restart_relay().await;
    send_ok(&env, SCANNER, SUPPORT_EMAIL, "rotation-2").await;
    assert_eq!(env.gmail.messages().len(), 2);
    // It rotated again, and again the store has the one the issuer accepts.
    let issuer_tokens = env.issuer.current_refresh_tokens(SUPPORT_EMAIL);
    let stored = env.store().get("support").unwrap().unwrap();
    assert_eq!(
        issuer_tokens,
        vec![stored.refresh_token.expose().to_string()]
    );
    assert_eq!(mode_of(&store_path), 0o600);
    env.stop().await;
}

// ---------------------------------------------------------------------------------------
// 4-6: failures and concurrency
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn failed_refresh_is_not_retried_within_the_back_off() {
    let env = Env::with(Options {
        timeouts: "token_retry_secs = 2".into(),
        ..Options::default()
    })
    .await;
    env.issuer.set_mode(IssuerMode::ServerError);
    let reply = mail_from(&env, SCANNER, SUPPORT_EMAIL).await;
    assert_eq!(reply.code, 454, "{reply}");
    let requests = env.issuer.refresh_count();
    assert!(requests >= 1);

    env.issuer.set_mode(IssuerMode::Normal);
    let reply = mail_from(&env, SCANNER, SUPPORT_EMAIL).await;
    assert_eq!(reply.code, 454, "still backing off: {reply}");
    assert_eq!(
        env.issuer.refresh_count(),
        requests,
        "a session within the back-off must not hit the token endpoint"
    );

    tokio::time::sleep(Duration::from_millis(2500)).await;
    send_ok(&env, SCANNER, SUPPORT_EMAIL, "after-back-off").await;
    assert_eq!(env.issuer.refresh_count(), requests + 1);
    env.stop().await;
}

// A current-thread runtime: every task of the relay and its fakes runs on this thread, so
// the thread-local subscriber sees all their events.
#[tokio::test]
async fn revoked_asset_needs_reauthorization_while_the_other_keeps_working() {
    let (captured, _guard) = capture_logs_at(tracing::Level::INFO);

    let env = Env::start().await;
    assert!(env.issuer.revoke_refresh_token(SUPPORT_REFRESH));

    let reply = mail_from(&env, SCANNER, SUPPORT_EMAIL).await;
    assert_names_asset(&reply, "support");
    assert!(reply.text().contains("needs re-authorization"), "{reply}");
    send_ok(&env, APP, SALES_EMAIL, "sales-unaffected").await;
    let delivered = env.gmail.messages();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].auth_user, SALES_EMAIL);
    env.stop().await;

    let log = captured.text();
    let error_lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("ERROR"))
        .filter(|line| line.contains("support"))
        .collect();
    assert!(
        error_lines.iter().any(|line| line.contains("invalid_grant")
            && line.contains("smtp-oauth-relay authorize support")),
        "no ERROR line naming the asset, invalid_grant and the command:\n{log}"
    );
    assert!(
        !log.lines()
            .any(|line| line.contains("ERROR") && line.contains("asset=sales")),
        "sales must not be reported:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_sessions_cause_one_refresh() {
    let env = Arc::new(
        Env::with(Options {
            limits: "max_connections = 300\nmax_connections_per_ip = 300".into(),
            ..Options::default()
        })
        .await,
    );
    env.issuer.set_delay(Duration::from_millis(300));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let env = env.clone();
        tasks.spawn(async move {
            let user = if i % 2 == 0 { ADMIN } else { SCANNER };
            let mut client = env.logged_in(user).await;
            let reply = client
                .send_mail(
                    SUPPORT_EMAIL,
                    &["rcpt@example.net"],
                    &message(&format!("burst-{i}")),
                )
                .await;
            client.quit().await;
            reply
        });
    }
    while let Some(reply) = tasks.join_next().await {
        reply.unwrap().expect_code(250);
    }
    assert_eq!(env.gmail.messages().len(), 100);
    assert_eq!(env.issuer.refresh_count(), 1, "single flight");
    Arc::into_inner(env).unwrap().stop().await;
}

// ---------------------------------------------------------------------------------------
// 7: service account with domain-wide delegation
// ---------------------------------------------------------------------------------------

const DELEGATED: &str = "mailbox@example.net";
const NOT_DELEGATED: &str = "outsider@example.net";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn service_account_asset(name: &str, email: &str) -> String {
    format!(
        r#"
[[asset]]
name = "{name}"
email = "{email}"
service_account_json = "{json}"
token_url = "@TOKEN_URL@"
senders = ["{email}"]
upstream = "@UPSTREAM@"
upstream_tls = "@UPSTREAM_TLS@"
upstream_ca = "@CA@"
"#,
        json = fixture("service-account.json")
    )
}

#[tokio::test]
async fn service_account_asset_sends_as_the_delegated_mailbox() {
    let env = Env::with(Options {
        extra_assets: service_account_asset("delegated", DELEGATED)
            + &service_account_asset("undelegated", NOT_DELEGATED),
        ..Options::default()
    })
    .await;
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("service-account.json")).unwrap())
            .unwrap();
    let client_email = json["client_email"].as_str().unwrap().to_string();
    env.issuer.add_service_account(ServiceAccount {
        client_email: client_email.clone(),
        public_key_pem: std::fs::read_to_string(fixture("service-account-test-pub.pem")).unwrap(),
        allowed_subjects: vec![DELEGATED.to_string()],
    });

    send_ok(&env, ADMIN, DELEGATED, "delegated").await;
    let delivered = env.gmail.messages();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].auth_user, DELEGATED);
    let status = env.relay.tokens.status("delegated").await.unwrap();
    assert!(status.source.contains(&client_email), "{}", status.source);

    // A mailbox the delegation does not cover.
    let reply = mail_from(&env, ADMIN, NOT_DELEGATED).await;
    assert_names_asset(&reply, "undelegated");
    let status = env.relay.tokens.status("undelegated").await.unwrap();
    let error = status.last_error.expect("failure remembered");
    assert!(
        matches!(&error, TokenError::ServiceAccountRejected { asset, error, .. }
            if asset == "undelegated" && error == "unauthorized_client"),
        "{error:?}"
    );
    assert!(error.hint().contains("domain-wide delegation"), "{error}");

    let config = &env.relay.config;
    let asset = config.asset("undelegated").unwrap();
    let result = smtp_oauth_relay::cli::check::check_asset(config, &env.relay.tokens, asset).await;
    let mut report = Vec::new();
    assert!(!smtp_oauth_relay::cli::check::report(
        std::slice::from_ref(&result),
        &mut report
    ));
    let report = String::from_utf8(report).unwrap();
    assert!(report.contains("asset undelegated: FAILED"), "{report}");
    assert!(report.contains("unauthorized_client"), "{report}");
    assert!(report.contains("delegation"), "{report}");
    env.stop().await;
}

// ---------------------------------------------------------------------------------------
// 8: Google's client JSON ("Download JSON"), both kinds
// ---------------------------------------------------------------------------------------

const INSTALLED_EMAIL: &str = "desktop@example.net";
const WEB_EMAIL: &str = "web@example.net";
const INSTALLED_REFRESH: &str = "1//installed-refresh-token-Qa10";
const WEB_REFRESH: &str = "1//web-refresh-token-Wb20";

const INSTALLED_JSON: &str = r#"{"installed":{"client_id":"installed-client.apps.googleusercontent.com","project_id":"relay-test","auth_uri":"@AUTH_URL@","token_uri":"@TOKEN_URL@","auth_provider_x509_cert_url":"https://www.googleapis.com/oauth2/v1/certs","client_secret":"GOCSPX-installed-secret","redirect_uris":["http://localhost"]}}"#;
const WEB_JSON: &str = r#"{"web":{"client_id":"web-client.apps.googleusercontent.com","project_id":"relay-test","auth_uri":"@AUTH_URL@","token_uri":"@TOKEN_URL@","auth_provider_x509_cert_url":"https://www.googleapis.com/oauth2/v1/certs","client_secret":"GOCSPX-web-secret","redirect_uris":["https://example.com/cb","http://127.0.0.1:8765/oauth"],"javascript_origins":["https://example.com"]}}"#;

fn client_json_asset(name: &str, email: &str, file: &str, extra: &str) -> String {
    format!(
        r#"
[[asset]]
name = "{name}"
email = "{email}"
client_json = "@DIR@/{file}"
{extra}
senders = ["{email}"]
upstream = "@UPSTREAM@"
upstream_tls = "@UPSTREAM_TLS@"
upstream_ca = "@CA@"
"#
    )
}

#[tokio::test]
async fn google_client_json_files_of_both_kinds_configure_the_asset() {
    let env = Env::with(Options {
        files: vec![
            ("installed.json".into(), INSTALLED_JSON.into()),
            ("web.json".into(), WEB_JSON.into()),
        ],
        extra_assets: client_json_asset("desktop", INSTALLED_EMAIL, "installed.json", "")
            + &client_json_asset("webapp", WEB_EMAIL, "web.json", ""),
        ..Options::default()
    })
    .await;
    let config = &env.relay.config;
    let desktop = config.asset("desktop").unwrap();
    assert_eq!(
        desktop.client_id,
        "installed-client.apps.googleusercontent.com"
    );
    assert_eq!(desktop.client_secret.expose(), "GOCSPX-installed-secret");
    assert_eq!(desktop.token_url, env.issuer.token_url());
    assert_eq!(desktop.auth_url, env.issuer.auth_url());
    assert_eq!(
        desktop.redirect_uri, None,
        "Desktop clients: any loopback port"
    );
    assert_eq!(desktop.refresh_token, RefreshTokenSource::Store);
    let web = config.asset("webapp").unwrap();
    assert_eq!(web.client_id, "web-client.apps.googleusercontent.com");
    assert_eq!(web.client_secret.expose(), "GOCSPX-web-secret");
    assert_eq!(web.token_url, env.issuer.token_url());
    assert_eq!(web.auth_url, env.issuer.auth_url());
    assert_eq!(
        web.redirect_uri.as_deref(),
        Some("http://127.0.0.1:8765/oauth"),
        "a Web client uses its registered loopback redirect"
    );

    for (client_id, secret, refresh, email) in [
        (
            "installed-client.apps.googleusercontent.com",
            "GOCSPX-installed-secret",
            INSTALLED_REFRESH,
            INSTALLED_EMAIL,
        ),
        (
            "web-client.apps.googleusercontent.com",
            "GOCSPX-web-secret",
            WEB_REFRESH,
            WEB_EMAIL,
        ),
    ] {
        env.issuer.add_account(IssuerAccount {
            client_id: client_id.into(),
            client_secret: secret.into(),
            refresh_token: refresh.into(),
            email: email.into(),
        });
    }
    let store = env.store();
    store
        .put("desktop", grant(INSTALLED_REFRESH, INSTALLED_EMAIL))
        .unwrap();
    store.put("webapp", grant(WEB_REFRESH, WEB_EMAIL)).unwrap();

    send_ok(&env, ADMIN, INSTALLED_EMAIL, "desktop-client").await;
    send_ok(&env, ADMIN, WEB_EMAIL, "web-client").await;
    let users: Vec<String> = env
        .gmail
        .messages()
        .into_iter()
        .map(|m| m.auth_user)
        .collect();
    assert_eq!(users, vec![INSTALLED_EMAIL, WEB_EMAIL]);

    // client_json together with client_id: an error naming the field.
    let dir = env.path("");
    let with = |asset: String| {
        let text = format!("{}\n{asset}", env.config_text);
        config::parse(
            &text.replace("@DIR@", dir.to_str().unwrap()),
            &env.path("x.toml"),
        )
    };
    let upstream = env.gmail.addr().to_string();
    let err = with(
        client_json_asset(
            "both",
            "both@example.net",
            "installed.json",
            "client_id = \"other-client\"",
        )
        .replace("@UPSTREAM@", &upstream)
        .replace("@UPSTREAM_TLS@", "starttls")
        .replace("@CA@", env.path("ca.pem").to_str().unwrap()),
    )
    .unwrap_err();
    let ConfigError::Invalid { problems, .. } = &err else {
        panic!("{err}");
    };
    assert!(
        problems
            .iter()
            .any(|p| p.field == "asset[4].client_id" && p.message.contains("client_json")),
        "{err}"
    );
    assert!(err.to_string().contains("client_id"), "{err}");

    // A JSON file that is neither kind.
    std::fs::write(
        env.path("neither.json"),
        r#"{"other":{"client_id":"x","client_secret":"y","auth_uri":"https://a","token_uri":"https://b"}}"#,
    )
    .unwrap();
    let err = with(
        client_json_asset("neither", "neither@example.net", "neither.json", "")
            .replace("@UPSTREAM@", &upstream)
            .replace("@UPSTREAM_TLS@", "starttls")
            .replace("@CA@", env.path("ca.pem").to_str().unwrap()),
    )
    .unwrap_err();
    let ConfigError::Invalid { problems, .. } = &err else {
        panic!("{err}");
    };
    assert!(
        problems.iter().any(|p| p.field == "asset[4].client_json"),
        "{err}"
    );
    assert!(err.to_string().contains("client_json"), "{err}");
    env.stop().await;
}

// ---------------------------------------------------------------------------------------
// 9: the encrypted store
// ---------------------------------------------------------------------------------------

fn encrypted_options(key: &str) -> Options {
    Options {
        support_from_store: true,
        files: vec![("store.key".into(), format!("{key}\n"))],
        tokens: "key_file = \"@DIR@/store.key\"".into(),
        ..Options::default()
    }
}

#[tokio::test]
async fn encrypted_store_works_and_keeps_the_token_off_the_disk() {
    let key = StoreKey::generate().unwrap();
    let env = Env::with(encrypted_options(&key)).await;
    assert!(env.relay.config.tokens.key.is_some());
    // What `authorize` does: the same path, the same key.
    TokenStore::new(
        env.path("tokens.json"),
        Some(StoreKey::parse(&key).unwrap()),
    )
    .put("support", grant(SUPPORT_REFRESH, SUPPORT_EMAIL))
    .unwrap();
    send_ok(&env, SCANNER, SUPPORT_EMAIL, "encrypted").await;
    assert_eq!(env.gmail.messages().len(), 1);

    let on_disk = std::fs::read_to_string(env.path("tokens.json")).unwrap();
    assert!(!on_disk.contains(SUPPORT_REFRESH), "{on_disk}");
    assert!(!on_disk.contains("refresh_token"), "{on_disk}");
    assert!(!on_disk.contains(SUPPORT_EMAIL), "{on_disk}");
    assert!(on_disk.contains("chacha20-poly1305"), "{on_disk}");
    assert_eq!(mode_of(&env.path("tokens.json")), 0o600);
    env.stop().await;
}

#[tokio::test]
async fn wrong_store_key_is_a_clear_store_error() {
    let right = StoreKey::generate().unwrap();
    let wrong = StoreKey::generate().unwrap();
    let env = Env::with(encrypted_options(&wrong)).await;
    TokenStore::new(
        env.path("tokens.json"),
        Some(StoreKey::parse(&right).unwrap()),
    )
    .put("support", grant(SUPPORT_REFRESH, SUPPORT_EMAIL))
    .unwrap();
    let before = std::fs::read(env.path("tokens.json")).unwrap();

    let reply = mail_from(&env, SCANNER, SUPPORT_EMAIL).await;
    assert_names_asset(&reply, "support");
    let error = env
        .relay
        .tokens
        .status("support")
        .await
        .unwrap()
        .last_error
        .expect("failure remembered");
    assert!(matches!(error, TokenError::Store { .. }), "{error:?}");
    assert!(
        error.to_string().contains("cannot decrypt the token store"),
        "{error}"
    );
    assert_eq!(env.issuer.refresh_count(), 0);

    let config = &env.relay.config;
    let asset = config.asset("support").unwrap();
    let result = smtp_oauth_relay::cli::check::check_asset(config, &env.relay.tokens, asset).await;
    let mut report = Vec::new();
    assert!(!smtp_oauth_relay::cli::check::report(
        std::slice::from_ref(&result),
        &mut report
    ));
    let report = String::from_utf8(report).unwrap();
    assert!(report.contains("asset support: FAILED"), "{report}");
    assert!(
        report.contains("cannot decrypt the token store"),
        "{report}"
    );
    assert!(report.contains("the right key"), "{report}");
    // Never "repaired" by overwriting.
    assert_eq!(std::fs::read(env.path("tokens.json")).unwrap(), before);
    env.stop().await;
}

// ---------------------------------------------------------------------------------------
// More lifecycle: re-authorization after invalid_grant, rotation without a store, and
// rotation racing a concurrent `authorize`
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn reauthorizing_a_revoked_store_asset_works_without_restart() {
    let env = Env::with(Options {
        support_from_store: true,
        timeouts: "token_retry_secs = 30".into(),
        ..Options::default()
    })
    .await;
    env.store()
        .put("support", grant(SUPPORT_REFRESH, SUPPORT_EMAIL))
        .unwrap();
    assert!(env.issuer.revoke_refresh_token(SUPPORT_REFRESH));
    let reply = mail_from(&env, SCANNER, SUPPORT_EMAIL).await;
    assert_names_asset(&reply, "support");
    assert!(reply.text().contains("needs re-authorization"), "{reply}");
    let error = env
        .relay
        .tokens
        .status("support")
        .await
        .unwrap()
        .last_error
        .unwrap();
    assert!(
        matches!(&error, TokenError::NeedsReauthorization { error, .. } if error == "invalid_grant"),
        "{error:?}"
    );
    // The revoked token is still in the store: nothing ever discards one.
    assert_eq!(
        env.store()
            .get("support")
            .unwrap()
            .unwrap()
            .refresh_token
            .expose(),
        SUPPORT_REFRESH
    );

    // A new consent (what `authorize` ends with), while the relay runs.
    let second = "1//support-second-grant-Rt55";
    env.issuer.add_account(IssuerAccount {
        client_id: "support-client".into(),
        client_secret: SUPPORT_SECRET.into(),
        refresh_token: second.into(),
        email: SUPPORT_EMAIL.into(),
    });
    env.store()
        .put("support", grant(second, SUPPORT_EMAIL))
        .unwrap();
    send_ok(&env, SCANNER, SUPPORT_EMAIL, "re-authorized").await;
    env.stop().await;
}

#[tokio::test]
async fn rotated_token_of_a_read_only_source_is_kept_in_memory() {
    let env = Env::start().await;
    env.issuer.set_rotate_refresh_tokens(true);
    send_ok(&env, SCANNER, SUPPORT_EMAIL, "rotate-file-1").await;
    let rotated = env.issuer.current_refresh_tokens(SUPPORT_EMAIL);
    assert_eq!(rotated.len(), 1);
    assert_ne!(rotated[0], SUPPORT_REFRESH, "the file's token is dead now");
    // The file is never rewritten by the relay.
    assert_eq!(
        std::fs::read_to_string(env.path("support.refresh"))
            .unwrap()
            .trim(),
        SUPPORT_REFRESH
    );
    // The cached access token is refused: the next refresh must use the rotated token.
    env.tokens.revoke_all();
    send_ok(&env, SCANNER, SUPPORT_EMAIL, "rotate-file-2").await;
    assert_eq!(env.gmail.messages().len(), 2);
    env.stop().await;
}

/// The relay rotates the refresh token it read, while `authorize` stores a new grant: the
/// relay's write, based on what it read before, must not replace the newer grant.
#[tokio::test]
async fn rotation_does_not_overwrite_a_grant_stored_meanwhile() {
    let env = Env::with(store_options()).await;
    env.store()
        .put("support", grant(SUPPORT_REFRESH, SUPPORT_EMAIL))
        .unwrap();
    env.issuer.set_rotate_refresh_tokens(true);
    env.issuer.set_delay(Duration::from_millis(600));
    let second = "1//support-newer-grant-Hj66";
    env.issuer.add_account(IssuerAccount {
        client_id: "support-client".into(),
        client_secret: SUPPORT_SECRET.into(),
        refresh_token: second.into(),
        email: SUPPORT_EMAIL.into(),
    });

    let sending = async {
        send_ok(&env, SCANNER, SUPPORT_EMAIL, "racing-authorize").await;
    };
    let authorizing = async {
        // While the relay's refresh request is in flight (counted before the delay).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while env.issuer.refresh_count() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "no refresh request");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        env.store()
            .put("support", grant(second, SUPPORT_EMAIL))
            .unwrap();
    };
    tokio::join!(sending, authorizing);

    let stored = env.store().get("support").unwrap().unwrap();
    assert_eq!(
        stored.refresh_token.expose(),
        second,
        "the relay replaced a grant stored after it read the store with the rotation of the older one"
    );
    env.stop().await;
}

// ---------------------------------------------------------------------------------------
// Issue 9: what a token endpoint's errors mean, provider-supplied durations, the rotation
// that could not be saved, URLs from files
// ---------------------------------------------------------------------------------------

/// A provider hiccup (5xx, 429, an OAuth error code that is not about the credentials) is
/// temporary: 454 even with `credential_failure = "permanent"`, the asset stays ready, and
/// it is logged as a warning, never as "needs the operator".
#[tokio::test]
async fn transient_token_endpoint_errors_are_temporary_even_when_failures_are_permanent() {
    let (captured, _guard) = capture_logs_at(tracing::Level::INFO);

    let env = Env::with(Options {
        server: "credential_failure = \"permanent\"".into(),
        ..Options::default()
    })
    .await;
    for (status, error) in [
        (503, "temporarily_unavailable"),
        (429, "rate_limit_exceeded"),
        (500, "invalid_client"),
        (503, "invalid_grant"),
        (400, "some_future_error_code"),
    ] {
        env.issuer
            .set_mode(IssuerMode::OAuthError { status, error });
        let reply = mail_from(&env, SCANNER, SUPPORT_EMAIL).await;
        assert_eq!(reply.code, 454, "HTTP {status} {error}: {reply}");
        assert!(reply.to_string().contains("4.7.0"), "{reply}");
        assert!(reply.text().contains("try again later"), "{reply}");
        let error_seen = env
            .relay
            .tokens
            .status("support")
            .await
            .unwrap()
            .last_error
            .expect("the failure is remembered");
        assert!(
            matches!(error_seen, TokenError::Unavailable { .. }),
            "HTTP {status} {error}: {error_seen:?}"
        );
        assert!(!error_seen.needs_operator(), "{error_seen:?}");
    }
    let metrics = env.relay.metrics.render();
    assert!(
        metrics.contains("smtp_oauth_relay_asset_ready{asset=\"support\"} 1"),
        "{metrics}"
    );

    // The credential errors keep their meaning.
    env.issuer.set_mode(IssuerMode::OAuthError {
        status: 401,
        error: "invalid_client",
    });
    let reply = mail_from(&env, SCANNER, SUPPORT_EMAIL).await;
    assert_eq!(reply.code, 535, "{reply}");
    assert!(matches!(
        env.relay.tokens.status("support").await.unwrap().last_error,
        Some(TokenError::ClientRejected { .. })
    ));
    env.issuer.set_mode(IssuerMode::Normal);
    send_ok(&env, SCANNER, SUPPORT_EMAIL, "recovered").await;
    env.stop().await;

    let log = captured.text();
    let temporary: Vec<&str> = log
        .lines()
        .filter(|line| !line.contains("sandbox"))
        .filter(|line| {
            line.contains("temporarily_unavailable") || line.contains("some_future_error_code")
        })
        .collect();
    assert!(!temporary.is_empty(), "no log line for the hiccups:\n{log}");
    assert!(
        temporary
            .iter()
            .all(|line| line.contains("WARN") && !line.contains("re-authorization")),
        "a provider hiccup is a warning, not an operator problem:\n{log}"
    );
}

/// `credential_failure = "permanent"` is for credentials the provider refused, never for
/// a token store or file the relay cannot use: that mail must stay in the client's queue.
#[tokio::test]
async fn store_errors_never_bounce_even_when_failures_are_permanent() {
    let right = StoreKey::generate().unwrap();
    let wrong = StoreKey::generate().unwrap();
    let env = Env::with(Options {
        server: "credential_failure = \"permanent\"".into(),
        ..encrypted_options(&wrong)
    })
    .await;
    TokenStore::new(
        env.path("tokens.json"),
        Some(StoreKey::parse(&right).unwrap()),
    )
    .put("support", grant(SUPPORT_REFRESH, SUPPORT_EMAIL))
    .unwrap();
    let reply = mail_from(&env, SCANNER, SUPPORT_EMAIL).await;
    assert_names_asset(&reply, "support");
    assert!(matches!(
        env.relay.tokens.status("support").await.unwrap().last_error,
        Some(TokenError::Store { .. })
    ));
    env.stop().await;
}

/// `Instant + Duration::from_secs(u64::MAX)` overflows: a provider's expires_in must never
/// panic the session (nor every later session of the asset).
#[tokio::test]
async fn huge_expires_in_is_clamped_instead_of_panicking() {
    let env = Env::start().await;
    env.issuer.set_expires_in(u64::MAX);
    send_ok(&env, SCANNER, SUPPORT_EMAIL, "huge-expires-in-1").await;
    send_ok(&env, SCANNER, SUPPORT_EMAIL, "huge-expires-in-2").await;
    assert_eq!(env.issuer.refresh_count(), 1, "the clamped token is cached");
    let valid_for = env
        .relay
        .tokens
        .status("support")
        .await
        .unwrap()
        .access_token_valid_for
        .unwrap();
    assert!(valid_for <= Duration::from_secs(24 * 3600), "{valid_for:?}");
    assert_eq!(env.gmail.messages().len(), 2);
    env.stop().await;
}

/// Saving a rotated refresh token fails (the relay keeps it in memory), then `authorize`
/// stores a new grant: the next refresh must use the new grant, not the old lineage, and
/// must not replace it in the store.
#[tokio::test]
async fn unsaved_rotation_does_not_replace_a_grant_authorized_later() {
    let env = Env::with(store_options()).await;
    env.store()
        .put("support", grant(SUPPORT_REFRESH, SUPPORT_EMAIL))
        .unwrap();
    env.issuer.set_rotate_refresh_tokens(true);
    // Writers lock `<store>.lock`; a directory there makes every write fail while reads
    // (which take no lock) keep working. (Tests may run as root: modes would not stop it.)
    let lock = env.path("tokens.json.lock");
    let _ = std::fs::remove_file(&lock);
    std::fs::create_dir(&lock).unwrap();

    send_ok(&env, SCANNER, SUPPORT_EMAIL, "rotation-not-saved").await;
    let old_lineage = env.issuer.current_refresh_tokens(SUPPORT_EMAIL);
    assert_eq!(old_lineage.len(), 1);
    let unsaved = old_lineage[0].clone();
    assert_ne!(unsaved, SUPPORT_REFRESH);
    assert_eq!(
        env.store()
            .get("support")
            .unwrap()
            .unwrap()
            .refresh_token
            .expose(),
        SUPPORT_REFRESH,
        "the save failed"
    );

    // `authorize` runs and stores a new grant.
    std::fs::remove_dir(&lock).unwrap();
    let second = "1//support-authorized-later-Qp12";
    env.issuer.add_account(IssuerAccount {
        client_id: "support-client".into(),
        client_secret: SUPPORT_SECRET.into(),
        refresh_token: second.into(),
        email: SUPPORT_EMAIL.into(),
    });
    env.store()
        .put("support", grant(second, SUPPORT_EMAIL))
        .unwrap();

    // The cached access token is refused upstream: the relay refreshes.
    env.tokens.revoke_all();
    send_ok(&env, SCANNER, SUPPORT_EMAIL, "after-authorize").await;

    let valid = env.issuer.current_refresh_tokens(SUPPORT_EMAIL);
    assert!(
        valid.contains(&unsaved),
        "the relay used the old lineage instead of the new grant: {valid:?}"
    );
    assert!(
        !valid.iter().any(|t| t == second),
        "the new grant was not used"
    );
    let stored = env.store().get("support").unwrap().unwrap();
    assert_ne!(stored.refresh_token.expose(), unsaved);
    assert!(
        valid.contains(&stored.refresh_token.expose().to_string()),
        "the store holds the new grant's rotation"
    );
    env.stop().await;
}

/// The relay retries saving a rotation it could not save, as soon as the store works again.
#[tokio::test]
async fn unsaved_rotation_is_saved_at_the_next_refresh() {
    let env = Env::with(store_options()).await;
    env.store()
        .put("support", grant(SUPPORT_REFRESH, SUPPORT_EMAIL))
        .unwrap();
    env.issuer.set_rotate_refresh_tokens(true);
    let lock = env.path("tokens.json.lock");
    let _ = std::fs::remove_file(&lock);
    std::fs::create_dir(&lock).unwrap();
    send_ok(&env, SCANNER, SUPPORT_EMAIL, "rotation-not-saved").await;
    std::fs::remove_dir(&lock).unwrap();
    env.issuer.set_rotate_refresh_tokens(false);
    env.tokens.revoke_all();
    send_ok(&env, SCANNER, SUPPORT_EMAIL, "rotation-saved-later").await;
    let valid = env.issuer.current_refresh_tokens(SUPPORT_EMAIL);
    let stored = env.store().get("support").unwrap().unwrap();
    assert_eq!(valid, vec![stored.refresh_token.expose().to_string()]);
    env.stop().await;
}

/// Plain http to a token endpoint is allowed on loopback only, also when the URL comes from
/// a client JSON or a service-account key file rather than the config itself.
#[tokio::test]
async fn http_token_uri_from_a_file_must_be_loopback() {
    let env = Env::start().await;
    let dir = env.path("");
    let parse = |asset: String| {
        let text = format!("{}\n{asset}", env.config_text)
            .replace("@DIR@", dir.to_str().unwrap())
            .replace("@UPSTREAM@", &env.gmail.addr().to_string())
            .replace("@UPSTREAM_TLS@", "starttls")
            .replace("@CA@", env.path("ca.pem").to_str().unwrap())
            .replace("@TOKEN_URL@", "http://oauth.example.net/token");
        config::parse(&text, &env.path("x.toml"))
    };
    let insecure = "http://oauth.example.net/token";

    std::fs::write(
        env.path("insecure-client.json"),
        INSTALLED_JSON
            .replace("@AUTH_URL@", "https://accounts.example.net/auth")
            .replace("@TOKEN_URL@", insecure),
    )
    .unwrap();
    let err = parse(client_json_asset(
        "insecure",
        "insecure@example.net",
        "insecure-client.json",
        "",
    ))
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("plain http is only allowed on loopback"),
        "{text}"
    );
    assert!(text.contains("client_json"), "{text}");

    let mut key: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("service-account.json")).unwrap())
            .unwrap();
    key["token_uri"] = serde_json::Value::String(insecure.to_string());
    std::fs::write(env.path("insecure-sa.json"), key.to_string()).unwrap();
    let asset = format!(
        r#"
[[asset]]
name = "insecure-sa"
email = "{DELEGATED}"
service_account_json = "@DIR@/insecure-sa.json"
senders = ["{DELEGATED}"]
upstream = "@UPSTREAM@"
upstream_tls = "@UPSTREAM_TLS@"
upstream_ca = "@CA@"
"#
    );
    let err = parse(asset).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("plain http is only allowed on loopback"),
        "{text}"
    );
    assert!(text.contains("service_account_json"), "{text}");

    // A loopback http token_uri in a key file stays fine (the sandbox, tests).
    key["token_uri"] = serde_json::Value::String(env.issuer.token_url());
    std::fs::write(env.path("loopback-sa.json"), key.to_string()).unwrap();
    let asset = format!(
        r#"
[[asset]]
name = "loopback-sa"
email = "{DELEGATED}"
service_account_json = "@DIR@/loopback-sa.json"
senders = ["{DELEGATED}"]
upstream = "@UPSTREAM@"
upstream_tls = "@UPSTREAM_TLS@"
upstream_ca = "@CA@"
"#
    );
    parse(asset).unwrap();
    env.stop().await;
}
