//! App registrations and the client-credentials grant (RFC 6749 §4.4), answered the way
//! Microsoft's v2.0 token endpoint answers it: the scope must be one resource's
//! `/.default`, the token is a JWT whose `roles` claim lists the application permissions
//! an admin consented to for that resource (none: no `roles` claim, as Entra does), and
//! refusals carry Entra's `AADSTS` codes. An app may be limited to some mailboxes, as an
//! Exchange application access policy limits it; the fakes consult that through
//! [`AccessTokens`](super::AccessTokens).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use base64::Engine as _;
use hyper::StatusCode;

use super::grants::{client_credentials, now_unix};
use super::http::{json, oauth_error, HttpResponse};
use super::{lock, IssuerShared};
use crate::sandbox::random_hex;

/// The SMTP AUTH resource and the permission app-only SMTP needs.
pub const OUTLOOK_RESOURCE: &str = "https://outlook.office365.com";
pub const SMTP_SEND_AS_APP: &str = "SMTP.SendAsApp";
/// The Graph resource.
pub const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";

/// An application registered in the fake directory.
#[derive(Clone, Debug)]
pub struct AppRegistration {
    pub client_id: String,
    pub client_secret: String,
    /// Application permissions with admin consent, each `resource/Permission`, e.g.
    /// `https://graph.microsoft.com/Mail.Send`, `https://outlook.office365.com/SMTP.SendAsApp`.
    pub permissions: Vec<String>,
    /// Mailboxes the app may act for (an application access policy); empty: all of them.
    pub mailboxes: Vec<String>,
}

/// What an app-only token lets its bearer do, recorded when it was issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppToken {
    pub client_id: String,
    /// The resource (`aud`), without a trailing slash.
    pub audience: String,
    pub roles: Vec<String>,
    pub mailboxes: Vec<String>,
}

impl AppToken {
    /// Whether the token may use `role` of `audience` for `mailbox`.
    pub fn allows(&self, audience: &str, role: &str, mailbox: &str) -> bool {
        self.audience == audience && self.has_role(role) && self.may_act_for(mailbox)
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// The application access policy: compared case-insensitively, as addresses are.
    pub fn may_act_for(&self, mailbox: &str) -> bool {
        self.mailboxes.is_empty()
            || self
                .mailboxes
                .iter()
                .any(|m| m.eq_ignore_ascii_case(mailbox))
    }
}

/// A JWT-shaped access token with `claims`. The signature is random bytes: nothing
/// verifies it (the relay only reads claims, and the fakes look tokens up).
pub fn jwt_token(claims: &serde_json::Value) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "kid": "sandbox"});
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(random_hex(64).as_bytes())
    )
}

/// For a refresh whose scope names Graph permissions: a JWT with the delegated `scp`
/// claim (the permissions without the resource prefix, `offline_access` left out), as
/// Entra issues Graph tokens, registered as the mailbox's.
pub(super) fn delegated_graph_token(
    tokens: &super::AccessTokens,
    email: &str,
    scope: Option<&String>,
) -> Option<String> {
    let prefix = format!("{GRAPH_RESOURCE}/");
    let scp: Vec<&str> = scope?
        .split_whitespace()
        .filter_map(|s| s.strip_prefix(prefix.as_str()))
        .collect();
    if scp.is_empty() {
        return None;
    }
    let now = now_unix();
    let token = jwt_token(&serde_json::json!({
        "aud": GRAPH_RESOURCE,
        "iss": "https://sts.windows.net/sandbox-tenant/",
        "iat": now,
        "exp": now.saturating_add(3600),
        "upn": email,
        "scp": scp.join(" "),
    }));
    tokens.register(&token, email);
    Some(token)
}

fn aadsts(status: StatusCode, error: &str, code: &str, text: &str) -> HttpResponse {
    tracing::info!(outcome = error, code, "sandbox client_credentials request");
    oauth_error(status, error, &format!("{code}: {text}"))
}

pub(super) fn client_credentials_grant(
    shared: &IssuerShared,
    headers: &hyper::HeaderMap,
    form: &HashMap<String, String>,
) -> HttpResponse {
    let (client_id, client_secret) = match client_credentials(headers, form) {
        Ok(creds) => creds,
        Err(resp) => return *resp,
    };
    let app = lock(&shared.auth)
        .apps
        .iter()
        .find(|app| app.client_id == client_id)
        .cloned();
    let Some(app) = app else {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "AADSTS700016",
            &format!("Application with identifier '{client_id}' was not found in the directory."),
        );
    };
    if app.client_secret != client_secret {
        return aadsts(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215",
            "Invalid client secret provided. Ensure the secret being sent in the request is the \
             client secret value, not the client secret ID.",
        );
    }
    let Some(scope) = form.get("scope").filter(|s| !s.trim().is_empty()) else {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS900144",
            "The request body must contain the following parameter: 'scope'.",
        );
    };
    let mut scopes = scope.split_whitespace();
    let resource = match (scopes.next(), scopes.next()) {
        (Some(only), None) => only.strip_suffix("/.default"),
        _ => None,
    };
    let Some(resource) = resource.filter(|r| !r.is_empty()) else {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "AADSTS1002012",
            &format!(
                "The provided value for scope {scope} is not valid. Client credential flows must \
                 have a scope value with /.default suffixed to the resource identifier \
                 (application ID URI)."
            ),
        );
    };
    let roles: Vec<String> = app
        .permissions
        .iter()
        .filter_map(|p| p.strip_prefix(resource)?.strip_prefix('/'))
        .map(str::to_string)
        .collect();
    let lifetime = shared.expires_in.load(Ordering::SeqCst);
    let now = now_unix();
    let mut claims = serde_json::json!({
        "aud": resource,
        "iss": "https://sts.windows.net/sandbox-tenant/",
        "iat": now,
        "nbf": now,
        "exp": now.saturating_add(i64::try_from(lifetime).unwrap_or(i64::MAX)),
        "appid": client_id,
        "idtyp": "app",
        "tid": "sandbox-tenant",
    });
    if !roles.is_empty() {
        claims["roles"] = serde_json::json!(roles);
    }
    let token = jwt_token(&claims);
    shared.tokens.register_app(
        &token,
        AppToken {
            client_id: client_id.clone(),
            audience: resource.to_string(),
            roles,
            mailboxes: app.mailboxes.clone(),
        },
    );
    tracing::info!(%client_id, resource, outcome = "issued", "sandbox client_credentials request");
    json(
        StatusCode::OK,
        &serde_json::json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }),
    )
}
