//! Generate Token when the consent does not work out: the operator denies access, or
//! signs in as another account. The page says what happened and what to do, and nothing
//! is stored (an earlier grant would stay in use).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use smtp_oauth_relay::sandbox::token_issuer::ConsentMode;

use crate::common::*;
use crate::harness::{Browser, Console};

/// Generate Token for `support` through the fake provider; the callback page.
async fn generate(browser: &mut Browser) -> crate::harness::Page {
    let csrf = browser.csrf().await;
    let start = browser
        .post("/assets/support/generate", &[("csrf", &csrf)])
        .await;
    assert_eq!(start.status, 303, "{}", start.body);
    let provider = browser.get_without_cookies(&start.location.unwrap()).await;
    assert_eq!(provider.status, 302, "{}", provider.body);
    browser
        .get_without_cookies(&provider.location.unwrap())
        .await
}

#[tokio::test]
async fn denied_or_wrong_account_consents_store_nothing() {
    let options = Options {
        support_from_store: true,
        ..Options::default()
    };
    let console = Console::start(options, "users = [\"admin\"]").await;
    let mut browser = console.logged_in(ADMIN).await;

    console.env.issuer.set_consent(ConsentMode::Deny);
    let denied = generate(&mut browser).await;
    assert_eq!(denied.status, 502, "{}", denied.body);
    assert!(denied.body.contains("access was denied"), "{}", denied.body);
    assert!(
        denied.body.contains("nothing was stored"),
        "{}",
        denied.body
    );

    console.env.issuer.set_consent(ConsentMode::Approve);
    console.env.issuer.set_consent_email(SALES_EMAIL);
    let wrong = generate(&mut browser).await;
    assert_eq!(wrong.status, 502, "{}", wrong.body);
    assert!(
        wrong
            .body
            .contains("given by another account than support@example.com"),
        "{}",
        wrong.body
    );
    assert!(console.env.store().get("support").unwrap().is_none());

    // The asset page keeps the last result and the asset still needs attention.
    let page = browser.get("/assets/support").await;
    assert!(page.body.contains("another account"), "{}", page.body);
    assert!(page.body.contains("needs attention"), "{}", page.body);
}
