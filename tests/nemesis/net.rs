//! Hosts with their own addresses: one network namespace per store and per PD member (if
//! PD runs as a group), and a veth pair from each, and from the test's own namespace (a
//! lone PD and the clients), to a bridge. The bridge sits in a namespace of its own:
//! bridged packets pass the iptables FORWARD chain of the bridge's namespace, and
//! Docker sets that chain to drop in the machine's. A partition is a pair of blackhole
//! routes, so packets vanish as on a cut cable and TCP finds out only by timing out.
//! Everything is removed when the `Net` drops.

use std::process::Command;

/// Who a route can be cut between: a store's host, a PD member's host, or the bridge side
/// (a lone PD and the clients).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    Host(usize),
    Pd(usize),
    Gateway,
}

pub struct Net {
    /// Short, unique per test process and network: interface names have 15 bytes.
    tag: String,
    subnet: (u8, u8),
    hosts: usize,
    pds: usize,
    cuts: Vec<(Node, Node)>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("run ip {args:?}: {e} (is iproute2 installed?)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    ip(args).unwrap_or_else(|e| panic!("{e}"));
}

impl Net {
    /// A bridge and `hosts` namespaces, each with its address and a route to the others.
    pub fn create(hosts: usize) -> Net {
        Self::create_with(hosts, 0)
    }

    /// Like [`Net::create`], with `pds` more namespaces for PD members (`Node::Pd`).
    pub fn create_with(hosts: usize, pds: usize) -> Net {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = (std::process::id() % 4096) * 16 + n % 16;
        let net = Net {
            tag: format!("fl{id:x}"),
            subnet: (100 + (id / 256 % 100) as u8, (id % 256) as u8),
            hosts,
            pds,
            cuts: vec![],
        };
        net.remove_all();
        let (sw, br) = (net.switch(), net.bridge());
        must(&["netns", "add", &sw]);
        must(&["-n", &sw, "link", "add", &br, "type", "bridge"]);
        must(&["-n", &sw, "link", "set", &br, "up"]);
        // The test's side: the gateway address, on a veth whose other end is on the bridge.
        let gw = format!("{}g", net.tag);
        must(&[
            "link", "add", &gw, "type", "veth", "peer", "name", "up0", "netns", &sw,
        ]);
        must(&["addr", "add", &format!("{}/24", net.gateway()), "dev", &gw]);
        must(&["link", "set", &gw, "up"]);
        net.plug("up0");
        let nodes = (0..hosts).map(Node::Host).chain((0..pds).map(Node::Pd));
        for node in nodes {
            let ns = net.ns(node).expect("a host has a namespace");
            let port = match node {
                Node::Host(h) => format!("p{h}"),
                Node::Pd(i) => format!("d{i}"),
                Node::Gateway => unreachable!("not a host"),
            };
            must(&["netns", "add", &ns]);
            must(&[
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                &sw,
            ]);
            net.plug(&port);
            let addr = format!("{}/24", net.addr(node));
            must(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            must(&["-n", &ns, "link", "set", "eth0", "up"]);
            must(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    fn switch(&self) -> String {
        format!("{}sw", self.tag)
    }

    /// Attaches the switch's end of a veth pair to the bridge.
    fn plug(&self, port: &str) {
        let sw = self.switch();
        must(&["-n", &sw, "link", "set", port, "master", &self.bridge()]);
        must(&["-n", &sw, "link", "set", port, "up"]);
    }

    /// The namespace of host `h`.
    pub fn netns(&self, h: usize) -> String {
        format!("{}n{h}", self.tag)
    }

    /// A node's namespace (`None`: the gateway, the test's own).
    fn ns(&self, node: Node) -> Option<String> {
        match node {
            Node::Host(h) => Some(self.netns(h)),
            Node::Pd(i) => Some(format!("{}d{i}", self.tag)),
            Node::Gateway => None,
        }
    }

    /// `ip` arguments that run in `node`'s namespace.
    fn in_ns(&self, node: Node, args: &[&str]) -> Result<(), String> {
        match self.ns(node) {
            Some(ns) => ip(&[&["-n", ns.as_str()][..], args].concat()),
            None => ip(args),
        }
    }

    /// The address of the bridge side, where PD and the clients are.
    pub fn gateway(&self) -> String {
        self.addr(Node::Gateway)
    }

    /// A node's address.
    pub fn addr(&self, node: Node) -> String {
        let last = match node {
            Node::Gateway => 1,
            Node::Host(h) => 10 + h,
            Node::Pd(i) => 200 + i,
        };
        format!("10.{}.{}.{last}", self.subnet.0, self.subnet.1)
    }

    /// The file naming host `h`'s namespace, for setns(2).
    pub fn netns_path(&self, h: usize) -> std::path::PathBuf {
        self.netns_path_of(Node::Host(h))
    }

    /// The file naming a host's namespace (a store's or a PD member's).
    pub fn netns_path_of(&self, node: Node) -> std::path::PathBuf {
        let ns = self
            .ns(node)
            .expect("the gateway is the test's own namespace");
        std::path::Path::new("/var/run/netns").join(ns)
    }

    /// Cuts the route between `a` and `b`, both ways.
    pub fn cut(&mut self, a: Node, b: Node) {
        for (from, to) in [(a, b), (b, a)] {
            let dst = format!("{}/32", self.addr(to));
            self.in_ns(from, &["route", "add", "blackhole", &dst])
                .unwrap_or_else(|e| panic!("{e}"));
        }
        self.cuts.push((a, b));
    }

    /// Restores every route cut.
    pub fn heal(&mut self) {
        for (a, b) in std::mem::take(&mut self.cuts) {
            for (from, to) in [(a, b), (b, a)] {
                let dst = format!("{}/32", self.addr(to));
                let _ = self.in_ns(from, &["route", "del", "blackhole", &dst]);
            }
        }
    }

    /// Whether packets now get from host `h` to `to` (one ping, one second at most).
    pub fn reaches(&self, h: usize, to: Node) -> bool {
        self.reaches_from(Node::Host(h), to)
    }

    /// Whether packets now get from `from` to `to` (one ping, one second at most).
    pub fn reaches_from(&self, from: Node, to: Node) -> bool {
        let ping = ["ping", "-c1", "-W1"];
        let mut cmd = match self.ns(from) {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns]).args(ping);
                c
            }
            None => {
                let mut c = Command::new(ping[0]);
                c.args(&ping[1..]);
                c
            }
        };
        cmd.arg(self.addr(to))
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Deleting a namespace deletes the veth ends in it, and with them their peers; the
    /// test's own namespace may still hold cuts left by a process killed mid-fault.
    fn remove_all(&self) {
        let nodes = (0..self.hosts)
            .map(Node::Host)
            .chain((0..self.pds).map(Node::Pd));
        for node in nodes {
            if let Some(ns) = self.ns(node) {
                let _ = ip(&["netns", "del", &ns]);
            }
            let dst = format!("{}/32", self.addr(node));
            let _ = ip(&["route", "del", "blackhole", &dst]);
        }
        let _ = ip(&["netns", "del", &self.switch()]);
        let _ = ip(&["link", "del", &format!("{}g", self.tag)]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.heal();
        self.remove_all();
    }
}
