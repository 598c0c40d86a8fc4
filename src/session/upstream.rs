//! Getting an authenticated upstream for a transaction: access token, connection,
//! STARTTLS or implicit TLS, `AUTH XOAUTH2`, with one retry on a fresh token when a
//! cached one is refused. Failures are logged for the operator and answered through
//! `replies` (`Say::for_failure`).

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::Session;
use crate::config::Asset;
use crate::error::RelayError;
use crate::metrics::Metrics;
use crate::replies::Say;
use crate::smtp::reply::Reply;
use crate::upstream::{Step, Upstream, UpstreamError};

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Session<IO> {
    pub(super) async fn open_upstream(&self, asset: &Asset) -> Result<Upstream, Reply> {
        let relay = &self.relay;
        let mode = relay.config.server.credential_failure;
        let started = Instant::now();
        let mut retried = false;
        loop {
            let attempt = async {
                let token = relay.tokens.access_token(&asset.name).await?;
                let connecting = Instant::now();
                let mut upstream = Upstream::connect(&asset.upstream, &relay.upstream).await?;
                Metrics::observe(
                    &relay.metrics.upstream_connect_seconds,
                    connecting.elapsed(),
                );
                let authenticating = Instant::now();
                let authenticated = upstream.authenticate(&asset.email, &token.token).await;
                Metrics::observe(
                    &relay.metrics.upstream_auth_seconds,
                    authenticating.elapsed(),
                );
                match authenticated {
                    Ok(()) => {
                        upstream.set_token_expires_at(token.expires_at);
                        Ok(upstream)
                    }
                    Err(err) => Err((err, Some(token))),
                }
                .map_err(|(err, token)| AttemptError {
                    error: RelayError::Upstream(err),
                    token,
                })
            };
            let failure = match attempt.await {
                Ok(upstream) => {
                    tracing::debug!(
                        asset = %asset.name,
                        upstream = %upstream.target(),
                        took_ms = started.elapsed().as_millis() as u64,
                        "upstream session ready"
                    );
                    return Ok(upstream);
                }
                Err(failure) => failure,
            };
            // A cached token the provider refuses (revoked, or expired early) deserves one
            // fresh token on a new connection before we give up.
            if let (false, Some(token), RelayError::Upstream(err)) =
                (retried, &failure.token, &failure.error)
            {
                if err.is_credential_rejection() && !token.fresh {
                    tracing::info!(asset = %asset.name, error = %err, "cached access token refused, refreshing once");
                    relay.tokens.invalidate(&asset.name, &token.token).await;
                    retried = true;
                    continue;
                }
            }
            let error = failure.error;
            let reply = Say::for_failure(&error, &asset.name, mode).reply();
            let tls_trouble = matches!(
                error,
                RelayError::Upstream(
                    UpstreamError::NoStartTls { .. }
                        | UpstreamError::Tls { .. }
                        | UpstreamError::Unexpected {
                            step: Step::StartTls,
                            ..
                        }
                )
            );
            if error.needs_operator() || tls_trouble {
                tracing::error!(
                    asset = %asset.name,
                    error = %error,
                    hint = error.hint(),
                    reply = %reply,
                    "asset needs attention"
                );
            } else {
                tracing::warn!(
                    asset = %asset.name,
                    error = %error,
                    hint = error.hint(),
                    reply = %reply,
                    "cannot open upstream session"
                );
            }
            return Err(reply);
        }
    }
}

/// A failed attempt, with the token it used (a refused cached token earns one retry).
struct AttemptError {
    error: RelayError,
    token: Option<crate::oauth::token::AccessToken>,
}

impl From<crate::oauth::token::TokenError> for AttemptError {
    fn from(err: crate::oauth::token::TokenError) -> Self {
        AttemptError {
            error: RelayError::Token(err),
            token: None,
        }
    }
}

impl From<UpstreamError> for AttemptError {
    fn from(err: UpstreamError) -> Self {
        AttemptError {
            error: RelayError::Upstream(err),
            token: None,
        }
    }
}
