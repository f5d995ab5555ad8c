//! A standby host in its own network namespace, joined to this one by a veth
//! pair that tests can cut, restore and rate-limit. Several links can exist side
//! by side ([`StandbyLink::numbered`]), one per standby.

use crate::util::run;
use anyhow::{Context, bail};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

/// A network namespace with one veth link to the host namespace. Dropping it
/// deletes the namespace and the link.
///
/// Link `k` uses the /30 `10.233.k.0` (host `.1`, standby `.2`), a subnet used
/// only inside the namespaces the tests make. [`StandbyLink::new`] is link 0, so
/// it must not be used together with `numbered(0)`.
pub struct StandbyLink {
    namespace: String,
    host_dev: String,
    /// The standby's end, inside the namespace.
    peer_dev: String,
    host_addr: Ipv4Addr,
    standby_addr: Ipv4Addr,
}

impl StandbyLink {
    /// The single standby link: namespace `sluice-sb-<pid>`, subnet 10.233.0.0/30.
    pub fn new() -> anyhow::Result<StandbyLink> {
        let id = std::process::id() % 100_000;
        StandbyLink::create(format!("sluice-sb-{id}"), format!("slm{id}"), format!("sls{id}"), 0)
    }

    /// Link `k` of several: namespace `sluice-sb-<pid>-<k>`, subnet 10.233.k.0/30,
    /// devices `slm<pid>n<k>` (host side) and `sls<pid>n<k>` (at most 12 bytes,
    /// under the kernel's 15).
    pub fn numbered(k: u8) -> anyhow::Result<StandbyLink> {
        let id = std::process::id() % 100_000;
        StandbyLink::create(format!("sluice-sb-{id}-{k}"), format!("slm{id}n{k}"), format!("sls{id}n{k}"), k)
    }

    fn create(namespace: String, host_dev: String, peer: String, k: u8) -> anyhow::Result<StandbyLink> {
        let link = StandbyLink {
            namespace,
            host_dev,
            peer_dev: peer,
            host_addr: Ipv4Addr::new(10, 233, k, 1),
            standby_addr: Ipv4Addr::new(10, 233, k, 2),
        };
        let (ns, host, peer) = (&link.namespace, &link.host_dev, &link.peer_dev);
        let (host_addr, standby_addr) = (link.host_addr, link.standby_addr);
        // Leftovers of an interrupted run would make `add` fail. If a step below
        // fails, dropping `link` removes what was made.
        let _ = run(&format!("ip netns del {ns} 2>/dev/null; ip link del {host} 2>/dev/null"));
        run(&format!("ip netns add {ns}")).context("creating the standby's network namespace")?;
        run(&format!("ip link add {host} type veth peer name {peer}"))?;
        run(&format!("ip link set {peer} netns {ns}"))?;
        run(&format!("ip addr add {host_addr}/30 dev {host} && ip link set {host} up"))?;
        run(&format!(
            "ip netns exec {ns} sh -c 'ip addr add {standby_addr}/30 dev {peer} && ip link set {peer} up && ip link set lo up'"
        ))?;
        Ok(link)
    }

    /// The standby's address, reachable from the host namespace.
    pub fn standby_addr(&self) -> IpAddr {
        IpAddr::V4(self.standby_addr)
    }

    /// The host side's address, reachable from inside the namespace.
    pub fn host_addr(&self) -> IpAddr {
        IpAddr::V4(self.host_addr)
    }

    /// The namespace's name (as in `ip netns exec NAME`).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The host-side veth device, whose egress is the master→standby direction.
    pub fn host_dev(&self) -> &str {
        &self.host_dev
    }

    /// The command prefix that runs a program inside the namespace.
    pub fn exec_prefix(&self) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.namespace.clone()]
    }

    /// Runs `f` on a thread that has entered the namespace, e.g. to bind a socket
    /// there (a socket stays in the namespace it was created in, whichever thread
    /// then uses it).
    pub fn run_inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        let path = format!("/run/netns/{}", self.namespace);
        let ns = std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
        std::thread::spawn(move || {
            // SAFETY: setns only changes this thread's network namespace; the fd is
            // valid for the call.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns into the standby's namespace");
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread inside the namespace panicked"))?
    }

    /// Takes the link down: packets in both directions are lost.
    ///
    /// It is the standby's end that goes down. The host end then only loses its
    /// carrier and keeps its route, so what the master sends is dropped silently,
    /// as on a broken network; were the host end down, its route would go with it
    /// and the packets would leave by the default route instead. (The standby's
    /// own sends fail locally; a QUIC stack ignores that.) A rate limit stays set.
    pub fn cut(&self) -> anyhow::Result<()> {
        run(&format!("ip netns exec {} ip link set {} down", self.namespace, self.peer_dev)).map(drop)
    }

    /// Brings the link back up.
    pub fn restore(&self) -> anyhow::Result<()> {
        run(&format!("ip netns exec {} ip link set {} up", self.namespace, self.peer_dev)).map(drop)
    }

    /// Limits the master→standby direction to `mbit` Mbit/s with a token bucket
    /// (`tc qdisc ... tbf`) on the host-side device; replaces an earlier limit.
    /// Acknowledgements (standby→master) are not limited.
    ///
    /// The bucket holds 10 ms worth of tokens (at least 16 KiB, so a full-size
    /// segment always fits), which keeps short-term bursts near the rate. The
    /// queue holds 200 ms worth on top, so a congestion controller sees a few
    /// drops, not a wall of them, and measured throughput stays close to `mbit`.
    pub fn rate_limit(&self, mbit: u32) -> anyhow::Result<()> {
        if mbit == 0 {
            bail!("a rate limit of 0 Mbit/s would be a cut: use cut()");
        }
        let bytes_per_second = u64::from(mbit) * 1_000_000 / 8;
        let burst = (bytes_per_second / 100).max(16 * 1024);
        run(&format!(
            "tc qdisc replace dev {} root tbf rate {mbit}mbit burst {burst} latency 200ms",
            self.host_dev
        ))
        .map(drop)
        .context("setting a tbf rate limit (tc, sch_tbf)")
    }

    /// Removes the limit set by [`StandbyLink::rate_limit`] (a no-op without one).
    pub fn clear_rate_limit(&self) -> anyhow::Result<()> {
        let qdiscs = run(&format!("tc qdisc show dev {}", self.host_dev))?;
        if qdiscs.contains("tbf") {
            run(&format!("tc qdisc del dev {} root", self.host_dev))?;
        }
        Ok(())
    }
}

impl Drop for StandbyLink {
    fn drop(&mut self) {
        let _ = run(&format!("ip netns del {}; ip link del {} 2>/dev/null; true", self.namespace, self.host_dev));
    }
}
