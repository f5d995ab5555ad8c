//! Smoke tests of the end-to-end helpers themselves: if these fail, no end-to-end
//! result can be trusted. Needs root (loop mounts, chown).

use std::fs::{self, File};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::time::{Duration, SystemTime};

use sluice_tests::daemons::{parse_fingerprint, render_config};
use sluice_tests::{
    CompareOptions, Difference, FsKind, LoopFs, Metrics, Side, compare_trees, compare_trees_with,
    random_bytes, run, wait_until_identical,
};
use tempfile::TempDir;

/// A tree with every kind of entry compare_trees looks at.
fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("dir/nested")).unwrap();
    fs::write(root.join("dir/data.bin"), random_bytes(300_000, 7)).unwrap();
    fs::write(root.join("dir/nested/small.txt"), b"hello\n").unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::set_permissions(root.join("empty"), fs::Permissions::from_mode(0o4750)).unwrap();
    fs::hard_link(root.join("dir/data.bin"), root.join("data-link.bin")).unwrap();
    symlink("dir/nested/small.txt", root.join("link")).unwrap();
    symlink("/nonexistent", root.join("dangling")).unwrap();
    run(&format!("mkfifo {}/fifo", root.display())).unwrap();
}

/// Two identical copies of [`sample_tree`], made with `cp -a`.
fn identical_pair() -> (TempDir, TempDir) {
    let a = TempDir::new().unwrap();
    let b = TempDir::new().unwrap();
    sample_tree(a.path());
    run(&format!(
        "cp -a {}/. {}/",
        a.path().display(),
        b.path().display()
    ))
    .unwrap();
    (a, b)
}

/// The differences found, which must all concern `path`.
fn differences_at(a: &Path, b: &Path, path: &str) -> Vec<Difference> {
    let diff = compare_trees(a, b).expect_err("trees should differ");
    let differences = diff.differences().to_vec();
    assert!(
        differences.iter().all(|d| d.path() == Path::new(path)),
        "unexpected differences:\n{diff}"
    );
    differences
}

fn mounted_type(path: &Path) -> Option<String> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&path.to_str().unwrap())).then(|| fields[2].to_owned())
    })
}

fn check_loopfs(kind: FsKind, size_mib: u64) {
    let fs = LoopFs::new(kind, size_mib).unwrap();
    let mountpoint = fs.path().to_owned();
    assert_eq!(mounted_type(&mountpoint).as_deref(), Some(kind.name()));
    fs::write(mountpoint.join("file"), random_bytes(1 << 20, 1)).unwrap();
    assert_eq!(
        fs::read(mountpoint.join("file")).unwrap(),
        random_bytes(1 << 20, 1)
    );
    drop(fs);
    assert_eq!(mounted_type(&mountpoint), None);
    assert!(!mountpoint.exists(), "the tempdir should be removed");
}

#[test]
fn loopfs_ext4_mounts_and_cleans_up() {
    check_loopfs(FsKind::Ext4, 64);
}

#[test]
fn loopfs_btrfs_mounts_and_cleans_up() {
    check_loopfs(FsKind::Btrfs, 256);
}

#[test]
fn loopfs_xfs_mounts_and_cleans_up() {
    check_loopfs(FsKind::Xfs, 320);
}

#[test]
fn copies_made_with_cp_a_are_identical() {
    let (a, b) = identical_pair();
    compare_trees(a.path(), b.path()).unwrap();
    compare_trees_with(
        a.path(),
        b.path(),
        &CompareOptions {
            dir_mtime: true,
            blocks: false,
        },
    )
    .unwrap();
}

#[test]
fn lost_found_and_sluice_dir_are_ignored_at_top_level_only() {
    let fs_a = LoopFs::new(FsKind::Ext4, 32).unwrap();
    let b = TempDir::new().unwrap();
    assert!(fs_a.path().join("lost+found").is_dir());
    fs::create_dir(fs_a.path().join(".sluice")).unwrap();
    fs::write(fs_a.path().join(".sluice/state"), b"x").unwrap();
    compare_trees(fs_a.path(), b.path()).unwrap();

    fs::create_dir_all(b.path().join("sub/.sluice")).unwrap();
    let diff = compare_trees(fs_a.path(), b.path()).unwrap_err();
    assert!(diff.differences().contains(&Difference::Missing {
        path: "sub".into(),
        only_in: Side::B
    }));
    assert!(
        diff.differences()
            .iter()
            .any(|d| d.path() == Path::new("sub/.sluice")),
        "{diff}"
    );
}

#[test]
fn detects_content_difference_of_same_size() {
    let (a, b) = identical_pair();
    let path = b.path().join("dir/nested/small.txt");
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    fs::write(&path, b"hellO\n").unwrap();
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(
        differences_at(a.path(), b.path(), "dir/nested/small.txt"),
        vec![Difference::Content {
            path: "dir/nested/small.txt".into(),
            offset: 4
        }]
    );
}

#[test]
fn detects_content_difference_far_into_a_file() {
    let (a, b) = identical_pair();
    let path = b.path().join("dir/data.bin");
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    let mut data = fs::read(&path).unwrap();
    data[290_000] ^= 1;
    fs::write(&path, &data).unwrap();
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    // data-link.bin is the same inode on B, so it differs too.
    let diff = compare_trees(a.path(), b.path()).unwrap_err();
    for name in ["dir/data.bin", "data-link.bin"] {
        assert!(
            diff.differences().contains(&Difference::Content {
                path: name.into(),
                offset: 290_000
            }),
            "{diff}"
        );
    }
}

#[test]
fn detects_size_difference() {
    let (a, b) = identical_pair();
    let path = b.path().join("empty");
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(10)
        .unwrap();
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(
        differences_at(a.path(), b.path(), "empty"),
        vec![Difference::Size {
            path: "empty".into(),
            a: 0,
            b: 10
        }]
    );
}

#[test]
fn detects_mode_difference_including_suid() {
    let (a, b) = identical_pair();
    fs::set_permissions(b.path().join("empty"), fs::Permissions::from_mode(0o0750)).unwrap();
    assert_eq!(
        differences_at(a.path(), b.path(), "empty"),
        vec![Difference::Mode {
            path: "empty".into(),
            a: 0o4750,
            b: 0o0750
        }]
    );
}

#[test]
fn detects_owner_difference() {
    let (a, b) = identical_pair();
    std::os::unix::fs::lchown(b.path().join("link"), Some(1234), Some(5678)).unwrap();
    let differences = differences_at(a.path(), b.path(), "link");
    assert!(
        matches!(
            differences[..],
            [Difference::Owner {
                b: (1234, 5678),
                ..
            }]
        ),
        "{differences:?}"
    );
}

#[test]
fn detects_nanosecond_mtime_difference() {
    let (a, b) = identical_pair();
    let path = b.path().join("dir/nested/small.txt");
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime + Duration::from_nanos(1))
        .unwrap();
    let differences = differences_at(a.path(), b.path(), "dir/nested/small.txt");
    assert!(
        matches!(differences[..], [Difference::Mtime { .. }]),
        "{differences:?}"
    );
}

#[test]
fn detects_symlink_mtime_difference() {
    let (a, b) = identical_pair();
    run(&format!(
        "touch -h -d @1000000000.5 {}/link",
        b.path().display()
    ))
    .unwrap();
    let differences = differences_at(a.path(), b.path(), "link");
    assert!(
        matches!(
            differences[..],
            [Difference::Mtime {
                b: (1_000_000_000, 500_000_000),
                ..
            }]
        ),
        "{differences:?}"
    );
}

#[test]
fn directory_mtime_is_compared_only_on_request() {
    let (a, b) = identical_pair();
    let dir = b.path().join("dir/nested");
    File::open(&dir)
        .unwrap()
        .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(42))
        .unwrap();
    compare_trees(a.path(), b.path()).unwrap();
    let diff = compare_trees_with(
        a.path(),
        b.path(),
        &CompareOptions {
            dir_mtime: true,
            blocks: false,
        },
    )
    .unwrap_err();
    assert!(
        matches!(diff.differences(), [Difference::Mtime { b: (42, 0), .. }]),
        "{diff}"
    );
}

#[test]
fn detects_symlink_target_difference() {
    let (a, b) = identical_pair();
    let link = b.path().join("link");
    fs::remove_file(&link).unwrap();
    // Same length, so only the target differs.
    symlink("dir/nested/small.txX", &link).unwrap();
    run(&format!(
        "touch -h -r {}/link {}",
        a.path().display(),
        link.display()
    ))
    .unwrap();
    assert_eq!(
        differences_at(a.path(), b.path(), "link"),
        vec![Difference::SymlinkTarget {
            path: "link".into(),
            a: "dir/nested/small.txt".into(),
            b: "dir/nested/small.txX".into(),
        }]
    );
}

#[test]
fn detects_missing_entries_on_either_side() {
    let (a, b) = identical_pair();
    fs::remove_file(b.path().join("fifo")).unwrap();
    fs::write(b.path().join("extra"), b"").unwrap();
    let diff = compare_trees(a.path(), b.path()).unwrap_err();
    assert_eq!(
        diff.differences(),
        [
            Difference::Missing {
                path: "extra".into(),
                only_in: Side::B
            },
            Difference::Missing {
                path: "fifo".into(),
                only_in: Side::A
            },
        ]
    );
}

#[test]
fn detects_type_difference() {
    let (a, b) = identical_pair();
    fs::remove_file(b.path().join("empty")).unwrap();
    fs::create_dir(b.path().join("empty")).unwrap();
    let differences = differences_at(a.path(), b.path(), "empty");
    assert!(
        matches!(differences[..], [Difference::FileType { .. }]),
        "{differences:?}"
    );
}

#[test]
fn detects_broken_hardlink_grouping() {
    let (a, b) = identical_pair();
    // Replace B's link with an identical copy that has its own inode.
    let link = b.path().join("data-link.bin");
    fs::remove_file(&link).unwrap();
    run(&format!(
        "cp -p {}/dir/data.bin {}",
        b.path().display(),
        link.display()
    ))
    .unwrap();
    let diff = compare_trees(a.path(), b.path()).unwrap_err();
    assert_eq!(diff.total(), 1, "{diff}");
    let [
        Difference::Hardlinks {
            a: group_a,
            b: group_b,
            ..
        },
    ] = diff.differences()
    else {
        panic!("expected a hardlink difference: {diff}");
    };
    assert_eq!(
        group_a,
        &vec![Path::new("data-link.bin").to_owned(), "dir/data.bin".into()]
    );
    assert_eq!(group_b.len(), 1);
}

#[test]
fn detects_extra_hardlink_grouping() {
    let (a, b) = identical_pair();
    // B links two files that are separate (but equal) on A.
    fs::write(a.path().join("x"), b"same").unwrap();
    run(&format!("cp -p {0}/x {0}/y", a.path().display())).unwrap();
    run(&format!(
        "cp -p {}/x {}/x",
        a.path().display(),
        b.path().display()
    ))
    .unwrap();
    fs::hard_link(b.path().join("x"), b.path().join("y")).unwrap();
    let diff = compare_trees(a.path(), b.path()).unwrap_err();
    assert!(
        diff.differences()
            .iter()
            .all(|d| matches!(d, Difference::Hardlinks { .. })),
        "{diff}"
    );
}

#[test]
fn diff_listing_is_capped() {
    let a = TempDir::new().unwrap();
    let b = TempDir::new().unwrap();
    for i in 0..50 {
        fs::write(a.path().join(format!("f{i:02}")), b"").unwrap();
    }
    let diff = compare_trees(a.path(), b.path()).unwrap_err();
    assert_eq!(diff.total(), 50);
    assert_eq!(diff.differences().len(), 20);
    assert!(diff.to_string().contains("... and 30 more"), "{diff}");
}

#[test]
fn wait_until_identical_returns_once_copied_and_reports_the_diff_on_timeout() {
    let (a, b) = identical_pair();
    wait_until_identical(a.path(), b.path(), Duration::from_secs(1)).unwrap();

    fs::write(a.path().join("late"), b"").unwrap();
    let error = wait_until_identical(a.path(), b.path(), Duration::from_millis(200)).unwrap_err();
    let diff = error
        .downcast_ref::<sluice_tests::TreeDiff>()
        .expect("the error carries the TreeDiff");
    assert_eq!(
        diff.differences(),
        [Difference::Missing {
            path: "late".into(),
            only_in: Side::A
        }]
    );

    let copier = {
        let (a, b) = (a.path().to_owned(), b.path().to_owned());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            run(&format!("cp -a {}/late {}/", a.display(), b.display())).unwrap();
        })
    };
    wait_until_identical(a.path(), b.path(), Duration::from_secs(10)).unwrap();
    copier.join().unwrap();
}

#[test]
fn parses_prometheus_text() {
    let text = r#"# HELP sluice_lag_seconds Seconds behind the master.
# TYPE sluice_lag_seconds gauge
sluice_lag_seconds 0.25
sluice_lag_bytes 4096
sluice_wire_bytes_sent_total 1.5e6 1700000000000
sluice_events_captured_total{kind="write"} 10
sluice_events_captured_total{kind="rename",note="a } b"} 5
sluice_connected 1
weird line without value
# EOF
"#;
    let metrics = Metrics::parse(text);
    assert_eq!(metrics.get("sluice_lag_seconds"), 0.25);
    assert_eq!(metrics.get("sluice_lag_bytes"), 4096.0);
    assert_eq!(metrics.get("sluice_wire_bytes_sent_total"), 1.5e6);
    assert_eq!(
        metrics.get(r#"sluice_events_captured_total{kind="write"}"#),
        10.0
    );
    assert_eq!(metrics.sum("sluice_events_captured_total"), 15.0);
    assert_eq!(metrics.get("sluice_connected"), 1.0);
    assert_eq!(metrics.get("sluice_missing_total"), 0.0);
    assert_eq!(metrics.try_get("sluice_missing_total"), None);
    assert_eq!(metrics.len(), 6);
}

#[test]
fn parses_init_fingerprint_line() {
    let hex = "0123456789abcdef".repeat(4);
    assert_eq!(
        parse_fingerprint(&format!("wrote cert.pem\nfingerprint: {hex}\n")),
        Some(hex.clone())
    );
    assert_eq!(
        parse_fingerprint(&format!("fingerprint: {}", hex.to_uppercase())),
        None
    );
    assert_eq!(parse_fingerprint("fingerprint: abc"), None);
}

#[test]
fn extra_toml_merges_into_generated_config() {
    let mut base = toml::Table::new();
    let mut capture = toml::Table::new();
    capture.insert("ring_buffer_bytes".into(), 8.into());
    base.insert("root".into(), "/srv".into());
    base.insert("capture".into(), capture.into());
    let rendered = render_config(
        base,
        "[capture]\nmode = \"tp_btf\"\nring_buffer_bytes = 16\n",
    )
    .unwrap();
    let parsed: toml::Table = toml::from_str(&rendered).unwrap();
    assert_eq!(parsed["root"].as_str(), Some("/srv"));
    assert_eq!(
        parsed["capture"]["ring_buffer_bytes"].as_integer(),
        Some(16)
    );
    assert_eq!(parsed["capture"]["mode"].as_str(), Some("tp_btf"));
}

#[test]
fn random_bytes_are_deterministic_and_seed_dependent() {
    assert_eq!(random_bytes(1000, 3), random_bytes(1000, 3));
    assert_ne!(random_bytes(1000, 3), random_bytes(1000, 4));
    assert_eq!(random_bytes(13, 0).len(), 13);
    assert_eq!(&random_bytes(100, 5)[..13], &random_bytes(13, 5)[..]);
}

#[test]
fn run_returns_stdout_and_fails_with_stderr() {
    assert_eq!(run("echo out").unwrap(), "out\n");
    let error = run("echo oops >&2; exit 3").unwrap_err().to_string();
    assert!(error.contains("oops"), "{error}");
}

/// Stands in for both daemons with just enough of their CLI contract (`init`
/// printing a fingerprint, `run --config` serving /metrics, clean exit on SIGTERM)
/// to exercise [`Pair`] before the real ones exist.
const FAKE_DAEMON: &str = r##"#!/usr/bin/env python3
import hashlib, http.server, os, signal, sys, tomllib

if sys.argv[1] == "init":
    identity = sys.argv[3]
    os.makedirs(identity, exist_ok=True)
    for name in ("cert.pem", "key.pem"):
        open(os.path.join(identity, name), "w").write(name)
    print("fingerprint: " + hashlib.sha256(identity.encode()).hexdigest())
    sys.exit(0)

config = tomllib.load(open(sys.argv[3], "rb"))
host, port = config["metrics"]["listen"].rsplit(":", 1)
peer_ok = int(len(config["tls"]["peer_fingerprint"]) == 64)

class Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (f"# TYPE sluice_initial_sync_complete gauge\nsluice_initial_sync_complete 1\n"
                f"fake_peer_ok {peer_ok}\n# EOF\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

signal.signal(signal.SIGTERM, lambda *args: sys.exit(0))
print(os.path.basename(sys.argv[0]), "serving", flush=True)
http.server.HTTPServer((host, int(port)), Metrics).serve_forever()
"##;

#[test]
fn pair_starts_restarts_and_stops_daemons() {
    let bin_dir = TempDir::new().unwrap();
    for name in ["sluice-agent", "sluice-receiver"] {
        let path = bin_dir.path().join(name);
        fs::write(&path, FAKE_DAEMON).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let master = TempDir::new().unwrap();
    let standby = TempDir::new().unwrap();
    let options = sluice_tests::PairOptions {
        binaries: Some(sluice_tests::Binaries::in_dir(bin_dir.path()).unwrap()),
        agent_toml: "[capture]\nring_buffer_bytes = 65536\n".into(),
        ..Default::default()
    };
    let mut pair = sluice_tests::Pair::start_with(master.path(), standby.path(), options).unwrap();

    let agent_config: toml::Table =
        toml::from_str(&fs::read_to_string(pair.dir().join("agent.toml")).unwrap()).unwrap();
    let receiver_config: toml::Table =
        toml::from_str(&fs::read_to_string(pair.dir().join("receiver.toml")).unwrap()).unwrap();
    assert_eq!(agent_config["root"].as_str(), master.path().to_str());
    assert_eq!(receiver_config["root"].as_str(), standby.path().to_str());
    assert_eq!(agent_config["receiver"], receiver_config["listen"]);
    assert_eq!(
        agent_config["capture"]["ring_buffer_bytes"].as_integer(),
        Some(65536)
    );
    assert!(pair.dir().join("agent-identity/cert.pem").is_file());
    assert_eq!(pair.agent_metrics().unwrap().get("fake_peer_ok"), 1.0);
    assert_eq!(pair.receiver_metrics().unwrap().get("fake_peer_ok"), 1.0);

    assert!(pair.stop_agent().unwrap().unwrap().success());
    assert!(pair.agent_metrics().is_err());
    pair.start_agent().unwrap();
    assert_eq!(pair.agent_log().matches("sluice-agent serving").count(), 2);
    pair.kill_receiver().unwrap();
    assert!(pair.receiver_metrics().is_err());
    assert_eq!(pair.stop_receiver().unwrap(), None);
}

#[test]
fn pair_reports_a_daemon_that_exits_at_startup() {
    let bin_dir = TempDir::new().unwrap();
    let script = "#!/bin/sh\nif [ \"$1\" = init ]; then echo \"fingerprint: $(printf %064d 0)\"; exit 0; fi\necho 'bad config: no such key' >&2\nexit 1\n";
    for name in ["sluice-agent", "sluice-receiver"] {
        let path = bin_dir.path().join(name);
        fs::write(&path, script).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let dirs = TempDir::new().unwrap();
    let options = sluice_tests::PairOptions {
        binaries: Some(sluice_tests::Binaries::in_dir(bin_dir.path()).unwrap()),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let error = sluice_tests::Pair::start_with(dirs.path(), dirs.path(), options)
        .err()
        .unwrap();
    let message = format!("{error:?}");
    assert!(message.contains("receiver exited"), "{message}");
    assert!(message.contains("bad config: no such key"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "should fail fast, not wait for the timeout"
    );
}

/// Serves one canned HTTP response and returns the address.
fn serve_once(response: &'static str) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        // Read the whole request: closing with unread bytes would reset the connection.
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "request ended early");
            request.extend_from_slice(&buf[..n]);
        }
        stream.write_all(response.as_bytes()).unwrap();
    });
    addr
}

#[test]
fn scrape_reads_plain_and_chunked_responses() {
    let plain =
        serve_once("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nsluice_lag_bytes 12\n");
    assert_eq!(
        sluice_tests::scrape(plain).unwrap().get("sluice_lag_bytes"),
        12.0
    );

    let chunked = serve_once(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nsluice_co\r\nc\r\nnnected 1\na \r\n0\r\n\r\n",
    );
    let metrics = sluice_tests::scrape(chunked).unwrap();
    assert_eq!(metrics.get("sluice_connected"), 1.0);
    assert_eq!(metrics.get("a"), 0.0);

    let missing = serve_once("HTTP/1.0 404 Not Found\r\n\r\n");
    let error = sluice_tests::scrape(missing).unwrap_err().to_string();
    assert!(error.contains("404"), "{error}");
}
