//! Reloading in process: a new config keeps the token state of assets whose credentials
//! did not change (SIGHUP on the binary is in tests/cli/reload.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;

/// A reload keeps the token state of assets whose credentials did not change (no second
/// refresh, one single-flight domain), and starts afresh for an asset whose did.
#[tokio::test]
async fn reload_keeps_token_state_of_unchanged_assets() {
    use smtp_oauth_relay::config;
    use smtp_oauth_relay::relay::Relay as RelayState;
    use smtp_oauth_relay::sandbox::token_issuer::IssuerAccount;

    let env = Env::start().await;
    let first = env.relay.tokens.access_token("support").await.unwrap();
    env.relay.tokens.access_token("sales").await.unwrap();
    assert_eq!(env.issuer.refresh_count(), 2);

    // Same config: nothing to refresh.
    let same = config::parse(&env.config_text, &env.path("relay.toml")).unwrap();
    let reloaded = RelayState::reloaded(same, &env.relay).unwrap();
    let again = reloaded.tokens.access_token("support").await.unwrap();
    assert!(
        !again.fresh,
        "the cached token was thrown away by the reload"
    );
    assert_eq!(again.token, first.token);
    reloaded.tokens.access_token("sales").await.unwrap();
    assert_eq!(env.issuer.refresh_count(), 2, "a reload caused a refresh");
    // Shared with the relay it replaced: running sessions of the old relay and new ones
    // of this one see the same cache.
    env.relay.tokens.invalidate("support", &first.token).await;
    assert!(reloaded.tokens.access_token("support").await.unwrap().fresh);
    assert_eq!(env.issuer.refresh_count(), 3);
    assert!(
        !env.relay
            .tokens
            .access_token("support")
            .await
            .unwrap()
            .fresh
    );
    assert_eq!(env.issuer.refresh_count(), 3);

    // The sales asset gets another refresh token: its state starts afresh; support's not.
    let other = "1//sales-other-refresh-token-Vb41";
    env.issuer.add_account(IssuerAccount {
        client_id: "sales-client".into(),
        client_secret: SALES_SECRET.into(),
        refresh_token: other.into(),
        email: SALES_EMAIL.into(),
    });
    let changed_text = env.config_text.replace(SALES_REFRESH, other);
    let changed = config::parse(&changed_text, &env.path("relay.toml")).unwrap();
    let reloaded = RelayState::reloaded(changed, &reloaded).unwrap();
    assert!(!reloaded.tokens.access_token("support").await.unwrap().fresh);
    assert!(reloaded.tokens.access_token("sales").await.unwrap().fresh);
    assert_eq!(env.issuer.refresh_count(), 4);
    env.stop().await;
}
