//! A standby host in its own network namespace, joined to this one by a veth
//! pair that tests can cut and restore.

use crate::util::run;
use anyhow::Context;
use std::net::{IpAddr, Ipv4Addr};

/// Addresses of the pair (a /30 used only inside the namespaces the tests make).
const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 233, 0, 1);
const STANDBY_ADDR: Ipv4Addr = Ipv4Addr::new(10, 233, 0, 2);

/// A network namespace with one veth link to the host namespace. Dropping it
/// deletes the namespace and the link.
pub struct StandbyLink {
    namespace: String,
    host_dev: String,
}

impl StandbyLink {
    pub fn new() -> anyhow::Result<StandbyLink> {
        let id = std::process::id() % 100_000;
        let link = StandbyLink { namespace: format!("sluice-sb-{id}"), host_dev: format!("slm{id}") };
        let (ns, host) = (&link.namespace, &link.host_dev);
        let peer = format!("sls{id}");
        // Leftovers of an interrupted run would make `add` fail.
        let _ = run(&format!("ip netns del {ns} 2>/dev/null; ip link del {host} 2>/dev/null"));
        run(&format!("ip netns add {ns}")).context("creating the standby's network namespace")?;
        run(&format!("ip link add {host} type veth peer name {peer}"))?;
        run(&format!("ip link set {peer} netns {ns}"))?;
        run(&format!("ip addr add {HOST_ADDR}/30 dev {host} && ip link set {host} up"))?;
        run(&format!(
            "ip netns exec {ns} sh -c 'ip addr add {STANDBY_ADDR}/30 dev {peer} && ip link set {peer} up && ip link set lo up'"
        ))?;
        Ok(link)
    }

    /// The standby's address, reachable from the host namespace.
    pub fn standby_addr(&self) -> IpAddr {
        IpAddr::V4(STANDBY_ADDR)
    }

    /// The command prefix that runs a program inside the namespace.
    pub fn exec_prefix(&self) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.namespace.clone()]
    }

    /// Takes the link down: packets in both directions are lost.
    pub fn cut(&self) -> anyhow::Result<()> {
        run(&format!("ip link set {} down", self.host_dev)).map(drop)
    }

    /// Brings the link back up.
    pub fn restore(&self) -> anyhow::Result<()> {
        run(&format!("ip link set {} up", self.host_dev)).map(drop)
    }
}

impl Drop for StandbyLink {
    fn drop(&mut self) {
        let _ = run(&format!("ip netns del {}; ip link del {} 2>/dev/null; true", self.namespace, self.host_dev));
    }
}
