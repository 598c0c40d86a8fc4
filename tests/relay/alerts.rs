//! Credential alerts end to end: the relay on loopback in front of the fake Gmail and token
//! issuer, the alert task running, and a real HTTP webhook receiver on 127.0.0.1 (or the
//! fake Gmail's mailbox) getting what an operator would: one alert per event, retried when
//! the receiver fails, nothing extra within `interval_secs`, and never a secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::common::*;
use smtp_oauth_relay::alerts::{self, AlertOptions};
use smtp_oauth_relay::credentials::store::StoredToken;
use smtp_oauth_relay::sandbox::token_issuer::{IssuerAccount, IssuerMode};
use smtp_oauth_relay::server::RelayHandle;

#[path = "alert_receiver.rs"]
pub(crate) mod receiver;

use receiver::{Receiver, WAIT};

/// `[alerts]` for tests: a check every second, retries after a second, plus `channels`.
fn alerts_config(extra: &str, channels: &str) -> String {
    format!("[alerts]\ncheck_secs = 1\nretry_secs = 1\n{extra}\n{channels}\n")
}

fn webhook(url: &str, format: &str) -> String {
    format!("[[alert]]\nkind = \"webhook\"\nurl = \"{url}\"\nformat = \"{format}\"\n")
}

/// Starts the alert task for `env`'s relay, as `serve` does; stops with the returned token.
fn start_alerts(env: &Env, console_base: Option<&str>) -> CancellationToken {
    let stop = CancellationToken::new();
    tokio::spawn(alerts::run(
        RelayHandle::new(env.relay.clone()),
        stop.clone(),
        AlertOptions {
            console_base: console_base.map(str::to_string),
        },
    ));
    stop
}

/// Every secret the test environment knows, for "appears nowhere" checks.
fn assert_no_secret(text: &str, extra: &[&str]) {
    for secret in [
        SUPPORT_SECRET,
        SUPPORT_REFRESH,
        SALES_SECRET,
        SALES_REFRESH,
        "ya29.",
    ]
    .iter()
    .chain(extra)
    {
        assert!(!text.contains(secret), "secret {secret:?} in {text}");
    }
}

/// Waits (bounded) until the relay's metrics contain `line`.
async fn wait_for_metric(env: &Env, line: &str) {
    let counted = tokio::time::timeout(WAIT, async {
        while !env.relay.metrics.render().contains(line) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        counted.is_ok(),
        "missing {line} in\n{}",
        env.relay.metrics.render()
    );
}

fn is_rfc3339_utc(text: &str) -> bool {
    let bytes = text.as_bytes();
    text.len() == 20
        && bytes[4] == b'-'
        && bytes[10] == b'T'
        && text.ends_with('Z')
        && text[..4].parse::<u32>().is_ok_and(|year| year >= 2024)
}

#[tokio::test]
async fn revoked_token_alerts_once_and_a_new_grant_recovers_once() {
    let mut receiver = Receiver::start(0).await;
    let env = Env::with(Options {
        support_from_store: true,
        extra_assets: alerts_config("", &webhook(&receiver.url("/hook"), "json")),
        ..Options::default()
    })
    .await;
    env.store()
        .put(
            "support",
            StoredToken::new(
                smtp_oauth_relay::credentials::secret::Secret::new(SUPPORT_REFRESH),
                Some(SUPPORT_EMAIL.into()),
                vec![],
                1,
            ),
        )
        .unwrap();
    let stop = start_alerts(&env, Some("https://relay.example.com:9025"));
    env.send_as(SCANNER, SUPPORT_EMAIL, "a@example.net", "before")
        .await
        .expect_code(250);

    // The user revokes access: the next refresh gets invalid_grant.
    assert!(env.issuer.revoke_refresh_token(SUPPORT_REFRESH));
    env.tokens.revoke_all();
    let reply = env.mail_from_as(SCANNER, SUPPORT_EMAIL).await;
    assert_eq!(reply.code, 454, "{reply:?}");
    let first = receiver.wait_for(1).await;
    assert_eq!(first[0].path, "/hook");
    let alert = first[0].json();
    assert_eq!(alert["event"], "asset_needs_attention", "{alert}");
    assert_eq!(alert["asset"], "support");
    assert_eq!(alert["email"], SUPPORT_EMAIL);
    let reason = alert["reason"].as_str().unwrap();
    assert!(
        reason.contains("invalid_grant") && reason.contains("expired or revoked"),
        "{reason}"
    );
    let fix = alert["fix"].as_str().unwrap();
    assert!(
        fix.contains("smtp-oauth-relay authorize support") && fix.contains("Generate Token"),
        "{fix}"
    );
    assert_eq!(
        alert["console_url"],
        "https://relay.example.com:9025/assets/support"
    );
    assert!(is_rfc3339_utc(alert["at"].as_str().unwrap()), "{alert}");

    // Still broken, more mail refused, several checks later: nothing more within the interval.
    for _ in 0..3 {
        let reply = env.mail_from_as(SCANNER, SUPPORT_EMAIL).await;
        assert_eq!(reply.code, 454);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert_eq!(receiver.all().len(), 1, "{:#?}", receiver.all());

    // A new consent is stored exactly as `authorize` (and the console's Generate Token) store it.
    let new_grant = "1//0support-new-grant-Qv55";
    env.issuer.add_account(IssuerAccount {
        client_id: "support-client".into(),
        client_secret: SUPPORT_SECRET.into(),
        refresh_token: new_grant.into(),
        email: SUPPORT_EMAIL.into(),
    });
    env.store()
        .put(
            "support",
            StoredToken::new(
                smtp_oauth_relay::credentials::secret::Secret::new(new_grant),
                Some(SUPPORT_EMAIL.into()),
                vec![],
                2,
            ),
        )
        .unwrap();
    env.send_as(SCANNER, SUPPORT_EMAIL, "a@example.net", "after")
        .await
        .expect_code(250);
    let all = receiver.wait_for(2).await;
    let recovered = all[1].json();
    assert_eq!(recovered["event"], "asset_recovered", "{recovered}");
    assert_eq!(recovered["asset"], "support");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.all().len(), 2, "{:#?}", receiver.all());
    for request in receiver.all() {
        assert_no_secret(&request.body, &[new_grant]);
    }
    for expected in [
        "smtp_oauth_relay_alerts_total{channel=\"webhook\",event=\"asset_needs_attention\",result=\"sent\"} 1",
        "smtp_oauth_relay_alerts_total{channel=\"webhook\",event=\"asset_recovered\",result=\"sent\"} 1",
    ] {
        wait_for_metric(&env, expected).await;
    }
    stop.cancel();
    env.stop().await;
}

// A current-thread runtime, so the captured subscriber sees every task's log lines.
#[tokio::test]
async fn secrets_a_provider_echoes_stay_out_of_payloads_and_logs() {
    let (captured, _guard) = capture_logs_at(tracing::Level::TRACE);

    let mut receiver = Receiver::start(0).await;
    let channels = [
        webhook(&receiver.url("/json"), "json"),
        webhook(&receiver.url("/slack"), "slack"),
        webhook(&receiver.url("/teams"), "teams"),
    ]
    .concat();
    let env = Env::with(Options {
        extra_assets: alerts_config("", &channels),
        ..Options::default()
    })
    .await;
    let stop = start_alerts(&env, None);
    // The provider refuses, repeating the refresh token and client secret it was sent.
    env.issuer.set_mode(IssuerMode::InvalidGrantEcho);
    env.tokens.revoke_all();
    let reply = env.mail_from_as(APP, SALES_EMAIL).await;
    assert_eq!(reply.code, 454, "{reply:?}");
    let all = receiver.wait_for(3).await;
    let mut paths: Vec<&str> = all.iter().map(|r| r.path.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(paths, ["/json", "/slack", "/teams"]);
    for request in &all {
        assert_no_secret(&request.body, &[]);
        // The echo did arrive, and was cut out (Slack's text escapes the angle brackets).
        assert!(
            request.body.contains("<redacted>") || request.body.contains("&lt;redacted&gt;"),
            "{}",
            request.body
        );
        let json = request.json();
        match request.path.as_str() {
            "/json" => {
                assert_eq!(json["event"], "asset_needs_attention");
                assert_eq!(json["asset"], "sales");
                assert!(json.get("console_url").is_none(), "console off: {json}");
            }
            "/slack" => assert!(json["text"].as_str().unwrap().contains("asset sales")),
            _ => assert_eq!(json["attachments"][0]["content"]["type"], "AdaptiveCard"),
        }
    }
    // The webhook has the requests; the relay logs "alert sent" once it has read the
    // answers, which may be a moment later: wait for it (bounded) before stopping.
    for _ in 0..100 {
        if captured.text().matches("alert sent").count() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    stop.cancel();
    env.stop().await;
    let logs = captured.text();
    assert!(logs.contains("alert sent"), "{logs}");
    assert_no_secret(&logs, &[]);
}

#[tokio::test]
async fn a_time_limited_grant_and_a_client_secret_end_are_announced_once() {
    let mut receiver = Receiver::start(0).await;
    let in_two_days = time::OffsetDateTime::now_utc().date() + time::Duration::days(2);
    let expiring_asset = format!(
        r#"
[[asset]]
name = "rotating"
email = "rotating@example.net"
client_id = "rotating-client"
client_secret = "rotating-client-secret-Ty12"
refresh_token = "1//rotating-refresh"
senders = ["rotating@example.net"]
upstream = "@UPSTREAM@"
upstream_tls = "@UPSTREAM_TLS@"
upstream_ca = "@CA@"
token_url = "@TOKEN_URL@"
client_secret_expires = "{in_two_days}"
"#
    );
    let env = Env::with(Options {
        extra_assets: format!(
            "{expiring_asset}\n{}",
            alerts_config("", &webhook(&receiver.url("/hook"), "json"))
        ),
        ..Options::default()
    })
    .await;
    // Like a Google app in "Testing": grants die a week after consent (here: in 5 hours).
    env.issuer
        .set_refresh_token_lifetime(Some(Duration::from_secs(5 * 3600)));
    let stop = start_alerts(&env, None);
    env.send_as(SCANNER, SUPPORT_EMAIL, "a@example.net", "refresh")
        .await
        .expect_code(250);
    let all = receiver.wait_for(2).await;
    let secret_alert = receiver.events("client_secret_expiring");
    assert_eq!(secret_alert.len(), 1, "{all:#?}");
    assert_eq!(secret_alert[0]["asset"], "rotating");
    assert!(
        secret_alert[0]["reason"]
            .as_str()
            .unwrap()
            .contains("in 2 day(s)"),
        "{}",
        secret_alert[0]
    );
    let expiring = receiver.events("refresh_token_expiring");
    assert_eq!(expiring.len(), 1, "{all:#?}");
    let alert = &expiring[0];
    assert_eq!(alert["asset"], "support");
    let reason = alert["reason"].as_str().unwrap();
    assert!(
        reason.contains("time-limited")
            && (reason.contains("(in 4 h 59 min)") || reason.contains("(in 5 h 0 min)")),
        "{reason}"
    );
    assert!(
        alert["fix"].as_str().unwrap().contains("In production"),
        "{alert}"
    );
    assert!(
        is_rfc3339_utc(alert["expires_at"].as_str().unwrap()),
        "{alert}"
    );

    // The same forecast for `check` and the console.
    let support = env.relay.config.asset("support").unwrap().clone();
    let forecast = alerts::asset_forecast(&env.relay.tokens, &env.relay.config, &support)
        .await
        .unwrap();
    assert_eq!(forecast.cause, alerts::forecast::ExpiryCause::Stated);

    // More refreshes restate the same end: no second alert.
    env.send_as(SCANNER, SUPPORT_EMAIL, "a@example.net", "again")
        .await
        .expect_code(250);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.all().len(), 2, "{:#?}", receiver.all());
    stop.cancel();
    env.stop().await;
}

#[tokio::test]
async fn a_failing_receiver_gets_retries_then_the_alert() {
    // Two 500s, then success: the third attempt delivers the same payload.
    let mut receiver = Receiver::start(2).await;
    let env = Env::with(Options {
        extra_assets: alerts_config("max_attempts = 4", &webhook(&receiver.url("/hook"), "json")),
        ..Options::default()
    })
    .await;
    let stop = start_alerts(&env, None);
    env.issuer.set_mode(IssuerMode::InvalidGrant);
    env.tokens.revoke_all();
    assert_eq!(env.mail_from_as(APP, SALES_EMAIL).await.code, 454);
    let all = receiver.wait_for(3).await;
    assert!(all.iter().all(|r| r.body == all[0].body), "{all:#?}");
    assert_eq!(all[0].json()["event"], "asset_needs_attention");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.all().len(), 3, "{:#?}", receiver.all());
    wait_for_metric(
        &env,
        "smtp_oauth_relay_alerts_total{channel=\"webhook\",event=\"asset_needs_attention\",result=\"sent\"} 1",
    )
    .await;
    stop.cancel();
    env.stop().await;
}

#[tokio::test]
async fn a_receiver_that_keeps_failing_is_given_up_on_and_counted() {
    let mut receiver = Receiver::start(usize::MAX).await;
    let env = Env::with(Options {
        extra_assets: alerts_config("max_attempts = 2", &webhook(&receiver.url("/hook"), "json")),
        ..Options::default()
    })
    .await;
    let stop = start_alerts(&env, None);
    env.issuer.set_mode(IssuerMode::InvalidGrant);
    env.tokens.revoke_all();
    assert_eq!(env.mail_from_as(APP, SALES_EMAIL).await.code, 454);
    receiver.wait_for(2).await;
    wait_for_metric(
        &env,
        "smtp_oauth_relay_alerts_total{channel=\"webhook\",event=\"asset_needs_attention\",result=\"failed\"} 1",
    )
    .await;
    assert_eq!(receiver.all().len(), 2);
    stop.cancel();
    env.stop().await;
}

#[tokio::test]
async fn mail_alerts_go_through_a_healthy_asset() {
    let env = Env::with(Options {
        extra_assets: alerts_config(
            "",
            "[[alert]]\nkind = \"email\"\nto = \"ops@example.net\"\nasset = \"sales\"\n",
        ),
        ..Options::default()
    })
    .await;
    let stop = start_alerts(&env, None);
    // Only the support asset breaks; its alert goes out through sales.
    assert!(env.issuer.revoke_refresh_token(SUPPORT_REFRESH));
    env.tokens.revoke_all();
    assert_eq!(env.mail_from_as(SCANNER, SUPPORT_EMAIL).await.code, 454);
    assert!(env.gmail.wait_for_messages(1, WAIT).await, "no alert mail");
    let delivered = env.gmail.messages();
    assert_eq!(delivered.len(), 1, "{delivered:#?}");
    let mail = &delivered[0];
    assert_eq!(mail.auth_user, SALES_EMAIL);
    assert_eq!(mail.mail_from, SALES_EMAIL);
    assert_eq!(mail.rcpt_to, ["ops@example.net"]);
    let text = String::from_utf8_lossy(&mail.data);
    assert!(
        text.contains(
            "Subject: smtp-oauth-relay: asset support (support@example.com) needs attention"
        ),
        "{text}"
    );
    assert!(text.contains("invalid_grant"), "{text}");
    assert_no_secret(&text, &[]);
    // Counted once the final reply is in, just after the fake stored the message.
    wait_for_metric(
        &env,
        "smtp_oauth_relay_alerts_total{channel=\"email\",event=\"asset_needs_attention\",result=\"sent\"} 1",
    )
    .await;
    stop.cancel();
    env.stop().await;
}

#[tokio::test]
async fn a_provider_refusing_fresh_tokens_needs_attention() {
    let mut receiver = Receiver::start(0).await;
    let env = Env::with(Options {
        // The token endpoint is happy, but the provider refuses every token it issues (as
        // Gmail does for another account's token, or with SMTP AUTH off for the mailbox).
        upstream_refuses_tokens: true,
        extra_assets: alerts_config("", &webhook(&receiver.url("/hook"), "json")),
        ..Options::default()
    })
    .await;
    let stop = start_alerts(&env, None);
    let reply = env.mail_from_as(SCANNER, SUPPORT_EMAIL).await;
    assert!(reply.code >= 400, "{reply:?}");
    let all = receiver.wait_for(1).await;
    let alert = all[0].json();
    assert_eq!(alert["event"], "asset_needs_attention", "{alert}");
    assert_eq!(alert["asset"], "support");
    assert!(
        alert["reason"]
            .as_str()
            .unwrap()
            .contains("the provider refused a freshly refreshed access token"),
        "{alert}"
    );
    assert!(
        alert["fix"].as_str().unwrap().contains("SMTP AUTH"),
        "{alert}"
    );
    assert_no_secret(&all[0].body, &[]);
    stop.cancel();
    env.stop().await;
}

/// An env with a Microsoft asset "m365" whose stored refresh token was last used 89.5 days
/// ago (Microsoft drops it in 12 hours), alerts going to `hook`.
async fn microsoft_token_dying_unused(hook: &str) -> Env {
    let microsoft_asset = r#"
[[asset]]
name = "m365"
email = "m365@example.net"
provider = "microsoft"
client_id = "m365-client"
client_secret = "m365-client-secret-Hh40"
senders = ["m365@example.net"]
upstream = "@UPSTREAM@"
upstream_tls = "@UPSTREAM_TLS@"
upstream_ca = "@CA@"
token_url = "@TOKEN_URL@"
"#;
    let env = Env::with(Options {
        extra_assets: format!(
            "{microsoft_asset}\n{}",
            alerts_config("", &webhook(hook, "json"))
        ),
        ..Options::default()
    })
    .await;
    env.issuer.add_account(IssuerAccount {
        client_id: "m365-client".into(),
        client_secret: "m365-client-secret-Hh40".into(),
        refresh_token: "1//m365-refresh".into(),
        email: "m365@example.net".into(),
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    env.store()
        .put(
            "m365",
            StoredToken::new(
                smtp_oauth_relay::credentials::secret::Secret::new("1//m365-refresh"),
                Some("m365@example.net".into()),
                vec![],
                now - (89 * 24 + 12) * 3600,
            ),
        )
        .unwrap();
    env
}

#[tokio::test]
async fn a_token_about_to_die_unused_is_kept_alive_instead_of_announced() {
    let receiver = Receiver::start(0).await;
    let env = microsoft_token_dying_unused(&receiver.url("/hook")).await;
    let m365 = env.relay.config.asset("m365").unwrap().clone();
    let before = alerts::asset_forecast(&env.relay.tokens, &env.relay.config, &m365)
        .await
        .unwrap();
    assert_eq!(before.cause, alerts::forecast::ExpiryCause::MicrosoftUnused);
    assert!(before.remaining(std::time::SystemTime::now()) < Duration::from_secs(13 * 3600));

    let refreshes = env.issuer.refresh_count();
    let stop = start_alerts(&env, None);
    let renewed = tokio::time::timeout(WAIT, async {
        loop {
            let forecast = alerts::asset_forecast(&env.relay.tokens, &env.relay.config, &m365)
                .await
                .unwrap();
            if forecast.remaining(std::time::SystemTime::now())
                > Duration::from_secs(89 * 24 * 3600)
            {
                return forecast;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the keep-alive refresh renews the forecast");
    assert_eq!(
        renewed.cause,
        alerts::forecast::ExpiryCause::MicrosoftUnused
    );
    assert_eq!(env.issuer.refresh_count(), refreshes + 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(receiver.all().is_empty(), "{:#?}", receiver.all());
    // Still exactly one refresh: a renewed token is not refreshed again.
    assert_eq!(env.issuer.refresh_count(), refreshes + 1);
    stop.cancel();
    env.stop().await;
}

#[tokio::test]
async fn a_token_dying_unused_that_cannot_be_kept_alive_is_announced() {
    let mut receiver = Receiver::start(0).await;
    let env = microsoft_token_dying_unused(&receiver.url("/hook")).await;
    // The token endpoint is down (a temporary failure): the keep-alive cannot renew it.
    env.issuer.set_mode(IssuerMode::ServerError);
    let stop = start_alerts(&env, None);
    let all = receiver.wait_for(1).await;
    let alert = all[0].json();
    assert_eq!(alert["event"], "refresh_token_expiring", "{alert}");
    assert_eq!(alert["asset"], "m365");
    let reason = alert["reason"].as_str().unwrap();
    assert!(
        reason.contains("expires if unused until") && reason.contains("90 days"),
        "{reason}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.all().len(), 1, "{:#?}", receiver.all());
    assert_no_secret(
        &all[0].body,
        &["m365-client-secret-Hh40", "1//m365-refresh"],
    );
    stop.cancel();
    env.stop().await;
}
