//! An asset over its provider's sending limit (issue 16) as the operator sees it: the
//! Assets page, `/readyz` (still ready) and the metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use smtp_oauth_relay::limits::{unix_now, ProviderQuota};

use crate::common::*;
use crate::harness::Console;

#[tokio::test]
async fn the_over_limit_mark_shows_on_the_assets_page_readyz_and_metrics() {
    let console = Console::start(Options::default(), "users = [\"admin\"]").await;
    let asset = console.relay.config.asset("support").unwrap().clone();
    let quota = ProviderQuota {
        for_secs: 3600,
        reason: "550 5.4.5 Daily user sending limit exceeded".into(),
    };
    console
        .relay
        .limits
        .provider_refused(&asset, &quota, unix_now())
        .await;
    let mut browser = console.logged_in(ADMIN).await;
    let page = browser.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("limit until"), "{}", page.body);
    assert!(
        page.body
            .contains("5.4.5 Daily user sending limit exceeded"),
        "{}",
        page.body
    );
    let ready = browser.get("/readyz").await;
    assert_eq!(
        ready.status, 200,
        "one marked asset does not make the relay unready"
    );
    assert!(
        ready
            .body
            .contains("asset support: over the provider's limit until"),
        "{}",
        ready.body
    );
    assert!(ready.body.contains("asset sales: ok"), "{}", ready.body);
    let metrics = browser.get("/metrics").await;
    assert!(
        metrics
            .body
            .contains("smtp_oauth_relay_asset_over_provider_limit{asset=\"support\"} 1"),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains("smtp_oauth_relay_asset_limit_remaining{asset=\"support\",limit=\"daily_messages\"} 2000"),
        "{}",
        metrics.body
    );
}
