//! A chain of standbys: the master feeds standby A, and A forwards what it
//! applies to standby B (`[[forward]]`), whose lag is counted from the master.

use crate::common::{Frozen, tail};
use sluice_tests::daemons::{Binaries, Daemon, ReceiverConfig, free_tcp_addr, free_udp_addr, init_identity, render_config};
use sluice_tests::{FsKind, LoopFs, Pair, PairOptions, random_bytes, run, wait_until, wait_until_identical};
use std::fs;
use std::time::{Duration, Instant};

#[test]
fn a_relay_chain_converges_and_reports_lag_from_the_master() {
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let relay_fs = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let last_fs = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let (m, a, b) = (master.path().to_owned(), relay_fs.path().to_owned(), last_fs.path().to_owned());
    fs::create_dir_all(m.join("data/deep")).unwrap();
    fs::write(m.join("data/before"), random_bytes(3 << 20, 1)).unwrap();

    let binaries = Binaries::locate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let last_identity = dir.path().join("b-identity");
    let last_fingerprint = init_identity(&binaries.receiver, &last_identity).unwrap();
    let (last_listen, last_metrics, relay_metrics) = (free_udp_addr().unwrap(), free_tcp_addr().unwrap(), free_tcp_addr().unwrap());
    let receiver_toml = format!(
        "[[forward]]\nname = \"b\"\naddress = \"{last_listen}\"\npeer_fingerprint = \"{last_fingerprint}\"\n[relay]\nmetrics_listen = \"{relay_metrics}\"\n"
    );
    let mut pair = Pair::start_with(&m, &a, PairOptions { receiver_toml, ..PairOptions::default() }).unwrap();

    // B pins A's receiver, whose identity the relay presents.
    let config = ReceiverConfig {
        root: b.clone(),
        listen: last_listen,
        identity: last_identity,
        peer_fingerprint: pair.receiver_fingerprint().to_owned(),
        metrics_listen: last_metrics,
    };
    let config_path = dir.path().join("b.toml");
    fs::write(&config_path, render_config(config.to_table(), "").unwrap()).unwrap();
    let mut last = Daemon::new("receiver-b", &binaries.receiver, &config_path, &dir.path().join("b.log"), last_metrics);
    last.start(Duration::from_secs(30)).unwrap();

    let converged = |pair: &Pair, what: &str| {
        wait_until_identical(&m, &b, Duration::from_secs(60)).unwrap_or_else(|e| {
            panic!("{what}: {e:#}\n--- A's receiver (and relay) ---\n{}\n--- B ---\n{}", tail(&pair.receiver_log()), tail(&last.log()))
        })
    };
    converged(&pair, "the initial sync down the chain");

    // Changes at the master travel A → B: data, a rename, a removal.
    fs::write(m.join("data/deep/new"), random_bytes(1 << 20, 2)).unwrap();
    fs::rename(m.join("data/before"), m.join("data/renamed")).unwrap();
    fs::write(m.join("data/gone"), b"short-lived").unwrap();
    fs::remove_file(m.join("data/gone")).unwrap();
    converged(&pair, "changes made after the sync");
    let relayed = sluice_tests::scrape(relay_metrics).unwrap();
    assert_eq!(relayed.get("sluice_standby_connected{standby=\"b\"}"), 1.0, "the relay reports its standby");

    // A stops applying for a while (its filesystem frozen): what it applies
    // after the thaw reaches B stamped with the master's capture time, so B's
    // lag counts from the master, not from the relay.
    let frozen = Frozen(&a);
    run(&format!("fsfreeze -f {}", a.display())).unwrap();
    let written = Instant::now();
    fs::write(m.join("data/while-a-was-frozen"), random_bytes(256 << 10, 3)).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    drop(frozen);
    converged(&pair, "changes made while A was frozen");
    let end_to_end = written.elapsed().as_secs_f64();
    let b_lag = last.metrics().unwrap().get("sluice_lag_seconds");
    let a_lag = pair.receiver_metrics().unwrap().get("sluice_lag_seconds");
    println!("relay: A's lag {a_lag:.3} s, B's lag {b_lag:.3} s, master write to B identical {end_to_end:.3} s");
    assert!(a_lag >= 2.5, "A applied the change about 3 s after the master made it: {a_lag}");
    assert!(b_lag >= a_lag - 0.05, "B's lag is counted from the master: A {a_lag}, B {b_lag}");
    assert!(b_lag <= end_to_end + 0.5, "B's lag is not more than the time it took: {b_lag} > {end_to_end}");

    // A's relay restarts with it; B keeps up after the restart.
    pair.stop_receiver().unwrap();
    wait_until("A's relay to stop with A", Duration::from_secs(15), || Ok(sluice_tests::scrape(relay_metrics).is_err())).unwrap();
    pair.start_receiver().unwrap();
    fs::write(m.join("data/after-restart"), random_bytes(100_000, 4)).unwrap();
    converged(&pair, "changes made after A restarted");
}
