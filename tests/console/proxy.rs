//! Behind a TLS-terminating reverse proxy: `public_url` sets the callback URL, the path
//! prefix of every link and cookie, and makes cookies Secure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use crate::harness::Console;

#[tokio::test]
async fn public_url_sets_the_callback_links_and_cookies() {
    let console = Console::start(
        Options::default(),
        "users = [\"admin\"]\nallow_plaintext = true\npublic_url = \"https://relay.example.com/admin/\"",
    )
    .await;
    // The proxy strips /admin before passing requests on.
    let mut browser = console.browser();
    let form = browser.get("/login").await;
    assert!(
        form.body.contains("action=\"/admin/login\""),
        "{}",
        form.body
    );
    let response = browser.login(ADMIN.0, ADMIN.1).await;
    assert_eq!(response.location.as_deref(), Some("/admin/"));
    let session = &response.set_cookies[0];
    assert!(session.contains("Path=/admin;"), "{session}");
    assert!(session.contains("; Secure"), "{session}");
    let page = browser.get("/assets/support").await;
    assert!(
        page.body
            .contains("https://relay.example.com/admin/oauth/callback"),
        "{}",
        page.body
    );
    assert!(page
        .body
        .contains("action=\"/admin/assets/support/generate\""));
}
