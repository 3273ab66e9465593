//! The Webhooks page in headless Chromium, driven through chromedriver: sign in, add a webhook
//! through the form, see it listed, send an example, see the attempt, delete it. Screenshots go to
//! `target/screenshots/` for a person to look at.
//!
//! Chromium comes from Debian's `chromium` and `chromium-driver` packages, which
//! `scripts/test.sh` installs and then sets `HOOKRELAY_REQUIRE_BROWSER=1`: with it, a missing
//! browser fails the test. Without it (a bare `cargo test` on a machine without Chromium) the test
//! says loudly that it did not run.

use crate::helpers::api::{api_settings, start_api, Api};
use crate::helpers::*;
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

fn first_existing(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

fn screenshots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// chromedriver (started here, on a free port) and a session in a fresh Chromium profile.
struct Browser {
    client: Client,
    driver: Child,
    profile: PathBuf,
}

impl Browser {
    /// None (after saying so loudly) when Chromium is not installed and not required.
    async fn launch() -> Option<Browser> {
        let chromium = first_existing(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]);
        let driver = first_existing(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            let message = "Chromium or chromedriver is not installed, so the browser test of \
                           the Webhooks page DID NOT RUN. Install them with \
                           `apt-get install chromium chromium-driver` (scripts/test.sh does).";
            if std::env::var_os("HOOKRELAY_REQUIRE_BROWSER").is_some() {
                panic!("{message}");
            }
            eprintln!(
                "\n{}\n!!! SKIPPED: {message}\n{}\n",
                "!".repeat(100),
                "!".repeat(100)
            );
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(screenshots_dir().join("chromedriver.log")).unwrap();
        let driver = Command::new(driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("chromedriver starts");
        let profile = std::env::temp_dir().join(format!(
            "hookrelay-chromium-{}",
            hookrelay::random_token(12)
        ));
        let browser = Browser {
            client: connect(port, &chromium, &profile).await,
            driver,
            profile,
        };
        browser.client.set_window_size(1280, 1000).await.unwrap();
        Some(browser)
    }

    /// The whole page, not just the window: the window grows to the page's height for the shot.
    async fn screenshot(&self, name: &str) {
        let (width, height) = self.client.get_window_size().await.unwrap();
        let sizes = self
            .client
            .execute(
                "return [document.documentElement.scrollHeight, window.innerHeight];",
                vec![],
            )
            .await
            .unwrap();
        let page = sizes[0].as_u64().unwrap();
        let chrome = height.saturating_sub(sizes[1].as_u64().unwrap());
        let full = (page + chrome).max(height);
        self.client
            .set_window_size(width as u32, full as u32)
            .await
            .unwrap();
        let png = self.client.screenshot().await.unwrap();
        self.client
            .set_window_size(width as u32, height as u32)
            .await
            .unwrap();
        std::fs::write(screenshots_dir().join(name), png).unwrap();
    }

    async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
    }

    /// Waits until the element's text contains `needle`; returns the text.
    async fn text_of(&self, css: &str, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = self.find(css).await.text().await.unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            if tokio::time::Instant::now() > deadline {
                self.screenshot("failure.png").await;
                panic!("{css} says {text:?}, never {needle:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    async fn type_into(&self, css: &str, text: &str) {
        self.find(css).await.send_keys(text).await.unwrap();
    }

    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        self.stop_driver();
    }

    fn stop_driver(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // After a failed assertion, too: the driver was started by this test.
        self.stop_driver();
    }
}

async fn connect(port: u16, chromium: &Path, profile: &Path) -> Client {
    let mut args = vec![
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--disable-default-apps",
        "--disable-domain-reliability",
        "--no-default-browser-check",
        "--window-size=1280,1000",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect::<Vec<_>>();
    args.push(format!("--user-data-dir={}", profile.display()));
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({ "binary": chromium, "args": args }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(capabilities.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return client,
            // chromedriver may not listen yet.
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no WebDriver session from chromedriver on {url}: {e}"),
        }
    }
}

async fn webhook_count(api: &Api, token: &str) -> usize {
    let (_, list) = api.get("/v1/accounts/shop-b/webhooks", token).await;
    list["webhooks"].as_array().unwrap().len()
}

#[tokio::test]
async fn a_merchant_manages_a_webhook_on_the_page_in_a_real_browser() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let app = spawn_app().await;
    let api = start_api(api_settings(&app.prefix, &[])).await;
    let token = api.token_for("shop-b").await;
    let target = app.receiver.url("/page");

    // Sign in.
    browser
        .client
        .goto(&format!("{}/", api.base))
        .await
        .unwrap();
    browser.find("#token").await;
    browser.screenshot("01-sign-in.png").await;
    browser.type_into("#token", &token).await;
    browser.click("#signin-submit").await;
    browser.find("#app:not([hidden])").await;
    browser.text_of("#count", "0 of 10 webhooks").await;
    browser.text_of("#who", "shop-b").await;

    // Add a webhook through the form.
    browser.click("#add-open").await;
    browser.type_into("#url", &target).await;
    browser.type_into("#description", "Checkout service").await;
    browser.click("input[value='payment.card.success']").await;
    browser.click("input[value='customer.registered']").await;
    browser.screenshot("02-add-form.png").await;
    browser.click("#add-submit").await;
    let secret = browser
        .text_of("#secret-panel:not([hidden]) #secret-value", "whsec_")
        .await;
    browser.click("#secret-copy").await;
    browser.text_of("#secret-copy", "Copied").await;
    browser.text_of("#webhooks li.webhook .url", &target).await;
    browser.text_of("#count", "1 of 10 webhooks").await;
    let chips = browser
        .text_of("#webhooks li.webhook .chips", "payment.card.success")
        .await;
    assert!(chips.contains("customer.registered"), "{chips}");
    browser
        .text_of("#webhooks li.webhook .badge", "Enabled")
        .await;
    browser.screenshot("03-added-with-secret.png").await;
    assert_eq!(webhook_count(&api, &token).await, 1);
    browser.click("#secret-done").await;

    // The same URL again: the API's refusal is shown as a message.
    browser.click("#add-open").await;
    browser.type_into("#url", &target).await;
    browser.click("#all-events").await;
    browser.click("#add-submit").await;
    browser
        .text_of("#flash:not([hidden])", "already has a webhook")
        .await;
    browser.screenshot("04-duplicate-refused.png").await;
    browser.click("#add-cancel").await;

    // Send an example and see the attempt.
    browser.click("#webhooks li.webhook button.send").await;
    browser
        .text_of("#webhooks li.webhook .result", "HTTP 200")
        .await;
    let attempt = browser
        .text_of("#webhooks li.webhook .attempt", "payment.card.success")
        .await;
    assert!(attempt.contains("attempt 1"), "{attempt}");
    browser
        .text_of("#webhooks li.webhook .last", "HTTP 200")
        .await;
    let hit = app.receiver.wait_for("/page", 1, WAIT).await.remove(0);
    let body: serde_json::Value = serde_json::from_slice(&hit.body).unwrap();
    assert_eq!(body["data"]["example"], true);
    let secret = hookrelay::delivery::signing::Secret::parse(secret.trim()).unwrap();
    let id = hit.headers["webhook-id"].to_str().unwrap();
    let timestamp: i64 = hit.headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(hookrelay::delivery::signing::verify_standard(
        &[secret],
        hit.headers["webhook-signature"].to_str().unwrap(),
        id,
        timestamp,
        &hit.body
    ));
    browser.screenshot("05-example-sent.png").await;

    // Resend that attempt's event: a fresh delivery through the broker, same webhook-id.
    browser
        .click("#webhooks li.webhook .attempt button.resend")
        .await;
    browser
        .text_of("#flash:not([hidden])", "queued for redelivery")
        .await;
    let hits = app.receiver.wait_for("/page", 2, WAIT).await;
    assert_eq!(hits[1].headers["webhook-id"], id);

    // Disable and enable again.
    browser.click("#webhooks li.webhook button.toggle").await;
    browser
        .text_of("#webhooks li.webhook .badge", "Disabled")
        .await;
    browser.click("#webhooks li.webhook button.toggle").await;
    browser
        .text_of("#webhooks li.webhook .badge", "Enabled")
        .await;

    // On a phone-sized screen nothing is wider than the screen.
    browser.client.set_window_size(390, 844).await.unwrap();
    // The toggles re-rendered the list, so the attempts are closed again.
    browser
        .click("#webhooks li.webhook button.show-attempts")
        .await;
    browser
        .find("#webhooks li.webhook .attempts:not([hidden]) .attempt")
        .await;
    let overflow = browser
        .client
        .execute(
            "return document.documentElement.scrollWidth - window.innerWidth;",
            vec![],
        )
        .await
        .unwrap();
    browser.screenshot("06-narrow-screen.png").await;
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "the page scrolls sideways by {overflow}px"
    );
    browser.click("#add-open").await;
    browser.find("#add-form:not([hidden])").await;
    let overflow = browser
        .client
        .execute(
            "return document.documentElement.scrollWidth - window.innerWidth;",
            vec![],
        )
        .await
        .unwrap();
    browser.screenshot("07-narrow-add-form.png").await;
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "the form scrolls sideways by {overflow}px"
    );
    browser.click("#add-cancel").await;
    browser.client.set_window_size(1280, 1000).await.unwrap();

    // Delete, after confirming.
    browser.click("#webhooks li.webhook button.delete").await;
    browser
        .find("#webhooks li.webhook .confirm:not([hidden])")
        .await;
    browser.screenshot("08-confirm-delete.png").await;
    browser
        .click("#webhooks li.webhook button.confirm-delete")
        .await;
    browser.find("#empty:not([hidden])").await;
    browser
        .text_of("#flash:not([hidden])", "Webhook deleted")
        .await;
    browser.text_of("#count", "0 of 10 webhooks").await;
    browser.screenshot("09-deleted.png").await;
    assert_eq!(webhook_count(&api, &token).await, 0);

    browser.close().await;
    api.stop().await;
    app.cleanup().await;
}
