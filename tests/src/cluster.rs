//! [`NatsCluster`]: three (or more) `nats-server -js` nodes on free loopback ports, routed into
//! one cluster with their stores in a temporary directory, any of which a test can kill and
//! restart. The official 2.15 binary is used when `scripts/ensure-nats-server-2.15.sh` has
//! installed it (then every write is fsynced, `sync_interval: always`), else the one on `PATH`.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{free_port, greets_with_jetstream, nats_server_bin};

/// How long a starting node may take to accept clients.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// One node: its ports, config and process.
#[derive(Debug)]
struct Node {
    name: String,
    port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A NATS cluster owned by the test; every node is killed on drop.
#[derive(Debug)]
pub struct NatsCluster {
    bin: PathBuf,
    /// Whether the nodes fsync every write (the 2.15 binary, `sync_interval: always`).
    modern: bool,
    nodes: Vec<Node>,
    _dir: TempDir,
}

/// The pinned 2.15 binary, when installed.
pub(crate) fn binary_2_15() -> Option<PathBuf> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/nats-server-2.15.1/bin/nats-server");
    path.is_file().then_some(path)
}

impl NatsCluster {
    /// Starts `size` nodes routed to each other and waits until each accepts clients.
    pub fn start(size: usize) -> NatsCluster {
        let (bin, modern) = match binary_2_15() {
            Some(bin) => (bin, true),
            None => (nats_server_bin(), false),
        };
        let dir = tempfile::Builder::new()
            .prefix("nats-cluster-")
            .tempdir()
            .expect("a temporary directory for the cluster");
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let mut nodes = Vec::new();
        for (index, (port, route)) in ports.iter().enumerate() {
            let name = format!("n{}", index + 1);
            let routes: Vec<String> = ports
                .iter()
                .filter(|(_, other)| other != route)
                .map(|(_, other)| format!("nats-route://127.0.0.1:{other}"))
                .collect();
            let store = dir.path().join(&name);
            let sync = if modern {
                "    sync_interval: always\n"
            } else {
                ""
            };
            let text = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{port}\n\
                 jetstream {{\n    store_dir: \"{}\"\n{sync}}}\n\
                 cluster {{\n    name: call-ledger-test\n    listen: 127.0.0.1:{route}\n    routes: [{}]\n}}\n",
                store.display(),
                routes.join(", ")
            );
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(&config, text).expect("write a node's config");
            nodes.push(Node {
                log: dir.path().join(format!("{name}.log")),
                name,
                port: *port,
                config,
                child: None,
            });
        }
        let mut cluster = NatsCluster {
            bin,
            modern,
            nodes,
            _dir: dir,
        };
        for index in 0..size {
            cluster.spawn(index);
        }
        for index in 0..size {
            cluster.wait_ready(index);
        }
        cluster
    }

    /// Whether every node fsyncs each write before acknowledging it (the pinned 2.15 binary
    /// with `sync_interval: always`); else the server on PATH at its default sync.
    pub fn fsyncs_every_write(&self) -> bool {
        self.modern
    }

    /// Every node's client URL, comma-separated, as clients take a server list.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("nats://127.0.0.1:{}", node.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// One node's client URL.
    pub fn url(&self, index: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[index].port)
    }

    /// SIGKILL of one node, as a crash would.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed node again with its store, and waits until it accepts clients.
    pub fn restart(&mut self, index: usize) {
        self.kill(index);
        self.spawn(index);
        self.wait_ready(index);
    }

    /// Every node's log, for a failing test's message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|node| {
                format!(
                    "--- {} ---\n{}",
                    node.name,
                    std::fs::read_to_string(&node.log).unwrap_or_default()
                )
            })
            .collect()
    }

    fn spawn(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open a node's log");
        let err = log.try_clone().expect("clone the log handle");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        node.child = Some(child);
    }

    fn wait_ready(&mut self, index: usize) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let exited = self.nodes[index]
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!(
                    "{} exited with {status}:\n{}",
                    self.nodes[index].name,
                    self.logs()
                );
            }
            if greets_with_jetstream(self.nodes[index].port) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not accept clients within {START_TIMEOUT:?}:\n{}",
                self.nodes[index].name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
    }
}
