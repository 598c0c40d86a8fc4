//! App-only Microsoft credentials (issue 13, `grant = "client_credentials"`) over SMTP:
//! the token comes from the client id and secret alone (the fake issuer's
//! client-credentials grant, answering like Entra), is cached and single-flighted like
//! any other, the XOAUTH2 user is the asset's `email`, nothing touches the token store,
//! and neither the secret nor the token reaches a log line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::*;
use smtp_oauth_relay::sandbox::token_issuer::apps::AppRegistration;

const APP_EMAIL: &str = "alerts@contoso.example";
const APP_SECRET: &str = "m365-app-secret-Vq7~Yd3";

fn app_asset() -> String {
    format!(
        r#"
[[asset]]
name = "m365app"
email = "{APP_EMAIL}"
provider = "microsoft"
grant = "client_credentials"
client_id = "m365-app"
client_secret_file = "@DIR@/m365.secret"
senders = ["{APP_EMAIL}"]
upstream = "@UPSTREAM@"
upstream_tls = "@UPSTREAM_TLS@"
upstream_ca = "@CA@"
token_url = "@TOKEN_URL@"
"#
    )
}

async fn env_with_app(permissions: &[&str], mailboxes: &[&str]) -> Env {
    let env = Env::with(Options {
        extra_assets: app_asset(),
        files: vec![("m365.secret".into(), format!("{APP_SECRET}\n"))],
        ..Options::default()
    })
    .await;
    env.issuer.add_app(AppRegistration {
        client_id: "m365-app".into(),
        client_secret: APP_SECRET.into(),
        permissions: permissions.iter().map(|p| p.to_string()).collect(),
        mailboxes: mailboxes.iter().map(|m| m.to_string()).collect(),
    });
    env
}

const SMTP_SEND_AS_APP: &str = "https://outlook.office365.com/SMTP.SendAsApp";

#[tokio::test]
async fn app_only_tokens_send_over_smtp_with_the_mailbox_as_xoauth2_user() {
    let env = env_with_app(&[SMTP_SEND_AS_APP], &[APP_EMAIL]).await;
    // Five sessions at once while the token endpoint is slow: one token request.
    env.issuer.set_delay(Duration::from_millis(300));
    let before = env.issuer.refresh_count();
    let sends = (0..5).map(|n| {
        let env = &env;
        async move {
            env.send_as(ADMIN, APP_EMAIL, "to@example.net", &format!("app-only {n}"))
                .await
        }
    });
    for reply in futures_util::future::join_all(sends).await {
        assert_eq!(reply.code, 250, "{reply:?}");
    }
    assert_eq!(env.issuer.refresh_count() - before, 1, "single flight");
    // Cached for the next message.
    let reply = env
        .send_as(ADMIN, APP_EMAIL, "to@example.net", "cached")
        .await;
    assert_eq!(reply.code, 250);
    assert_eq!(env.issuer.refresh_count() - before, 1, "cached");
    let delivered = env.gmail.messages();
    assert_eq!(delivered.len(), 6);
    assert!(delivered.iter().all(|m| m.auth_user == APP_EMAIL));
    // Nothing was stored.
    assert!(!env.path("tokens.json").exists());
    env.stop().await;
}

#[tokio::test]
async fn refused_app_credentials_are_told_apart() {
    // Without SMTP.SendAsApp the token has no roles: the SMTP server refuses it (after one
    // fresh token), and the client hears 454.
    let env = env_with_app(&["https://graph.microsoft.com/Mail.Send"], &[]).await;
    let reply = env.mail_from_as(ADMIN, APP_EMAIL).await;
    assert_eq!(reply.code, 454, "{reply:?}");
    assert!(env.gmail.messages().is_empty());
    env.stop().await;

    // An application access policy that leaves the mailbox out: the same.
    let env = env_with_app(&[SMTP_SEND_AS_APP], &["someone-else@contoso.example"]).await;
    let reply = env.mail_from_as(ADMIN, APP_EMAIL).await;
    assert_eq!(reply.code, 454, "{reply:?}");
    env.stop().await;

    // A wrong secret: Entra's invalid_client, the operator's to fix.
    let env = env_with_app(&[SMTP_SEND_AS_APP], &[]).await;
    env.issuer.add_app(AppRegistration {
        client_id: "other".into(),
        client_secret: "x".into(),
        permissions: vec![],
        mailboxes: vec![],
    });
    let tokens = smtp_oauth_relay::oauth::token::TokenManager::new(&{
        let text = env
            .config_text
            .replace("client_id = \"m365-app\"", "client_id = \"other\"");
        std::fs::write(env.path("other.toml"), &text).unwrap();
        smtp_oauth_relay::config::load(&env.path("other.toml")).unwrap()
    })
    .unwrap();
    let error = tokens.access_token("m365app").await.unwrap_err();
    assert!(error.needs_operator(), "{error}");
    assert!(error.to_string().contains("invalid_client"), "{error}");
    assert!(!error.to_string().contains(APP_SECRET));
    env.stop().await;
}

#[tokio::test]
async fn app_only_secrets_and_tokens_stay_out_of_trace_logs() {
    let (captured, _guard) = capture_logs_at(tracing::Level::TRACE);
    let env = env_with_app(&[SMTP_SEND_AS_APP], &[]).await;
    let reply = env
        .send_as(ADMIN, APP_EMAIL, "to@example.net", "trace")
        .await;
    assert_eq!(reply.code, 250);
    let tokens = env.tokens.app_tokens();
    assert!(!tokens.is_empty());
    env.stop().await;
    let logs = captured.text();
    assert!(
        logs.contains("access token refreshed"),
        "logs were captured"
    );
    assert!(!logs.contains(APP_SECRET), "client secret logged");
    for token in tokens {
        // The JWT's signature part is unique to the token.
        let signature = token.rsplit('.').next().unwrap();
        assert!(!logs.contains(signature), "access token logged");
    }
}
