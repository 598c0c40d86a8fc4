//! `grant` on an asset (issue 13): delegated refresh tokens (the default) or app-only
//! client credentials (RFC 6749 §4.4), Microsoft's way of letting an unattended service
//! send with no consent, no refresh token and nothing to store or rotate.
//!
//! With `grant = "client_credentials"` the client id and secret alone get the token, so
//! every key that names a refresh token is a mistake (it would never be used), as is a
//! provider that does not offer the grant for mail (Google: service accounts instead).
//! The scope becomes the resource's `/.default` (Microsoft issues app-only tokens for a
//! whole resource, carrying the application permissions an admin consented to).

use super::problems::Checker;
use super::provider::ProviderPreset;
use super::raw::RawAsset;
use super::types::{Grant, Provider};

/// App-only SMTP AUTH: the Exchange Online resource, whose `SMTP.SendAsApp` permission
/// the token then carries.
pub(super) const SMTP_APP_SCOPE: &str = "https://outlook.office365.com/.default";

/// The asset's grant, with a problem for every key or provider that contradicts it.
pub(super) fn validate_grant(
    raw: &RawAsset,
    provider: Provider,
    field: &dyn Fn(&str) -> String,
    check: &mut Checker,
) -> Grant {
    let Some(grant) = &raw.grant else {
        return Grant::RefreshToken;
    };
    if *grant.get_ref() == Grant::RefreshToken {
        return Grant::RefreshToken;
    }
    if provider == Provider::Google {
        check.at(
            grant,
            field("grant"),
            "grant = \"client_credentials\" is for provider \"microsoft\" or \"custom\"; \
             Google sends app-only through a service account (service_account_json)",
        );
    }
    for (set, key) in [
        (raw.refresh_token.is_some(), "refresh_token"),
        (raw.refresh_token_file.is_some(), "refresh_token_file"),
        (raw.service_account_json.is_some(), "service_account_json"),
        (raw.redirect_uri.is_some(), "redirect_uri"),
    ] {
        if set {
            check.at(
                grant,
                field(key),
                format!(
                    "{key} makes no sense with grant = \"client_credentials\": the client id and \
                     secret alone get the token; remove {key}"
                ),
            );
        }
    }
    Grant::ClientCredentials
}

/// The preset as the grant needs it: app-only tokens ask for the resource's `/.default`.
pub(super) fn preset_for_grant(mut preset: ProviderPreset, grant: Grant) -> ProviderPreset {
    if grant == Grant::ClientCredentials {
        preset.scope = SMTP_APP_SCOPE;
    }
    preset
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::path::Path;

    use super::super::{parse_with_env, ConfigError, Grant};

    fn config(asset: &str) -> String {
        format!(
            r#"
[[user]]
name = "u"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$ZHVtbXloYXNoZHVtbXloYXNoZHVtbXloYXNoZHVtbXk"
assets = ["a"]

[[asset]]
name = "a"
email = "alerts@contoso.example"
senders = ["alerts@contoso.example"]
client_id = "id"
client_secret = "s"
{asset}
"#
        )
    }

    fn problems(asset: &str) -> Vec<(Option<usize>, String, String)> {
        match parse_with_env(&config(asset), Path::new("t.toml"), |_| None) {
            Err(ConfigError::Invalid { problems, .. }) => problems
                .into_iter()
                .map(|p| (p.line, p.field, p.message))
                .collect(),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("accepted: {asset}"),
        }
    }

    #[test]
    fn client_credentials_get_the_app_only_smtp_scope_and_no_store() {
        let text = config(
            "provider = \"microsoft\"\ntenant = \"contoso.onmicrosoft.com\"\ngrant = \"client_credentials\"",
        );
        let parsed = parse_with_env(&text, Path::new("t.toml"), |_| None).unwrap();
        let asset = &parsed.assets[0];
        assert_eq!(asset.grant, Grant::ClientCredentials);
        assert_eq!(asset.scopes, ["https://outlook.office365.com/.default"]);
        assert!(!asset.uses_store());
        assert_eq!(
            asset.token_url,
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        // The default stays delegated.
        let parsed = parse_with_env(
            &config("provider = \"microsoft\""),
            Path::new("t.toml"),
            |_| None,
        )
        .unwrap();
        assert_eq!(parsed.assets[0].grant, Grant::RefreshToken);
        assert!(parsed.assets[0].uses_store());
    }

    #[test]
    fn refresh_token_keys_and_google_are_config_errors() {
        for key in [
            "refresh_token = \"rt\"",
            "refresh_token_file = \"/nonexistent\"",
            "redirect_uri = \"http://127.0.0.1:1/cb\"",
        ] {
            let found = problems(&format!(
                "provider = \"microsoft\"\ngrant = \"client_credentials\"\n{key}"
            ));
            let name = key.split(' ').next().unwrap();
            let hit = found
                .iter()
                .find(|(_, field, _)| field == &format!("asset[0].{name}"))
                .unwrap_or_else(|| panic!("{name}: {found:?}"));
            assert!(hit.0.is_some(), "a line is named: {hit:?}");
            assert!(hit.2.contains("client_credentials"), "{hit:?}");
        }
        let found = problems("grant = \"client_credentials\"");
        assert!(
            found
                .iter()
                .any(|(_, field, message)| field == "asset[0].grant"
                    && message.contains("service account")),
            "{found:?}"
        );
        let found = problems("provider = \"microsoft\"\ngrant = \"password\"");
        assert!(!found.is_empty());
    }
}
