//! Network namespaces as test hosts: a [`Lab`] is a "switch" namespace holding a bridge, one
//! namespace per host with a veth into the bridge (`10.77.<x>.<i+1>/24`), and a veth from the
//! test's own (root) namespace into the bridge (`10.77.<x>.254/24`), so the test process is a
//! host of the lab too: its in-process mesh node and HTTP client reach every host directly.
//!
//! A host is cut off by setting its bridge port down (both ends lose carrier, as when a cable
//! is pulled) and healed by setting it up again. Everything is deleted when the lab is dropped;
//! labs left behind by a killed test run are swept when the next one is made.
//!
//! Needs root and `ip` (iproute2). [`Lab::create`] explains why it cannot when it cannot, and
//! tests skip with that message (or fail when `MESHRPC_FAULTS_REQUIRE_NETNS=1`, as CI sets).

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Every namespace and root-side interface of this suite starts with this.
const PREFIX: &str = "mrf";

static LABS: AtomicU32 = AtomicU32::new(0);

/// One host of a [`Lab`].
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace's name.
    pub ns: String,
    /// Its address on the lab's subnet.
    pub ip: Ipv4Addr,
    /// Its port on the bridge, in the switch namespace.
    port: String,
}

/// Namespaces on a bridge; see the module documentation.
#[derive(Debug)]
pub struct Lab {
    /// The third octet of the lab's subnet `10.77.<subnet>.0/24`.
    pub subnet: u8,
    /// The hosts.
    pub hosts: Vec<Host>,
    switch: String,
    root_link: String,
}

fn ip(args: &[&str]) -> Result<String, String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|error| format!("cannot run `ip`: {error} (install iproute2)"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Lab {
    /// A lab of `hosts` hosts, or why there cannot be one here.
    pub fn create(hosts: usize) -> Result<Lab, String> {
        assert!((1..=200).contains(&hosts));
        let euid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix("Uid:"))
                    .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned))
            });
        if euid.as_deref() != Some("0") {
            return Err("not running as root: network namespaces need CAP_NET_ADMIN".into());
        }
        sweep_stale();
        let pid = std::process::id();
        let serial = LABS.fetch_add(1, Ordering::Relaxed);
        let subnet = free_subnet(pid.wrapping_add(serial * 37))?;
        let tag = format!("{PREFIX}{pid}x{serial}");
        let mut lab = Lab {
            subnet,
            hosts: Vec::new(),
            switch: format!("{tag}s"),
            root_link: format!("{PREFIX}{}r{serial}", pid % 100_000),
        };
        // From here on, Drop cleans up whatever was made.
        lab.build(&tag, hosts)?;
        Ok(lab)
    }

    /// [`Lab::create`], or `None` after printing why the calling test is skipped.
    pub fn create_or_skip(test: &str, hosts: usize) -> Option<Lab> {
        match Lab::create(hosts) {
            Ok(lab) => Some(lab),
            Err(why) => {
                let required = std::env::var_os("MESHRPC_FAULTS_REQUIRE_NETNS")
                    .is_some_and(|value| value == "1");
                assert!(
                    !required,
                    "{test}: network namespaces are required but unusable: {why}"
                );
                eprintln!(
                    "SKIPPED {test}: needs network namespaces, which are unusable here: {why}. \
                     Run as root with iproute2 installed to include it."
                );
                None
            }
        }
    }

    fn build(&mut self, tag: &str, hosts: usize) -> Result<(), String> {
        let switch = self.switch.clone();
        ip(&["netns", "add", &switch])?;
        ip(&["-n", &switch, "link", "set", "lo", "up"])?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        // The test's own namespace joins the bridge.
        let root = self.root_link.clone();
        ip(&[
            "link", "add", &root, "type", "veth", "peer", "name", "root", "netns", &switch,
        ])?;
        ip(&["-n", &switch, "link", "set", "root", "master", "br0", "up"])?;
        let root_ip = format!("{}/24", self.root_ip());
        ip(&["addr", "add", &root_ip, "dev", &root])?;
        ip(&["link", "set", &root, "up"])?;
        for index in 0..hosts {
            let ns = format!("{tag}h{index}");
            let port = format!("p{index}");
            ip(&["netns", "add", &ns])?;
            self.hosts.push(Host {
                ns: ns.clone(),
                ip: Ipv4Addr::new(10, 77, self.subnet, index as u8 + 1),
                port: port.clone(),
            });
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"])?;
            let host_ip = format!("10.77.{}.{}/24", self.subnet, index + 1);
            ip(&["-n", &ns, "addr", "add", &host_ip, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// The test process's own address on the lab's subnet.
    pub fn root_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 254)
    }

    /// Pulls host `index`'s cable: its bridge port goes down, both ends lose carrier.
    pub fn cut(&self, index: usize) {
        let host = &self.hosts[index];
        ip(&["-n", &self.switch, "link", "set", &host.port, "down"]).expect("link down");
    }

    /// Plugs host `index`'s cable back in.
    pub fn heal(&self, index: usize) {
        let host = &self.hosts[index];
        ip(&["-n", &self.switch, "link", "set", &host.port, "up"]).expect("link up");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends in it, and with them their peers.
        for host in &self.hosts {
            let _ = ip(&["netns", "del", &host.ns]);
        }
        let _ = ip(&["netns", "del", &self.switch]);
        let _ = ip(&["link", "del", &self.root_link]);
    }
}

/// A third octet no interface of this host uses yet, starting from `hint`.
fn free_subnet(hint: u32) -> Result<u8, String> {
    let used = ip(&["-4", "-o", "addr", "show"])?;
    (0..250u32)
        .map(|step| ((hint + step) % 250 + 1) as u8)
        .find(|x| !used.contains(&format!(" 10.77.{x}.")))
        .ok_or_else(|| "every 10.77.x.0/24 subnet is in use".to_owned())
}

/// Deletes namespaces of this suite whose test process is gone (killed before its Drop ran).
fn sweep_stale() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for name in list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
    {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest
            .split('x')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}
