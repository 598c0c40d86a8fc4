//! What `check` can prove about a Graph asset without sending mail (issue 13). `Mail.Send`
//! alone allows no read call, so the proof is the token itself: Graph access tokens are
//! JWTs whose `scp` claim (delegated) or `roles` claim (application) lists the permissions
//! granted. They are read here for the report only — never verified, never trusted for
//! anything else (Graph checks them; a forged claim would only fool this report).

use base64::Engine as _;

use crate::credentials::secret::Secret;

/// The permissions a Graph token carries, and whether it is app-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPermissions {
    pub app_only: bool,
    pub permissions: Vec<String>,
}

/// Why the token's permissions cannot be shown or are not enough.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PermissionError {
    #[error("the access token is not a JWT, so its permissions cannot be read")]
    Opaque,
    #[error("the access token carries {found} but not {missing}; grant it{consent}")]
    Missing {
        missing: String,
        found: String,
        consent: &'static str,
    },
}

/// Reads `scp` (space-separated, delegated) or `roles` (a list, application) from the
/// token's payload.
pub fn token_permissions(token: &Secret) -> Result<TokenPermissions, PermissionError> {
    let mut parts = token.expose().split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PermissionError::Opaque);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| PermissionError::Opaque)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| PermissionError::Opaque)?;
    if let Some(roles) = claims.get("roles").and_then(|r| r.as_array()) {
        return Ok(TokenPermissions {
            app_only: true,
            permissions: roles
                .iter()
                .filter_map(|r| r.as_str())
                .map(str::to_string)
                .collect(),
        });
    }
    if let Some(scp) = claims.get("scp").and_then(|s| s.as_str()) {
        return Ok(TokenPermissions {
            app_only: false,
            permissions: scp.split_whitespace().map(str::to_string).collect(),
        });
    }
    // An app token without `roles` is what Entra issues when no application permission
    // has admin consent.
    let app_only = claims.get("idtyp").and_then(|v| v.as_str()) == Some("app")
        || claims.get("appid").is_some() && claims.get("upn").is_none();
    Ok(TokenPermissions {
        app_only,
        permissions: Vec::new(),
    })
}

impl TokenPermissions {
    /// `Ok` when every one of `needed` is present.
    pub fn require(&self, needed: &[&str]) -> Result<(), PermissionError> {
        let missing: Vec<&str> = needed
            .iter()
            .copied()
            .filter(|n| !self.permissions.iter().any(|p| p.eq_ignore_ascii_case(n)))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(PermissionError::Missing {
            missing: missing.join(" and "),
            found: if self.permissions.is_empty() {
                "no permission".to_string()
            } else {
                self.permissions.join(" ")
            },
            consent: if self.app_only {
                " as an application permission, with admin consent"
            } else {
                " as a delegated permission and run `authorize` again"
            },
        })
    }

    /// What `check` prints.
    pub fn describe(&self) -> String {
        format!(
            "{} token with {}",
            if self.app_only {
                "app-only"
            } else {
                "delegated"
            },
            if self.permissions.is_empty() {
                "no permission".to_string()
            } else {
                self.permissions.join(" ")
            }
        )
    }
}

/// Why `check` fails a Graph asset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphCheckError {
    #[error(transparent)]
    Token(#[from] crate::oauth::token::TokenError),
    #[error("{0}")]
    Permission(#[from] PermissionError),
}

/// `check` for a Graph asset: a token (refreshed, or from the client-credentials grant),
/// and the permissions it carries compared with what the asset needs. Sends nothing.
pub async fn prove(
    tokens: &crate::oauth::token::TokenManager,
    asset: &crate::config::Asset,
    large_messages: bool,
) -> Result<String, GraphCheckError> {
    let token = tokens.access_token(&asset.name).await?;
    let needed: &[&str] = if large_messages {
        &["Mail.Send", "Mail.ReadWrite"]
    } else {
        &["Mail.Send"]
    };
    let valid_secs = token
        .expires_at
        .saturating_duration_since(tokio::time::Instant::now())
        .as_secs();
    let permissions = token_permissions(&token.token)?;
    permissions.require(needed)?;
    Ok(format!(
        "token obtained (valid {valid_s} s), {} for {}; Microsoft Graph not called (Mail.Send allows \
         no read), so the mailbox itself and an access policy are proven by the first message",
        permissions.describe(),
        asset.email,
        valid_s = valid_secs,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn jwt(claims: serde_json::Value) -> Secret {
        let b64 = |s: String| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        Secret::new(format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256"}"#.to_string()),
            b64(claims.to_string())
        ))
    }

    #[test]
    fn roles_and_scopes_are_read() {
        let app = token_permissions(&jwt(serde_json::json!({"roles": ["Mail.Send"]}))).unwrap();
        assert!(app.app_only);
        assert!(app.require(&["Mail.Send"]).is_ok());
        let err = app.require(&["Mail.Send", "Mail.ReadWrite"]).unwrap_err();
        assert!(
            err.to_string().contains("Mail.ReadWrite") && err.to_string().contains("admin consent")
        );

        let user =
            token_permissions(&jwt(serde_json::json!({"scp": "Mail.Send User.Read"}))).unwrap();
        assert!(!user.app_only);
        assert!(user.require(&["mail.send"]).is_ok());

        let bare = token_permissions(&jwt(serde_json::json!({"idtyp": "app"}))).unwrap();
        assert!(bare.app_only && bare.permissions.is_empty());
        assert!(bare
            .require(&["Mail.Send"])
            .unwrap_err()
            .to_string()
            .contains("no permission"));

        assert_eq!(
            token_permissions(&Secret::new("ya29.opaque")),
            Err(PermissionError::Opaque)
        );
        assert_eq!(
            token_permissions(&Secret::new("a.!!!.c")),
            Err(PermissionError::Opaque)
        );
    }
}
