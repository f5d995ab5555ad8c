//! A headless Chromium driven through chromedriver (Debian's `chromium` and
//! `chromium-driver`), for tests of the status page as people see it.
//!
//! The WebDriver client is async; [`Browser`] owns a small runtime so tests,
//! which are plain threads, call it like any other helper.

use anyhow::{Context, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Flags for a root, offline, GPU-less machine: without the background
/// networking ones Chromium keeps trying to reach Google's hosts.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
];

/// One Chromium window, closed (and its driver stopped) on drop.
pub struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    _profile: TempDir,
}

impl Browser {
    /// Starts chromedriver and a Chromium of `width`×`height` pixels with a fresh profile.
    pub fn start(width: u32, height: u32) -> anyhow::Result<Browser> {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(tool).exists() {
                bail!("{tool} is missing: `cargo xtask setup` installs Debian's chromium and chromium-driver");
            }
        }
        let profile = tempfile::Builder::new().prefix("sluice-chromium-").tempdir()?;
        let port = crate::daemons::free_tcp_addr()?.port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {CHROMEDRIVER}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let mut browser = Browser { runtime, client: None, driver, _profile: profile };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("chromedriver did not listen on port {port} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| f.to_string()).collect();
        args.push(format!("--window-size={width},{height}"));
        args.push(format!("--user-data-dir={}", browser._profile.path().display()));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), serde_json::json!({ "binary": CHROMIUM, "args": args }));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = browser
            .runtime
            .block_on(ClientBuilder::new(connector).capabilities(capabilities).connect(&format!("http://127.0.0.1:{port}")))
            .context("starting a Chromium session through chromedriver")?;
        browser.client = Some(client);
        Ok(browser)
    }

    fn client(&self) -> anyhow::Result<&Client> {
        self.client.as_ref().context("the browser is closed")
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) -> anyhow::Result<()> {
        let client = self.client()?;
        self.runtime.block_on(client.goto(url)).with_context(|| format!("opening {url}"))
    }

    /// Runs `script` (a function body: `return …`) in the page and returns its value.
    pub fn eval(&self, script: &str) -> anyhow::Result<serde_json::Value> {
        let client = self.client()?;
        self.runtime.block_on(client.execute(script, Vec::new())).with_context(|| format!("running {script:?} in the page"))
    }

    /// The visible text of the first element matching `css`.
    pub fn text(&self, css: &str) -> anyhow::Result<String> {
        let client = self.client()?;
        self.runtime
            .block_on(async { client.find(Locator::Css(css)).await?.text().await })
            .with_context(|| format!("reading the text of {css}"))
    }

    /// Polls `script` until it returns `true`, or fails after `timeout` with
    /// the page's text, which says what it showed instead.
    pub fn wait_for(&self, what: &str, script: &str, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            if self.eval(script)?.as_bool() == Some(true) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                let shown = self.text("body").unwrap_or_default();
                bail!("the page did not show {what} within {timeout:?}; it shows:\n{shown}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Saves a PNG of the window to `path`.
    pub fn screenshot(&self, path: &Path) -> anyhow::Result<PathBuf> {
        let client = self.client()?;
        let png = self.runtime.block_on(client.screenshot()).context("taking a screenshot")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(path.to_owned())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(async { tokio::time::timeout(Duration::from_secs(10), client.close()).await });
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
