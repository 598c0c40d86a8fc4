//! A relay with the console on: the common test environment (fake Gmail, fake issuer,
//! users, assets) plus an `[admin]` table, its own SMTP listener and the admin listener on
//! 127.0.0.1, and a small cookie-keeping HTTP client that never follows redirects.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::common::*;
use smtp_oauth_relay::config;
use smtp_oauth_relay::relay::Relay;
use smtp_oauth_relay::server::{self, Listeners, RelayHandle};

pub struct Console {
    pub env: Env,
    pub relay: Arc<Relay>,
    /// `http://127.0.0.1:PORT` (or https).
    pub base: String,
    pub admin_addr: SocketAddr,
    /// The console relay's own SMTP listener.
    pub smtp_addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for Console {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Console {
    /// `admin` is the body of the `[admin]` table (`listen` is added).
    pub async fn start(options: Options, admin: &str) -> Console {
        Console::start_with(options, admin, |text| text).await
    }

    /// As [`Console::start`], with the config text rewritten by `edit` first.
    pub async fn start_with(
        options: Options,
        admin: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Console {
        let env = Env::with(options).await;
        let text = edit(format!(
            "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n{admin}\n",
            env.config_text
        ));
        let config = config::parse(&text, &env.path("relay.toml")).unwrap();
        let tls = config.admin.tls.is_some();
        let relay = Arc::new(Relay::new(config).unwrap());
        let relays = RelayHandle::new(relay.clone());
        let shutdown = CancellationToken::new();
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_addr = admin_listener.local_addr().unwrap();
        tokio::spawn(smtp_oauth_relay::admin::serve(
            admin_listener,
            relays.clone(),
            shutdown.clone(),
        ));
        let smtp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let smtp_addr = smtp.local_addr().unwrap();
        tokio::spawn(server::run(
            Listeners {
                plain: vec![smtp],
                implicit_tls: vec![],
            },
            relays,
            shutdown.clone(),
        ));
        let scheme = if tls { "https" } else { "http" };
        Console {
            env,
            relay,
            base: format!("{scheme}://{admin_addr}"),
            admin_addr,
            smtp_addr,
            shutdown,
        }
    }

    pub fn browser(&self) -> Browser {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(30));
        if self.base.starts_with("https") {
            let ca = reqwest::Certificate::from_pem(self.env.pki.ca_cert_pem.as_bytes()).unwrap();
            builder = builder
                .add_root_certificate(ca)
                .tls_built_in_root_certs(false);
        }
        Browser {
            http: builder.build().unwrap(),
            base: self.base.clone(),
            cookies: HashMap::new(),
            set_cookies: Vec::new(),
        }
    }

    /// A browser logged in as `user`.
    pub async fn logged_in(&self, (user, password): (&str, &str)) -> Browser {
        let mut browser = self.browser();
        let response = browser.login(user, password).await;
        assert_eq!(response.status, 303, "login failed: {}", response.body);
        browser
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
    pub set_cookies: Vec<String>,
}

/// A cookie jar over reqwest, so tests see (and assert) every Set-Cookie.
pub struct Browser {
    pub http: reqwest::Client,
    pub base: String,
    pub cookies: HashMap<String, String>,
    /// Every Set-Cookie seen, in order.
    pub set_cookies: Vec<String>,
}

impl Browser {
    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn read(&mut self, response: reqwest::Response) -> Page {
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get(LOCATION)
            .map(|v| v.to_str().unwrap().to_string());
        let set_cookies: Vec<String> = response
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        for cookie in &set_cookies {
            let pair = cookie.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || cookie.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_string(), value.to_string());
            }
        }
        self.set_cookies.extend(set_cookies.iter().cloned());
        let body = response.text().await.unwrap();
        Page {
            status,
            location,
            body,
            set_cookies,
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let mut request = self.http.get(self.url(path));
        if !self.cookies.is_empty() {
            request = request.header(COOKIE, self.cookie_header());
        }
        let response = request.send().await.unwrap();
        self.read(response).await
    }

    /// A GET without cookies (as a browser sends after a cross-site redirect).
    pub async fn get_without_cookies(&mut self, path: &str) -> Page {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        self.read(response).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let mut request = self.http.post(self.url(path)).form(form);
        if !self.cookies.is_empty() {
            request = request.header(COOKIE, self.cookie_header());
        }
        let response = request.send().await.unwrap();
        self.read(response).await
    }

    /// GET /login, then POST it with the form's token.
    pub async fn login(&mut self, user: &str, password: &str) -> Page {
        let form = self.get("/login").await;
        assert_eq!(form.status, 200, "{}", form.body);
        let csrf = hidden(&form.body, "csrf");
        self.post(
            "/login",
            &[("user", user), ("password", password), ("csrf", &csrf)],
        )
        .await
    }

    /// The CSRF token of the session (from any page with a form).
    pub async fn csrf(&mut self) -> String {
        let page = self.get("/assets/support").await;
        assert_eq!(page.status, 200, "{}", page.body);
        hidden(&page.body, "csrf")
    }
}

/// The value of the first hidden input named `name`.
pub fn hidden(body: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = body
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} field in {body}"))
        + marker.len();
    let end = body[start..].find('"').unwrap() + start;
    body[start..end].to_string()
}
