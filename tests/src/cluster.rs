//! A cluster of real brokers on loopback, each on its own data directory;
//! optionally with every member's calls to every other going through a
//! [`Proxy`] of its own, so that a test can cut members off each other.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_client::proto::sluice_service_client::SluiceServiceClient;
use sluice_client::proto::{ClusterInfo, GetBrokerInfoRequest};

use crate::proxy::Proxy;
use crate::{Broker, DEADLINE, eventually};

/// Ports for a cluster's members: the members must be told each other's
/// addresses before they start, so these are found free (bound to port 0)
/// rather than picked by each broker, and held until just before each
/// member binds its own: the moment in which another socket could take
/// one is short.
fn hold_ports(n: usize) -> Vec<std::net::TcpListener> {
    (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect()
}

/// Members are numbered from 0 here; their node ids are one more.
pub struct Cluster {
    /// None while a member is down.
    pub members: Vec<Option<Broker>>,
    /// Each member's own address, where clients reach it.
    pub addrs: Vec<String>,
    /// Each member's `--peers`.
    peers: Vec<String>,
    /// With [`Cluster::start_proxied`]: the link from member `.0` to
    /// member `.1`.
    links: BTreeMap<(usize, usize), Proxy>,
    /// More arguments for every member.
    extra: Vec<String>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// `n` members, each given every member's address.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, false, &[])
    }

    /// [`Cluster::start`], every member given `extra` arguments too.
    pub fn start_with_args(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with(n, false, extra)
    }

    /// `n` members, each reaching every other through a proxy of its own
    /// ([`Cluster::isolate`], [`Cluster::heal`]): a member's `--peers`
    /// names its own address and, for every other member, the proxy it
    /// reaches that member by.
    pub fn start_proxied(n: usize) -> Cluster {
        Cluster::start_with(n, true, &[])
    }

    fn start_with(n: usize, proxied: bool, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        // Held while the proxies take ports of their own, so that none
        // takes a member's.
        let mut held = hold_ports(n);
        let addrs: Vec<String> = held
            .iter()
            .map(|l| l.local_addr().expect("addr").to_string())
            .collect();
        let mut links = BTreeMap::new();
        if proxied {
            for from in 0..n {
                for to in (0..n).filter(|to| *to != from) {
                    let target = addrs[to].parse().expect("a socket address");
                    links.insert((from, to), Proxy::start(target));
                }
            }
        }
        let peers = (0..n)
            .map(|from| {
                (0..n)
                    .map(|to| {
                        let addr = match links.get(&(from, to)) {
                            Some(p) => p.addr().to_string(),
                            None => addrs[to].clone(),
                        };
                        format!("{}={addr}", to + 1)
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        let mut c = Cluster {
            members: Vec::new(),
            addrs,
            peers,
            links,
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
            dir,
        };
        for port in held.drain(..) {
            drop(port);
            let m = c.member(c.members.len());
            c.members.push(Some(m));
        }
        c
    }

    /// Starts member `i` on its address and data directory.
    pub fn member(&self, i: usize) -> Broker {
        let data = self.dir.path().join(format!("m{}", i + 1));
        let (id, data) = ((i + 1).to_string(), data.display().to_string());
        let mut args = vec![
            "--node-id",
            &id,
            "--peers",
            &self.peers[i],
            "--data-dir",
            &data,
        ];
        args.extend(self.extra.iter().map(String::as_str));
        Broker::start_on(&self.addrs[i], &args)
    }

    /// The member that leads, once one does (as `cluster status` says,
    /// asked through a member that is up).
    pub fn leader(&self) -> usize {
        self.leader_among(&(0..self.members.len()).collect::<Vec<_>>(), DEADLINE)
    }

    /// The member of `among` that leads, once one of them says it does
    /// within `within` (each asked itself: a member cut off from the
    /// others may still believe it leads, so another's word is not taken).
    pub fn leader_among(&self, among: &[usize], within: Duration) -> usize {
        let mut found = None;
        eventually(within, &format!("one of {among:?} leads"), || {
            found = among.iter().copied().find(|&i| {
                let Some(m) = &self.members[i] else {
                    return false;
                };
                let out = m.cli(&["--json", "cluster", "status"]);
                let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
                v["leader"].as_bool() == Some(true) && v["node_id"].as_u64() == Some(i as u64 + 1)
            });
            found.is_some()
        });
        found.unwrap_or_default()
    }

    /// Wipes the data directory of member `i` (which must be down): its
    /// disk is lost.
    pub fn wipe(&self, i: usize) {
        assert!(self.members[i].is_none(), "member {i} is down");
        let data = self.dir.path().join(format!("m{}", i + 1));
        std::fs::remove_dir_all(&data).expect("wipe the data directory");
    }

    /// Kills member `i` (SIGKILL: no goodbye) and waits until it is gone.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut m) = self.members[i].take() {
            m.proc.signal("KILL");
            m.proc.wait_exit(DEADLINE);
        }
    }

    /// Every member's URL, as clients are given a cluster.
    pub fn urls(&self) -> String {
        self.addrs
            .iter()
            .map(|a| format!("http://{a}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until `member` applied all of `leader`'s log, as each says
    /// itself (the leader's record of what a member holds may be from
    /// before it lost its disk).
    pub fn wait_caught_up(&self, leader: usize, member: usize) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let view = |i: usize| rt.block_on(own_view(&format!("http://{}", self.addrs[i])));
        eventually(DEADLINE, &format!("member {member} caught up"), || {
            let Some(last) = view(leader).map(|v| v.last_log_index) else {
                return false;
            };
            view(member).is_some_and(|v| v.last_applied_index >= last)
        });
    }

    pub fn up(&self, i: usize) -> &Broker {
        self.members[i].as_ref().expect("member is up")
    }

    /// The address member `from` reaches member `to` by: its own
    /// address, or the proxy between them.
    pub fn reach(&self, from: usize, to: usize) -> String {
        match self.links.get(&(from, to)) {
            Some(p) => p.addr().to_string(),
            None => self.addrs[to].clone(),
        }
    }

    /// Cuts member `i` off the others (a proxied cluster's): its calls to
    /// them and theirs to it. Clients still reach every member.
    pub fn isolate(&self, i: usize) {
        assert!(!self.links.is_empty(), "only a proxied cluster is cut");
        for ((from, to), p) in &self.links {
            if *from == i || *to == i {
                p.cut();
            }
        }
    }

    /// Joins every member again.
    pub fn heal(&self) {
        for p in self.links.values() {
            p.heal();
        }
    }
}

/// A member's own view of its cluster (the CLI's `cluster status` would
/// follow it to the leader, and show the leader's); None while the member
/// restarts its Raft, or cannot be reached.
pub async fn own_view(url: &str) -> Option<ClusterInfo> {
    let mut raw = SluiceServiceClient::connect(url.to_owned()).await.ok()?;
    raw.get_broker_info(GetBrokerInfoRequest {})
        .await
        .ok()?
        .into_inner()
        .cluster
}
