//! The console in a real browser: Debian's Chromium, headless, driven over WebDriver by
//! fantoccini through a chromedriver this test starts on a free loopback port and stops.
//! The operator logs in (a wrong password first), sees the broken asset and its fix,
//! clicks Generate Token, passes the sandbox's consent page and comes back to a working
//! asset, sends a test message that reaches the sandbox, and logs out. Screenshots of
//! each page go to docs/img/ for the README.
//!
//! The fake issuer is reached as `localhost` while the console is `127.0.0.1`: another
//! site, so the SameSite=Strict cookie is really withheld on the way back, as it is with
//! a real provider. Without Chromium the test skips, except under CI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use tokio::process::{Child, Command};

use crate::common::*;
use crate::harness::Console;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// True when present; under CI a missing browser fails the test (`.ci/run` installs it).
fn installed_or_skip(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    let in_ci = std::env::var("CI").is_ok_and(|value| !value.is_empty());
    assert!(
        !in_ci,
        "{what} is not installed but CI is set: the CI script (.ci/run) must install it"
    );
    eprintln!("skipping: {what} not installed (CI installs it)");
    false
}

/// chromedriver on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    async fn start() -> Driver {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Bounded wait for it to listen.
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Driver { child, port };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not start listening on 127.0.0.1:{port}");
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1250",
                         "--no-first-run", "--password-store=basic"],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/img")
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.unwrap();
    std::fs::create_dir_all(screenshot_dir()).unwrap();
    std::fs::write(screenshot_dir().join(name), png).unwrap();
}

async fn text(browser: &Client) -> String {
    browser
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Clicks `target`, then waits for `then` on the page that follows.
async fn click_then_wait(browser: &Client, target: Locator<'_>, then: Locator<'_>) {
    browser.find(target).await.unwrap().click().await.unwrap();
    browser.wait().for_element(then).await.unwrap();
}

/// The text of the element `at`.
async fn text_of(browser: &Client, at: Locator<'_>) -> String {
    browser.find(at).await.unwrap().text().await.unwrap()
}

/// The text of the `#result` box that `action` produced. Waits for that
/// action's box, not just any `#result`: right after a click the browser may
/// still show the previous page, whose box names another action.
async fn result_of(browser: &Client, action: &str) -> String {
    let box_of_action = format!("//*[@id='result'][starts-with(normalize-space(.), '{action}')]");
    browser
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::XPath(&box_of_action))
        .await
        .unwrap_or_else(|e| panic!("no result box for {action}: {e}"))
        .text()
        .await
        .unwrap()
}

async fn log_in(browser: &Client, user: &str, password: &str) {
    browser
        .find(Locator::Id("user"))
        .await
        .unwrap()
        .send_keys(user)
        .await
        .unwrap();
    browser
        .find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    browser
        .find(Locator::Id("login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test]
async fn operator_fixes_a_broken_asset_from_the_browser() {
    let present =
        std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists();
    if !installed_or_skip("chromium and chromium-driver", present) {
        return;
    }
    let options = Options {
        support_from_store: true,
        ..Options::default()
    };
    let console = Console::start_with(options, "users = [\"admin\"]\nrefresh_secs = 0", |text| {
        text.replace(
            "auth_url = \"http://127.0.0.1:",
            "auth_url = \"http://localhost:",
        )
    })
    .await;
    let driver = Driver::start().await;
    let browser = driver.browser().await;
    let run = async {
        let base = &console.base;
        browser.goto(&format!("{base}/")).await.unwrap();
        assert!(browser
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/login"));
        log_in(&browser, ADMIN.0, "wrong password").await;
        browser
            .wait()
            .for_element(Locator::Id("problem"))
            .await
            .unwrap();
        assert!(text(&browser).await.contains("Wrong user name or password"));
        screenshot(&browser, "console-login.png").await;

        log_in(&browser, ADMIN.0, ADMIN.1).await;
        browser
            .wait()
            .for_element(Locator::Id("assets"))
            .await
            .unwrap();
        let row = text_of(&browser, Locator::Css("tr[data-asset=\"support\"]")).await;
        assert!(row.contains("needs attention"), "{row}");
        assert!(row.contains("Generate Token"), "the fix: {row}");
        screenshot(&browser, "console-assets-broken.png").await;

        click_then_wait(
            &browser,
            Locator::LinkText("support"),
            Locator::Id("generate"),
        )
        .await;
        screenshot(&browser, "console-asset.png").await;
        browser
            .find(Locator::Id("generate"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        // Through the sandbox's consent page and back to the console's callback.
        let said = result_of(&browser, "Generate Token").await;
        assert!(said.contains("new refresh token stored"), "{said}");
        assert!(
            said.contains("accepted XOAUTH2 for support@example.com"),
            "{said}"
        );
        assert!(browser
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/oauth/callback"));
        screenshot(&browser, "console-token-generated.png").await;

        click_then_wait(&browser, Locator::Id("back"), Locator::Id("send-test")).await;
        let health = text_of(&browser, Locator::Id("health")).await;
        assert!(health.contains("ok"), "{health}");
        assert!(!health.contains("needs attention"), "{health}");
        browser
            .find(Locator::Id("test-to"))
            .await
            .unwrap()
            .send_keys("friend@example.net")
            .await
            .unwrap();
        browser
            .find(Locator::Id("send-test"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let said = result_of(&browser, "Send test message").await;
        assert!(said.contains("sent to friend@example.net"), "{said}");
        let delivered = console.env.gmail.messages();
        assert_eq!(delivered.len(), 1);
        assert_eq!(delivered[0].mail_from, SUPPORT_EMAIL);

        click_then_wait(&browser, Locator::LinkText("Assets"), Locator::Id("assets")).await;
        let row = text_of(&browser, Locator::Css("tr[data-asset=\"support\"]")).await;
        assert!(row.contains("ok"), "{row}");
        assert!(!row.contains("needs attention"), "{row}");
        screenshot(&browser, "console-assets.png").await;

        click_then_wait(
            &browser,
            Locator::LinkText("Messages"),
            Locator::Id("messages"),
        )
        .await;
        assert!(
            text(&browser).await.contains("friend@example.net")
                || text(&browser).await.contains("admin (console test)")
        );
        screenshot(&browser, "console-messages.png").await;

        click_then_wait(&browser, Locator::Id("logout"), Locator::Id("login")).await;
        browser.goto(&format!("{base}/")).await.unwrap();
        assert!(browser
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/login"));
    };
    let outcome = tokio::time::timeout(Duration::from_secs(120), run).await;
    let _ = browser.close().await;
    driver.stop().await;
    outcome.expect("the browser test took too long");
}
