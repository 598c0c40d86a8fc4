//! One mailbox, many spellings: the envelope sender and the header From are decided on the
//! canonical form of the address (quotes, escapes, comments and routes removed), so an
//! exact claim of one asset cannot be bypassed through another asset's domain claim.
//!
//! The `boss` asset claims `boss@example.com` exactly; `support` claims
//! `support@example.com` and the rest of `@example.com`; `sales` only `sales@example.org`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use smtp_oauth_relay::sandbox::token_issuer::IssuerAccount;

const BOSS_EMAIL: &str = "boss@example.com";
const BOSS_SECRET: &str = "boss-client-secret-Hh42";
const BOSS_REFRESH: &str = "1//boss-refresh-token-Qr55";

async fn env_with_boss(server: &str) -> Env {
    let env = Env::with(Options {
        server: server.into(),
        extra_assets: format!(
            r#"
[[asset]]
name = "boss"
email = "{BOSS_EMAIL}"
client_id = "boss-client"
client_secret = "{BOSS_SECRET}"
refresh_token = "{BOSS_REFRESH}"
token_url = "@TOKEN_URL@"
senders = ["{BOSS_EMAIL}"]
upstream = "@UPSTREAM@"
upstream_tls = "@UPSTREAM_TLS@"
upstream_ca = "@CA@"
"#
        ),
        ..Options::default()
    })
    .await;
    env.issuer.add_account(IssuerAccount {
        client_id: "boss-client".into(),
        client_secret: BOSS_SECRET.into(),
        refresh_token: BOSS_REFRESH.into(),
        email: BOSS_EMAIL.into(),
    });
    env
}

#[tokio::test]
async fn envelope_sender_is_routed_by_its_canonical_form() {
    let env = env_with_boss("").await;
    let mut scanner = env.logged_in(SCANNER).await;
    // Spellings of boss@example.com: the boss asset's exact claim wins over support's
    // domain claim, and scanner may not use the boss asset.
    for spelling in [
        "\"boss\"@example.com",
        "\"bo\\ss\"@example.com",
        "\"BOSS\"@Example.COM",
        "@relay.example:\"boss\"@example.com",
    ] {
        let reply = scanner.mail_from(spelling, 553).await;
        assert!(
            reply.text().contains("not owned by user scanner"),
            "{spelling}: {reply}"
        );
        assert!(
            reply
                .text()
                .to_ascii_lowercase()
                .contains("<boss@example.com>"),
            "{spelling}: {reply}"
        );
    }

    // A quoted local part that is a dot-atom is the plain address, and the upstream is
    // given the plain spelling.
    scanner
        .send_mail(
            "\"support\"@Example.com",
            &["x@example.net"],
            &message("quoted-support"),
        )
        .await
        .expect_code(250);
    // A quoted local part that is not a dot-atom stays quoted: it is another mailbox than
    // any bare address, so it cannot reach an exact claim; the domain claim covers it.
    scanner
        .send_mail(
            "\"john..doe\"@example.com",
            &["x@example.net"],
            &message("quoted-other"),
        )
        .await
        .expect_code(250);
    let delivered = env.gmail.messages();
    assert_eq!(delivered.len(), 2);
    assert_eq!(delivered[0].mail_from, "support@example.com");
    assert_eq!(delivered[0].auth_user, SUPPORT_EMAIL);
    assert_eq!(delivered[1].mail_from, "\"john..doe\"@example.com");
    assert_eq!(delivered[1].auth_user, SUPPORT_EMAIL);

    // A user allowed to use the boss asset is routed to it by the quoted spelling.
    let mut admin = env.logged_in(ADMIN).await;
    admin
        .send_mail("\"boss\"@example.com", &["x@example.net"], &message("boss"))
        .await
        .expect_code(250);
    let delivered = env.gmail.messages();
    assert_eq!(delivered.len(), 3);
    assert_eq!(delivered[2].auth_user, BOSS_EMAIL);
    assert_eq!(delivered[2].mail_from, BOSS_EMAIL);
    env.stop().await;
}

fn with_from(from_lines: &str) -> Vec<u8> {
    format!("{from_lines}To: x@example.net\r\nSubject: spelled\r\n\r\nbody\r\n").into_bytes()
}

#[tokio::test]
async fn header_from_enforce_checks_the_canonical_form_of_every_from_address() {
    let env = env_with_boss("header_from = \"enforce\"").await;
    let mut client = env.logged_in(SCANNER).await;
    // (From lines, expected final reply, text the refusal must contain)
    let refused: &[(&str, &str)] = &[
        ("From: \"boss\"@example.com\r\n", "boss@example.com"),
        ("From: Boss <\"boss\"@example.com>\r\n", "boss@example.com"),
        ("From: boss(x)@example.com\r\n", "boss@example.com"),
        ("From: \"bo\\ss\"@example.com\r\n", "boss@example.com"),
        (
            "From: <@relay.example:boss@example.com>\r\n",
            "boss@example.com",
        ),
        ("From: boss @ Example . COM\r\n", "boss@example.com"),
        ("From: Boss\r\n <boss@example.com>\r\n", "boss@example.com"),
        ("From : boss@example.com\r\n", "boss@example.com"),
        (
            "From: support@example.com, boss@example.com\r\n",
            "boss@example.com",
        ),
        (
            "From: \"bo\\\"ss\"@example.org\r\n",
            "\"bo\\\"ss\"@example.org",
        ),
        // Only the last From: was checked; RFC 5322 allows exactly one.
        (
            "From: boss@example.com\r\nFrom: support@example.com\r\n",
            "more than one From",
        ),
        (
            "From: support@example.com\r\nfrom: support@example.com\r\n",
            "more than one From",
        ),
        // Not a plain mailbox list: a group, an encoded word as the address, text after
        // the address, an unterminated quote.
        ("From: Team: boss@example.com;\r\n", "cannot be read"),
        ("From: =?utf-8?q?boss?=@example.com\r\n", "cannot be read"),
        (
            "From: support@example.com <boss@example.com>\r\n",
            "cannot be read",
        ),
        (
            "From: \"Support <support@example.com>\r\n",
            "cannot be read",
        ),
        ("From:\r\n", "no From"),
    ];
    for (from, needle) in refused {
        let reply = client
            .send_mail(SUPPORT_EMAIL, &["x@example.net"], &with_from(from))
            .await;
        assert_eq!(reply.code, 550, "{from:?}: {reply}");
        assert!(reply.text().contains(needle), "{from:?}: {reply}");
    }
    // A byte that is not UTF-8 inside the address.
    let mut broken = with_from("From: su@example.com\r\n");
    broken.insert(8, 0xff);
    let reply = client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &broken)
        .await;
    assert_eq!(reply.code, 550, "{reply}");
    assert!(reply.text().contains("cannot be read"), "{reply}");
    assert!(env.gmail.messages().is_empty());

    // Spellings of addresses the asset serves pass, display names in any encoding too.
    let served = [
        "From: \"support\"@example.com\r\n",
        "From: Support <support(desk)@Example.COM>\r\n",
        "From: =?utf-8?q?S=C3=BCpport_Desk?= <support@example.com>\r\n",
        "From: \"Desk, Support\" <@relay.example:support@example.com>\r\n",
        "From: someone@example.com, \"bo\\\"ss\"@example.com\r\n",
    ];
    for from in served {
        client
            .send_mail(SUPPORT_EMAIL, &["x@example.net"], &with_from(from))
            .await
            .expect_code(250);
    }
    assert_eq!(env.gmail.messages().len(), served.len());
    env.stop().await;
}

#[tokio::test]
async fn header_from_log_lets_repeated_from_fields_through() {
    let env = env_with_boss("header_from = \"log\"").await;
    let mut client = env.logged_in(SCANNER).await;
    client
        .send_mail(
            SUPPORT_EMAIL,
            &["x@example.net"],
            &with_from("From: boss@example.com\r\nFrom: support@example.com\r\n"),
        )
        .await
        .expect_code(250);
    assert_eq!(env.gmail.messages().len(), 1);
    env.stop().await;
}
