//! [`TokenError`]: every way getting an access token can fail, sorted by who can fix it
//! (the provider's next attempt, or an operator), with the hint `check`, `token` and the
//! logs give for each.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The provider says the refresh token is dead (`invalid_grant`): only a human can fix it.
    #[error("the refresh token of asset \"{asset}\" was refused by the token endpoint ({error}: {description}); the account needs re-authorization")]
    NeedsReauthorization {
        asset: String,
        error: String,
        description: String,
    },
    /// The OAuth client or its configuration is refused (`invalid_client`,
    /// `unauthorized_client`, `unsupported_grant_type`, `invalid_scope`).
    #[error("the token endpoint refused the OAuth client of asset \"{asset}\" ({error}: {description}); check client_id and client_secret")]
    ClientRejected {
        asset: String,
        error: String,
        description: String,
    },
    /// Network trouble, timeouts, any 5xx or 429, an OAuth error code that is not about the
    /// credentials (`temporarily_unavailable`, unknown codes): the next attempt may well work.
    #[error("the token endpoint of asset \"{asset}\" is unavailable: {reason}")]
    Unavailable { asset: String, reason: String },
    #[error("cannot read the refresh token of asset \"{asset}\" from {path}: {reason}")]
    RefreshTokenFile {
        asset: String,
        path: String,
        reason: String,
    },
    /// The store has no token for the asset yet.
    #[error("asset \"{asset}\" has no refresh token in the token store; run `smtp-oauth-relay authorize {asset}`")]
    NotAuthorized { asset: String },
    #[error("the token store cannot be used for asset \"{asset}\": {reason}")]
    Store { asset: String, reason: String },
    /// Google refused the service account's signed assertion (delegation, key, clock).
    #[error("the token endpoint refused the service account of asset \"{asset}\" ({error}: {description})")]
    ServiceAccountRejected {
        asset: String,
        error: String,
        description: String,
    },
}

impl TokenError {
    /// True when retrying cannot help until an operator acts (re-authorize, fix the client,
    /// fix the token store or file).
    pub fn needs_operator(&self) -> bool {
        !matches!(self, TokenError::Unavailable { .. })
    }

    /// True when the provider refused the asset's credentials (or there are none yet): the
    /// only failures `credential_failure = "permanent"` may turn into a bounce. A store or
    /// file the relay cannot read says nothing about the mail, which must stay queued.
    pub fn is_credential_refusal(&self) -> bool {
        matches!(
            self,
            TokenError::NeedsReauthorization { .. }
                | TokenError::ClientRejected { .. }
                | TokenError::ServiceAccountRejected { .. }
                | TokenError::NotAuthorized { .. }
        )
    }

    pub fn asset(&self) -> &str {
        match self {
            TokenError::NeedsReauthorization { asset, .. }
            | TokenError::ClientRejected { asset, .. }
            | TokenError::Unavailable { asset, .. }
            | TokenError::RefreshTokenFile { asset, .. }
            | TokenError::NotAuthorized { asset }
            | TokenError::Store { asset, .. }
            | TokenError::ServiceAccountRejected { asset, .. } => asset,
        }
    }

    /// What the operator should do, for the log line and `check`.
    pub fn hint(&self) -> String {
        self.hint_template().replace("ASSET", self.asset())
    }

    fn hint_template(&self) -> &'static str {
        match self {
            TokenError::NeedsReauthorization { .. } => {
                "run `smtp-oauth-relay authorize ASSET` to consent again (or replace the refresh token the \
                 asset is configured with); usual causes: the OAuth consent screen is in \"Testing\" \
                 (refresh tokens expire after 7 days), the user revoked access or changed the password, \
                 or the token was unused for 6 months"
            }
            TokenError::NotAuthorized { .. } => {
                "run `smtp-oauth-relay authorize ASSET` once to store a refresh token"
            }
            TokenError::Store { .. } => {
                "fix the token store named in [tokens] (permissions 0600, the right key); it is never reset automatically"
            }
            TokenError::ServiceAccountRejected { .. } => {
                "in the Workspace admin console, allow the service account's client ID the scope \
                 https://mail.google.com/ (domain-wide delegation); the asset's email must be a mailbox \
                 of that domain; check the system clock"
            }
            TokenError::ClientRejected { .. } => {
                "check client_id/client_secret against the provider console, and that the client may use this grant"
            }
            TokenError::Unavailable { .. } => {
                "the relay answers 454 and clients retry; check network access to the token URL"
            }
            TokenError::RefreshTokenFile { .. } => "check the refresh_token_file path and permissions",
        }
    }
}
