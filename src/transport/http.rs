//! HTTP clients for the API transports: one per asset that sends over HTTPS, trusting what
//! the asset's SMTP leg would trust (the web PKI plus `upstream_ca`), so a private CA
//! (tests, the sandbox) works for `api_url` and `tokeninfo_url` too. Each client keeps its
//! connections warm between messages (reqwest's own pool).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::graph::{GraphTimeouts, GraphTransport};

use crate::config::{Asset, AssetTransport, Config};

/// The HTTP clients of the assets with an API transport, and each Graph asset's
/// transport (its request slots are per asset, shared by every session).
#[derive(Default, Clone)]
pub struct ApiClients {
    clients: HashMap<String, reqwest::Client>,
    graphs: HashMap<String, Arc<GraphTransport>>,
}

impl ApiClients {
    pub fn new(config: &Config) -> reqwest::Result<ApiClients> {
        let mut clients = HashMap::new();
        let mut graphs = HashMap::new();
        for asset in &config.assets {
            if matches!(asset.transport, AssetTransport::Smtp) {
                continue;
            }
            let client = client_for(asset, config.timeouts.upstream_connect)?;
            if let AssetTransport::Graph(settings) = &asset.transport {
                let timeouts = GraphTimeouts {
                    command: config.timeouts.upstream_command,
                    final_reply: config.timeouts.upstream_final_reply,
                };
                let transport =
                    GraphTransport::new(asset.clone(), settings.clone(), timeouts, client.clone());
                graphs.insert(asset.name.clone(), Arc::new(transport));
            }
            clients.insert(asset.name.clone(), client);
        }
        Ok(ApiClients { clients, graphs })
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

impl ApiClients {
    /// The Graph transport of `asset`, when it is a Graph asset of this config.
    pub fn graph(&self, asset: &Asset) -> Option<Arc<GraphTransport>> {
        self.graphs.get(&asset.name).cloned()
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
