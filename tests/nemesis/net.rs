//! Hosts with their own addresses: one network namespace per store, and a veth pair from
//! each, and from the test's own namespace (PD and the clients), to a bridge. The bridge
//! sits in a namespace of its own: bridged packets pass the iptables FORWARD chain of
//! the bridge's namespace, and Docker sets that chain to drop in the machine's. A
//! partition is a pair of blackhole routes, so packets vanish as on a cut cable and TCP
//! finds out only by timing out. Everything is removed when the `Net` drops.

use std::process::Command;

/// Who a route can be cut between: a store's host, or the bridge side (PD and clients).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    Host(usize),
    Gateway,
}

pub struct Net {
    /// Short, unique per test process and network: interface names have 15 bytes.
    tag: String,
    subnet: (u8, u8),
    hosts: usize,
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
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = (std::process::id() % 4096) * 16 + n % 16;
        let net = Net {
            tag: format!("fl{id:x}"),
            subnet: (100 + (id / 256 % 100) as u8, (id % 256) as u8),
            hosts,
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
        for h in 0..hosts {
            let (ns, port) = (net.netns(h), format!("p{h}"));
            must(&["netns", "add", &ns]);
            must(&[
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                &sw,
            ]);
            net.plug(&port);
            let addr = format!("{}/24", net.addr(Node::Host(h)));
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

    /// The address of the bridge side, where PD and the clients are.
    pub fn gateway(&self) -> String {
        self.addr(Node::Gateway)
    }

    /// A node's address.
    pub fn addr(&self, node: Node) -> String {
        let last = match node {
            Node::Gateway => 1,
            Node::Host(h) => 10 + h,
        };
        format!("10.{}.{}.{last}", self.subnet.0, self.subnet.1)
    }

    /// The file naming host `h`'s namespace, for setns(2).
    pub fn netns_path(&self, h: usize) -> std::path::PathBuf {
        std::path::Path::new("/var/run/netns").join(self.netns(h))
    }

    /// Cuts the route between `a` and `b`, both ways.
    pub fn cut(&mut self, a: Node, b: Node) {
        for (from, to) in [(a, b), (b, a)] {
            let dst = format!("{}/32", self.addr(to));
            match from {
                Node::Host(h) => must(&["-n", &self.netns(h), "route", "add", "blackhole", &dst]),
                Node::Gateway => must(&["route", "add", "blackhole", &dst]),
            }
        }
        self.cuts.push((a, b));
    }

    /// Restores every route cut.
    pub fn heal(&mut self) {
        for (a, b) in std::mem::take(&mut self.cuts) {
            for (from, to) in [(a, b), (b, a)] {
                let dst = format!("{}/32", self.addr(to));
                let _ = match from {
                    Node::Host(h) => ip(&["-n", &self.netns(h), "route", "del", "blackhole", &dst]),
                    Node::Gateway => ip(&["route", "del", "blackhole", &dst]),
                };
            }
        }
    }

    /// Whether packets now get from host `h` to `to` (one ping, one second at most).
    pub fn reaches(&self, h: usize, to: Node) -> bool {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns(h),
                "ping",
                "-c1",
                "-W1",
                &self.addr(to),
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Deleting a namespace deletes the veth ends in it, and with them their peers; the
    /// test's own namespace may still hold cuts left by a process killed mid-fault.
    fn remove_all(&self) {
        for h in 0..self.hosts {
            let _ = ip(&["netns", "del", &self.netns(h)]);
            let dst = format!("{}/32", self.addr(Node::Host(h)));
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
