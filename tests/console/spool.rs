//! The console's Spool page (issue 15): what waits and the dead letters, behind a session
//! like every page.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::*;
use crate::harness::Console;
use smtp_oauth_relay::sandbox::gmail::Behaviour;

#[tokio::test]
async fn spool_page_lists_waiting_messages_and_dead_letters() {
    let console = Console::start(
        Options {
            scanner_delivery: Some("spool".into()),
            spool: "dir = \"@DIR@/spool\"\nretry_secs = [3600]".into(),
            ..Options::default()
        },
        "users = [\"admin\"]",
    )
    .await;
    let mut browser = console.browser();
    let page = browser.get("/spool").await;
    assert_eq!(
        (page.status, page.location.as_deref()),
        (303, Some("/login"))
    );
    console.env.gmail.set_behaviour(Behaviour {
        greeting: Some("421 4.7.0 Try again later".into()),
        ..Behaviour::default()
    });
    let mut client = Client::connect(console.smtp_addr).await;
    client.ehlo().await;
    client
        .auth_plain(SCANNER.0, SCANNER.1)
        .await
        .expect_code(235);
    let reply = client
        .send_mail(SUPPORT_EMAIL, &["waiting@example.net"], &message("page"))
        .await
        .expect_code(250);
    client.quit().await;
    let id = reply
        .to_string()
        .split("queued as ")
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    let mut browser = console.logged_in(ADMIN).await;
    let mut body = String::new();
    for _ in 0..100 {
        body = browser.get("/spool").await.body;
        if body.contains("Try again later") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(body.contains(&id), "{body}");
    assert!(body.contains("waiting@example.net"), "{body}");
    assert!(body.contains("1 waiting, 0 dead letters"), "{body}");
    assert!(
        body.contains("Try again later"),
        "the last error is shown: {body}"
    );
    assert!(body.contains("No dead letters."), "{body}");
    assert!(browser.get("/").await.body.contains("href=\"/spool\""));
}
