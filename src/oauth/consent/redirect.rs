//! The redirect URI: where the browser goes after the consent, and how this run gets the
//! code from there — a loopback listener bound before the URI is sent anywhere (so port 0
//! becomes a real port), or the user's paste.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use oauth2::url::{Host, Url};
use tokio::net::TcpListener;

use super::AuthorizeError;
use crate::config::Asset;

/// The path of the default loopback redirect URI.
pub(super) const DEFAULT_CALLBACK_PATH: &str = "/callback";

pub(super) struct RedirectPlan {
    /// The URI sent in the consent URL and the token request, with the real port.
    pub redirect_uri: String,
    pub receiver: Receiver,
}

pub(super) enum Receiver {
    /// Serve one request on `path` on these sockets (two for `localhost`: IPv4 and IPv6).
    Listen {
        listeners: Vec<TcpListener>,
        path: String,
    },
    /// Read the redirect URL (or code) from the input.
    Paste,
}

/// Works out the redirect URI and, for the loopback flow, binds its listener (so port 0
/// becomes a real port before the URI is sent anywhere).
pub(super) async fn plan_redirect(
    asset: &Asset,
    no_browser: bool,
) -> Result<RedirectPlan, AuthorizeError> {
    let Some(configured) = &asset.redirect_uri else {
        let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
        let port = local_port(&listener)?;
        let redirect_uri = format!("http://127.0.0.1:{port}{DEFAULT_CALLBACK_PATH}");
        let receiver = if no_browser {
            // Nothing listens: the browser's redirect fails to load and the user copies the
            // address. The port only has to be one a Desktop client accepts.
            drop(listener);
            Receiver::Paste
        } else {
            Receiver::Listen {
                listeners: vec![listener],
                path: DEFAULT_CALLBACK_PATH.to_string(),
            }
        };
        return Ok(RedirectPlan {
            redirect_uri,
            receiver,
        });
    };

    let bad = |reason: &str| AuthorizeError::BadRedirectUri {
        uri: configured.clone(),
        reason: reason.to_string(),
    };
    let url = Url::parse(configured).map_err(|err| bad(&format!("not a URL ({err})")))?;
    if url.fragment().is_some() {
        return Err(bad(
            "a redirect URI must not have a #fragment (RFC 6749 §3.1.2)",
        ));
    }
    if no_browser {
        return Ok(RedirectPlan {
            redirect_uri: configured.clone(),
            receiver: Receiver::Paste,
        });
    }
    let Some(hosts) = loopback_hosts(&url) else {
        return Err(bad(
            "it is not a loopback address (127.0.0.1, [::1] or localhost), so this machine \
             cannot receive the browser's redirect; use --no-browser and paste the address the \
             browser ends up on, or use a Desktop-app client with the default loopback redirect",
        ));
    };
    if url.scheme() != "http" {
        return Err(bad(
            "the relay's one-shot listener speaks plain http (RFC 8252 loopback redirects are \
             http); use http://127.0.0.1:PORT/..., or --no-browser",
        ));
    }
    // No port (or port 0): any free port, as loopback redirects of Desktop-app clients
    // (Google "installed" and Microsoft "public client") match regardless of the port.
    let wanted_port = url.port().unwrap_or(0);
    let first = bind(SocketAddr::new(hosts[0], wanted_port)).await?;
    let port = local_port(&first)?;
    let mut listeners = vec![first];
    for host in &hosts[1..] {
        // localhost: the browser may resolve it to ::1; best effort on the same port.
        if let Ok(extra) = TcpListener::bind(SocketAddr::new(*host, port)).await {
            listeners.push(extra);
        }
    }
    let mut redirect = url.clone();
    redirect
        .set_port(Some(port))
        .map_err(|()| bad("cannot set a port on it"))?;
    let path = match url.path() {
        "" => "/".to_string(),
        path => path.to_string(),
    };
    Ok(RedirectPlan {
        redirect_uri: redirect.to_string(),
        receiver: Receiver::Listen { listeners, path },
    })
}

/// The addresses to listen on for a loopback redirect URI, or `None` if it is not one.
pub(super) fn loopback_hosts(url: &Url) -> Option<Vec<IpAddr>> {
    match url.host()? {
        Host::Ipv4(ip) if ip.is_loopback() => Some(vec![IpAddr::V4(ip)]),
        Host::Ipv6(ip) if ip.is_loopback() => Some(vec![IpAddr::V6(ip)]),
        Host::Domain(name) if name.eq_ignore_ascii_case("localhost") => Some(vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]),
        _ => None,
    }
}

pub(super) async fn bind(addr: SocketAddr) -> Result<TcpListener, AuthorizeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AuthorizeError::Listener {
            addr: addr.to_string(),
            source,
        })
}

pub(super) fn local_port(listener: &TcpListener) -> Result<u16, AuthorizeError> {
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|source| AuthorizeError::Listener {
            addr: "127.0.0.1".to_string(),
            source,
        })
}
