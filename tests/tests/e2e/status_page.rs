//! The status page in headless Chromium against a real agent and receiver: it
//! shows the standby in sync, the lag rising and the link down when the link is
//! cut, the recovery once it is back, and on the receiver's side a local change
//! reverted with its path and the rollback directory that kept it.
//!
//! Screenshots of each state go to `<target>/tmp/status-page/` (or
//! `$SLUICE_TEST_OUTPUT/status-page/`); their paths are printed on lines starting
//! with `status page:`.

use crate::common::tail;
use sluice_tests::browser::Browser;
use sluice_tests::metrics::http_get;
use sluice_tests::{Fanout, FanoutOptions, FsKind, LoopFs, StandbySpec, random_bytes, wait_until_identical};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const PAGE_WAIT: Duration = Duration::from_secs(60);

fn output_dir() -> PathBuf {
    let base = std::env::var_os("SLUICE_TEST_OUTPUT").map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from);
    base.join("status-page")
}

/// A script for [`Browser::wait_for`]: the row of peer `name` satisfies `test`
/// (a JavaScript expression over `row`, its `data-*` attributes in `row.dataset`).
fn row_where(name: &str, test: &str) -> String {
    format!(
        "const row = document.querySelector('#peers tr[data-peer=\"{name}\"]'); \
         return document.body.dataset.state !== 'unreachable' && row !== null && ({test});"
    )
}

fn keys(value: &serde_json::Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    keys.sort();
    keys
}

#[test]
fn the_status_page_shows_sync_a_cut_link_and_recovery_in_a_browser() {
    let master = LoopFs::new(FsKind::Ext4, 128).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 128).unwrap();
    let (m, s) = (master.path().to_owned(), standby.path().to_owned());
    fs::create_dir(m.join("wiki")).unwrap();
    for i in 0..8 {
        fs::write(m.join(format!("wiki/page{i}.md")), random_bytes(200_000, i)).unwrap();
    }
    let options = FanoutOptions {
        standbys: vec![StandbySpec::new("offsite").in_netns()],
        receiver_toml: "[rollback]\nenabled = true\n".into(),
        ..FanoutOptions::default()
    };
    let mut fanout = Fanout::start_with(&m, &[&s], options).unwrap();
    let failure = |fanout: &Fanout, e: anyhow::Error| format!("{e:#}\nagent:\n{}\nreceiver:\n{}", tail(&fanout.agent_log()), tail(&fanout.receiver_log(0)));
    let agent_addr = fanout.agent().metrics_addr();
    let receiver_addr = fanout.receiver(0).metrics_addr();
    let out = output_dir();
    let browser = Browser::start(1200, 1200).unwrap();

    // The JSON behind the page is what `sluice-agent status --json` prints.
    let served: serde_json::Value = serde_json::from_str(&http_get(agent_addr, "/status.json").unwrap()).unwrap();
    let printed = fanout.agent_status_json().unwrap();
    assert_eq!(keys(&served), keys(&printed), "/status.json and `status --json` differ in their fields");
    for field in ["root", "role", "generation", "peer"] {
        assert_eq!(served[field], printed[field], "{field}");
    }
    assert!(served["lag_history"]["series"]["offsite"].is_array(), "{served:#}");
    let page = http_get(agent_addr, "/").unwrap();
    assert!(page.len() < 300 * 1024, "the page is {} bytes", page.len());

    // In sync.
    browser.goto(&format!("http://{agent_addr}/")).unwrap();
    browser
        .wait_for("the standby in sync", &row_where("offsite", "row.dataset.connected === 'true' && row.dataset.state === 'in sync'"), PAGE_WAIT)
        .unwrap_or_else(|e| panic!("{}", failure(&fanout, e)));
    browser.wait_for("a healthy agent", "return document.body.dataset.state === 'healthy';", PAGE_WAIT).unwrap();
    assert_eq!(browser.text("#health").unwrap(), "healthy");
    let foreign = browser
        .eval("return performance.getEntriesByType('resource').filter(e => !e.name.startsWith(location.origin)).map(e => e.name);")
        .unwrap();
    assert_eq!(foreign, serde_json::json!([]), "the page fetched something from elsewhere");
    let shot = browser.screenshot(&out.join("1-in-sync.png")).unwrap();
    println!("status page: in sync: {}", shot.display());

    // The link is cut while the master keeps writing: the lag rises on the page.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (writing, path) = (writing.clone(), m.join("wiki/page0.md"));
        std::thread::spawn(move || {
            let file = fs::OpenOptions::new().write(true).open(path).unwrap();
            let mut n = 0u64;
            while writing.load(Ordering::Relaxed) {
                file.write_all_at(&random_bytes(16 * 1024, 100 + n), (n * 16 * 1024) % 180_000).unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let link = fanout.link(0).expect("the standby is in a namespace");
    link.cut().unwrap();
    let cut_for = browser
        .wait_for(
            "the link down and the lag above 3 s",
            &row_where("offsite", "row.dataset.connected === 'false' && row.dataset.state !== 'in sync' && Number(row.dataset.lagSeconds) > 3"),
            PAGE_WAIT,
        )
        .unwrap_or_else(|e| panic!("{}", failure(&fanout, e)));
    browser.wait_for("an unhealthy agent", "return document.body.dataset.state === 'unhealthy';", PAGE_WAIT).unwrap();
    assert_eq!(browser.text("#health").unwrap(), "NOT healthy");
    let charted = browser
        .eval("const line = document.querySelector('#chart polyline[data-peer=\"offsite\"]'); return line ? Number(line.dataset.worstLagSeconds) : -1;")
        .unwrap();
    assert!(charted.as_f64().unwrap_or(-1.0) > 3.0, "the chart does not show the lag: {charted}");
    let shot = browser.screenshot(&out.join("2-link-cut.png")).unwrap();
    println!("status page: link cut (shown after {:.1} s): {}", cut_for.as_secs_f64(), shot.display());

    // The link comes back: the page shows the standby in sync again.
    link.restore().unwrap();
    writing.store(false, Ordering::Relaxed);
    writer.join().unwrap();
    let recovered_in = browser
        .wait_for(
            "the standby in sync again",
            &row_where("offsite", "row.dataset.connected === 'true' && row.dataset.state === 'in sync' && Number(row.dataset.lagSeconds) < 1"),
            PAGE_WAIT,
        )
        .unwrap_or_else(|e| panic!("{}", failure(&fanout, e)));
    browser.wait_for("a healthy agent", "return document.body.dataset.state === 'healthy';", PAGE_WAIT).unwrap();
    wait_until_identical(&m, &s, PAGE_WAIT).unwrap_or_else(|e| panic!("{}", failure(&fanout, e)));
    let worst = browser
        .eval("return Number(document.querySelector('#chart polyline[data-peer=\"offsite\"]').dataset.worstLagSeconds);")
        .unwrap();
    assert!(worst.as_f64().unwrap_or(0.0) > 3.0, "the hour's chart forgot the cut: {worst}");
    let served: serde_json::Value = serde_json::from_str(&http_get(agent_addr, "/status.json").unwrap()).unwrap();
    let durable_at = served["standbys"][0]["durable_captured_unix"].as_f64().unwrap_or(0.0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(now - 120.0 < durable_at && durable_at <= now + 1.0, "the durable epoch is not the cut's writes: {served:#}");
    let shot = browser.screenshot(&out.join("3-recovered.png")).unwrap();
    println!("status page: recovered ({:.1} s after the link came back): {}", recovered_in.as_secs_f64(), shot.display());

    // The receiver's page: its master, and a change made on the standby, put
    // back and kept in the rollback directory, named by its path.
    fs::write(s.join("wiki/page3.md"), b"edited on the standby").unwrap();
    browser.goto(&format!("http://{receiver_addr}/")).unwrap();
    browser
        .wait_for("the master connected", &row_where("master", "row.dataset.connected === 'true' && row.dataset.state === 'following'"), PAGE_WAIT)
        .unwrap_or_else(|e| panic!("{}", failure(&fanout, e)));
    browser
        .wait_for(
            "the local change with its path",
            "return [...document.querySelectorAll('#problems li')].some(li => li.textContent.includes('path=wiki/page3.md'));",
            PAGE_WAIT,
        )
        .unwrap_or_else(|e| panic!("{}", failure(&fanout, e)));
    browser
        .wait_for(
            "the rollback directory's size",
            "return [...document.querySelectorAll('#facts dd')].some(dd => / in [1-9][0-9]* entries/.test(dd.textContent));",
            PAGE_WAIT,
        )
        .unwrap_or_else(|e| panic!("{}", failure(&fanout, e)));
    let served: serde_json::Value = serde_json::from_str(&http_get(receiver_addr, "/status.json").unwrap()).unwrap();
    assert!(served["rollback_bytes"].as_u64().unwrap_or(0) >= 21, "{served:#}");
    let shot = browser.screenshot(&out.join("4-receiver.png")).unwrap();
    println!("status page: receiver: {}", shot.display());
    wait_until_identical(&m, &s, PAGE_WAIT).unwrap_or_else(|e| panic!("{}", failure(&fanout, e)));
}
