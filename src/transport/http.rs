//! HTTP clients for the API transports: one per asset that sends over HTTPS, trusting what
//! the asset's SMTP leg would trust (the web PKI plus `upstream_ca`), so a private CA
//! (tests, the sandbox) works for `api_url` and `tokeninfo_url` too. Each client keeps its
//! connections warm between messages (reqwest's own pool).

use std::collections::HashMap;
use std::time::Duration;

use crate::config::{Asset, AssetTransport, Config};

/// The HTTP clients of the assets with an API transport.
#[derive(Default, Clone)]
pub struct ApiClients {
    clients: HashMap<String, reqwest::Client>,
}

impl ApiClients {
    pub fn new(config: &Config) -> reqwest::Result<ApiClients> {
        let mut clients = HashMap::new();
        for asset in &config.assets {
            if matches!(asset.transport, AssetTransport::Smtp) {
                continue;
            }
            let client = client_for(asset, config.timeouts.upstream_connect)?;
            clients.insert(asset.name.clone(), client);
        }
        Ok(ApiClients { clients })
    }

    /// The client for `asset`; one built on the spot if the asset was not known (cannot
    /// happen for assets of the config the clients were built from).
    pub fn get(&self, asset: &Asset, connect_timeout: Duration) -> reqwest::Client {
        match self.clients.get(&asset.name) {
            Some(client) => client.clone(),
            None => client_for(asset, connect_timeout).unwrap_or_default(),
        }
    }
}

/// A client for `asset`'s API endpoints. Redirects are off: a redirect could carry the
/// bearer token somewhere else. No overall timeout: uploads of tens of MiB take as long
/// as they take; the transports bound progress and the wait for the verdict themselves.
pub fn client_for(asset: &Asset, connect_timeout: Duration) -> reqwest::Result<reqwest::Client> {
    let mut tls = (*asset.upstream.client_config).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .build()
}
