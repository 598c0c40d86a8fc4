//! What an alert says: the event kinds the issue names and one [`Alert`], the same
//! content whatever channel carries it (JSON, Slack, Teams, mail).

use std::time::SystemTime;

/// The kinds of event, named as in the payload's `event` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// The asset cannot send until an operator acts (refresh token revoked or expired,
    /// client refused, provider refusing fresh tokens, token store unusable).
    AssetNeedsAttention,
    /// An asset that needed attention works again.
    AssetRecovered,
    /// The refresh token is foreseen to die soon ([`super::forecast`]).
    RefreshTokenExpiring,
    /// `client_secret_expires` is near.
    ClientSecretExpiring,
    /// The provider refused mail for quota; the relay answers the asset's mail with 451
    /// itself until the mark ends (issue 16).
    AssetOverProviderLimit,
}

impl EventKind {
    pub const ALL: [EventKind; 5] = [
        EventKind::AssetNeedsAttention,
        EventKind::AssetRecovered,
        EventKind::RefreshTokenExpiring,
        EventKind::ClientSecretExpiring,
        EventKind::AssetOverProviderLimit,
    ];

    /// The payload's `event` value and the metrics label.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::AssetNeedsAttention => "asset_needs_attention",
            EventKind::AssetRecovered => "asset_recovered",
            EventKind::RefreshTokenExpiring => "refresh_token_expiring",
            EventKind::ClientSecretExpiring => "client_secret_expiring",
            EventKind::AssetOverProviderLimit => "asset_over_provider_limit",
        }
    }

    /// A short headline for chat messages and mail subjects.
    pub fn headline(self) -> &'static str {
        match self {
            EventKind::AssetNeedsAttention => "needs attention",
            EventKind::AssetRecovered => "works again",
            EventKind::RefreshTokenExpiring => "refresh token expiring",
            EventKind::ClientSecretExpiring => "client secret expiring",
            EventKind::AssetOverProviderLimit => "over the provider's sending limit",
        }
    }
}

/// One alert about one asset. Texts are built from the relay's own error texts and hints,
/// which never hold a secret; [`super::format`] still redacts the asset's secrets from
/// every payload, in case a provider repeated one in its error text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub event: EventKind,
    pub asset: String,
    /// The asset's mailbox.
    pub email: String,
    /// What happened, in words.
    pub reason: String,
    /// What the operator should do.
    pub fix: String,
    /// The console page of the asset, when the console is on.
    pub console_url: Option<String>,
    pub at: SystemTime,
    /// For the `*_expiring` events: the foreseen end.
    pub expires_at: Option<SystemTime>,
}
