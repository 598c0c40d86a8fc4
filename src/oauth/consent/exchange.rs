//! The token request (authorization code + PKCE verifier → tokens), its refusals turned
//! into errors that name the fix, and [`verify_account`]: the proof that the grant is the
//! asset's account before anything stores it.

use std::borrow::Cow;
use std::time::Duration;

use oauth2::basic::BasicErrorResponseType;
use oauth2::{
    AuthorizationCode, HttpClientError, PkceCodeVerifier, RedirectUrl, RequestTokenError,
    TokenResponse,
};

use super::url::oauth_client;
use super::{AuthorizeError, Consent};
use crate::config::{Asset, Config, Provider};
use crate::credentials::secret::Secret;
use crate::oauth::http;
use crate::upstream::{Upstream, UpstreamError, UpstreamSettings};

/// The token request: generous, as in `check`, but not forever.
pub(super) const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) const GOOGLE_PERMISSIONS_URL: &str = "https://myaccount.google.com/permissions";

pub(super) type HttpError = HttpClientError<reqwest::Error>;
pub(super) type BasicRequestError = RequestTokenError<HttpError, oauth2::basic::BasicErrorResponse>;

/// Exchanges `code` (with the PKCE `verifier`) at the asset's token endpoint.
pub async fn exchange(
    asset: &Asset,
    code: AuthorizationCode,
    verifier: PkceCodeVerifier,
    redirect_uri: &str,
) -> Result<Consent, AuthorizeError> {
    let client = oauth_client(asset, redirect_uri)?;
    let redirect = RedirectUrl::new(redirect_uri.to_string()).map_err(|err| {
        AuthorizeError::BadRedirectUri {
            uri: redirect_uri.to_string(),
            reason: err.to_string(),
        }
    })?;
    // Redirects off, as the oauth2 crate requires: a redirect could leak the credentials.
    let http = http::client(EXCHANGE_TIMEOUT)
        .map_err(|err| AuthorizeError::Http(format!("cannot build the HTTP client: {err}")))?;
    let response = client
        .exchange_code(code)
        .set_pkce_verifier(verifier)
        .set_redirect_uri(Cow::Owned(redirect))
        .request_async(&http)
        .await
        .map_err(|err| classify(asset, redirect_uri, err))?;

    let Some(refresh_token) = response.refresh_token() else {
        return Err(AuthorizeError::NoRefreshToken {
            hint: no_refresh_token_hint(asset.provider).to_string(),
        });
    };
    let scopes = match response.scopes() {
        Some(granted) if !granted.is_empty() => granted.iter().map(|s| s.to_string()).collect(),
        _ => asset.scopes.clone(),
    };
    Ok(Consent {
        refresh_token: Secret::new(refresh_token.secret().clone()),
        access_token: Secret::new(response.access_token().secret().clone()),
        expires_in: response.expires_in(),
        scopes,
        redirect_uri: redirect_uri.to_string(),
    })
}

/// Proves that the new grant belongs to the asset's account before it replaces anything:
/// the provider's SMTP server must accept the new access token for the asset's address
/// (the XOAUTH2 login `check` and the relay do). A token of another account is refused
/// there, as Gmail refuses a user name that does not match the token.
pub async fn verify_account(
    config: &Config,
    asset: &Asset,
    consent: &Consent,
) -> Result<(), AuthorizeError> {
    if let crate::config::AssetTransport::GmailApi(api) = &asset.transport {
        return verify_with_tokeninfo(config, asset, &api.tokeninfo_url, consent).await;
    }
    let settings = UpstreamSettings::from_config(config);
    let unverified = |err: UpstreamError| AuthorizeError::Unverified {
        email: asset.email.clone(),
        reason: err.to_string(),
    };
    let mut upstream = Upstream::connect(&asset.upstream, &settings)
        .await
        .map_err(unverified)?;
    let login = upstream
        .authenticate(&asset.email, &consent.access_token)
        .await;
    upstream.quit().await;
    match login {
        Ok(()) => Ok(()),
        Err(err) if err.is_credential_rejection() => Err(AuthorizeError::WrongAccount {
            email: asset.email.clone(),
            reason: err.to_string(),
        }),
        Err(err) => Err(unverified(err)),
    }
}

/// For an API transport there is no SMTP login to try: Google's tokeninfo names the
/// account when the grant includes it, and a different account is refused. A grant that
/// does not name its account (gmail.send alone) cannot be checked here; the first message
/// proves it.
async fn verify_with_tokeninfo(
    config: &Config,
    asset: &Asset,
    tokeninfo_url: &str,
    consent: &Consent,
) -> Result<(), AuthorizeError> {
    let unverified = |reason: String| AuthorizeError::Unverified {
        email: asset.email.clone(),
        reason,
    };
    let http = crate::transport::http::client_for(asset, config.timeouts.upstream_connect)
        .map_err(|err| unverified(err.to_string()))?;
    let response = http
        .post(tokeninfo_url)
        .form(&[("access_token", consent.access_token.expose())])
        .timeout(config.timeouts.upstream_command)
        .send()
        .await
        .map_err(|err| unverified(crate::oauth::http::describe_error(&err.without_url())))?;
    let text = response
        .text()
        .await
        .map_err(|err| unverified(crate::oauth::http::describe_error(&err.without_url())))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|_| unverified("tokeninfo did not answer JSON".to_string()))?;
    match value["email"].as_str() {
        Some(email) if !email.eq_ignore_ascii_case(&asset.email) => {
            Err(AuthorizeError::WrongAccount {
                email: asset.email.clone(),
                reason: format!(
                    "the grant is for {}",
                    crate::oauth::http::provider_text(email)
                ),
            })
        }
        _ => Ok(()),
    }
}

pub(super) fn no_refresh_token_hint(provider: Provider) -> String {
    match provider {
        Provider::Google => format!(
            "Google sends one only when it shows the consent screen, and the app apparently \
             already had consent without prompt=consent being honoured; revoke the app's access \
             at {GOOGLE_PERMISSIONS_URL} and run authorize again"
        ),
        Provider::Microsoft => "Microsoft sends one only for the offline_access scope; add \
                                offline_access to the asset's scope and run authorize again"
            .to_string(),
        Provider::Custom => "the provider probably needs offline access requested explicitly \
                             (an offline_access scope, or access_type=offline); check its \
                             documentation and the asset's scope"
            .to_string(),
    }
}

pub(super) fn classify(
    asset: &Asset,
    redirect_uri: &str,
    err: BasicRequestError,
) -> AuthorizeError {
    match err {
        RequestTokenError::ServerResponse(response) => {
            let error = response.error().to_string();
            let description = response
                .error_description()
                .cloned()
                .unwrap_or_else(|| "no description".to_string());
            let hint = match response.error() {
                BasicErrorResponseType::Extension(ext) if ext == "redirect_uri_mismatch" => {
                    return AuthorizeError::RedirectUriMismatch {
                        redirect_uri: redirect_uri.to_string(),
                        description,
                    };
                }
                BasicErrorResponseType::InvalidGrant => {
                    "the code expired or was already used, or the redirect URI or PKCE verifier \
                     differ from the consent request; run authorize again and finish within a \
                     few minutes"
                        .to_string()
                }
                BasicErrorResponseType::InvalidClient
                | BasicErrorResponseType::UnauthorizedClient => format!(
                    "check the client_id and client_secret of asset \"{}\" against the provider \
                     console, and the client type (\"Desktop app\" for the loopback redirect; a \
                     \"Web application\" client needs its exact redirect URI registered)",
                    asset.name
                ),
                _ => "check the asset's client settings and scope against the provider console"
                    .to_string(),
            };
            AuthorizeError::Exchange {
                error,
                description,
                hint,
            }
        }
        RequestTokenError::Request(HttpClientError::Reqwest(err)) => {
            AuthorizeError::Http(if err.is_timeout() {
                "the request timed out".to_string()
            } else if err.is_connect() {
                "cannot connect".to_string()
            } else {
                err.without_url().to_string()
            })
        }
        RequestTokenError::Request(other) => AuthorizeError::Http(other.to_string()),
        RequestTokenError::Parse(_, body) => AuthorizeError::Http(format!(
            "unexpected response ({} bytes that are not an OAuth token reply)",
            body.len()
        )),
        RequestTokenError::Other(reason) => AuthorizeError::Http(reason),
    }
}
