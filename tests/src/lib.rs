//! Test and benchmark support: real, local, throwaway infrastructure.
//!
//! [`NatsServer`] runs a real `nats-server -js` on a free loopback port with
//! its JetStream store in a temporary directory, and kills it on drop. It can
//! be stopped and restarted on the same port and store, so tests can check
//! what survives a broker restart. [`callledger_bin`] finds (and if needed
//! builds) the `callledger` binary for tests that drive the CLI.
//!
//! Everything here panics instead of returning errors: it is test
//! scaffolding, and a panic with a clear message is the most useful failure.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

mod cluster;
pub use cluster::NatsCluster;

/// How long a starting server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A `nats-server` with JetStream on `127.0.0.1`, owned by the test.
///
/// The child process is killed when the value is dropped, and the store and
/// log directory are removed with it.
#[derive(Debug)]
pub struct NatsServer {
    bin: PathBuf,
    /// A config file given with `-c` (flags win over it), if any.
    config: Option<PathBuf>,
    port: u16,
    child: Option<Child>,
    /// Holds `store/` (the JetStream store) and `nats-server.log`.
    dir: TempDir,
}

impl NatsServer {
    /// Starts a server on a free port and waits until it accepts clients.
    ///
    /// Panics if no `nats-server` binary is found or the server does not come
    /// up within 10 seconds; the panic message includes the server's log.
    pub fn start() -> NatsServer {
        NatsServer::start_with(nats_server_bin(), "")
    }

    /// The official nats-server 2.15.1 (installed by `scripts/ensure-nats-server-2.15.sh`)
    /// fsyncing every write before its ack (`sync_interval: always`), or `None` when it is not
    /// installed.
    pub fn start_fsyncing() -> Option<NatsServer> {
        let bin = cluster::binary_2_15()?;
        Some(NatsServer::start_with(
            bin,
            "jetstream {\n    sync_interval: always\n}\n",
        ))
    }

    /// Starts `bin` with `config` (nats-server's config syntax; empty for none) on a free port.
    fn start_with(bin: PathBuf, config: &str) -> NatsServer {
        let dir = tempfile::Builder::new()
            .prefix("nats-server-")
            .tempdir()
            .expect("create a temporary directory for nats-server");
        let config = (!config.is_empty()).then(|| {
            let path = dir.path().join("nats-server.conf");
            std::fs::write(&path, config).expect("write the nats-server config");
            path
        });
        let mut server = NatsServer {
            bin,
            config,
            port: 0,
            child: None,
            dir,
        };
        // The free port can be taken by someone else between our probe and the
        // server's bind, so a server that dies on start gets a few more tries.
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            server.port = free_port();
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(why) if attempt < ATTEMPTS => {
                    eprintln!(
                        "nats-server on port {} failed ({why}); retrying",
                        server.port
                    );
                }
                Err(why) => server.fail(&why),
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port the server listens on; it stays the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id while it runs (it changes across restarts).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The JetStream store directory; it stays the same across restarts.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Everything the server has logged so far, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops the server cleanly: SIGTERM, so JetStream flushes its store, then
    /// waits for it to exit (killing it after 10 seconds). Does nothing if the
    /// server is not running.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            // std has no SIGTERM and this workspace forbids `unsafe` (so no
            // libc::kill); kill(1) is everywhere nats-server runs.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let exited = wait_until(STOP_TIMEOUT, || !matches!(child.try_wait(), Ok(None)));
            if !exited {
                eprintln!("nats-server ignored SIGTERM for {STOP_TIMEOUT:?}; killing it");
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills the server with SIGKILL, as a crash would, and reaps it. Data
    /// JetStream had not yet written to disk is lost, as it would be.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if it is running and starts it again on the same port
    /// with the same store, so streams, consumers and messages survive.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(why) = self.spawn_and_wait() {
            self.fail(&why);
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    /// Starts the process on `self.port` and waits until it greets a client.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the nats-server log file");
        let log_err = log.try_clone().expect("clone the log file handle");
        let child = Command::new(&self.bin)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store_dir())
            .args(
                self.config
                    .iter()
                    .flat_map(|path| [std::ffi::OsStr::new("-c"), path.as_os_str()]),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("just spawned");
            if let Some(status) = child.try_wait().expect("poll nats-server") {
                self.child = None;
                return Err(format!("nats-server exited during start-up with {status}"));
            }
            if greets_with_jetstream(self.port) {
                // Make sure the greeting came from our process and not from
                // another server that owned the port while ours failed to bind.
                if let Ok(None) = child.try_wait() {
                    return Ok(());
                }
                continue;
            }
            if Instant::now() >= deadline {
                self.crash();
                return Err(format!(
                    "nats-server did not accept connections on port {} within {START_TIMEOUT:?}",
                    self.port
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn fail(&mut self, why: &str) -> ! {
        self.crash();
        panic!(
            "{why}\n--- {} -js -a 127.0.0.1 -p {} -sd {}; its log: ---\n{}",
            self.bin.display(),
            self.port,
            self.store_dir().display(),
            self.log()
        );
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // Nothing needs to survive, so no clean shutdown: the store is deleted next.
        self.crash();
    }
}

/// Whether a NATS server with JetStream answers on `127.0.0.1:port`: it
/// accepts a connection and sends an `INFO` line saying `"jetstream":true`.
pub(crate) fn greets_with_jetstream(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .is_err()
    {
        return false;
    }
    let mut line = String::new();
    match BufReader::new(stream).read_line(&mut line) {
        Ok(_) => line.starts_with("INFO ") && line.contains("\"jetstream\":true"),
        Err(_) => false,
    }
}

/// The `nats-server` binary: `$NATS_SERVER`, then `PATH`, then the places
/// Debian and manual installs put it. `make test` installs it if missing.
pub fn nats_server_bin() -> PathBuf {
    let from_env = std::env::var_os("NATS_SERVER").map(PathBuf::from);
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"));
    let fixed = ["/usr/sbin/nats-server", "/usr/local/bin/nats-server"]
        .into_iter()
        .map(PathBuf::from);
    from_env
        .into_iter()
        .chain(on_path)
        .chain(fixed)
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no nats-server binary found (looked at $NATS_SERVER, PATH, /usr/sbin, \
                 /usr/local/bin); run scripts/ensure-nats-server.sh or \
                 `sudo apt-get install -y nats-server`"
            )
        })
}

/// A TCP port on `127.0.0.1` that was free a moment ago: the OS picks it for
/// a listener that is closed again straight away.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
}

/// Polls `condition` every 10 ms until it holds or `timeout` has passed, and
/// returns whether it held. Tests assert on the result.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The resident memory of process `pid` in bytes (`VmRSS` in /proc), 0 when unreadable.
pub fn resident_bytes(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS:")
}

/// The peak resident memory of process `pid` in bytes (`VmHWM` in /proc), 0 when unreadable.
pub fn peak_resident_bytes(pid: u32) -> u64 {
    status_bytes(pid, "VmHWM:")
}

/// A size field (in kB) of `/proc/<pid>/status`, in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with(field))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The `callledger` binary built from this workspace, for tests that drive
/// the CLI.
///
/// `$CALLLEDGER_BIN` wins if set. Otherwise the binary is the one next to the
/// running test executable (`<target>/<profile>/callledger`, so
/// `CARGO_TARGET_DIR` and `--release` are honoured), and the first call in a
/// process runs `cargo build -p callledger` for that profile: `cargo test`
/// does not build another package's binaries, and a stale binary would test
/// old code. The build is a no-op when the binary is up to date.
pub fn callledger_bin() -> PathBuf {
    static BUILD: Once = Once::new();
    if let Some(bin) = std::env::var_os("CALLLEDGER_BIN") {
        return PathBuf::from(bin);
    }
    let (profile_dir, profile) = profile_dir();
    let bin = profile_dir.join(format!("callledger{}", std::env::consts::EXE_SUFFIX));
    BUILD.call_once(|| build_callledger(&profile_dir, &profile));
    assert!(
        bin.is_file(),
        "{} is missing after `cargo build -p callledger`",
        bin.display()
    );
    bin
}

/// The output directory of the current profile and the profile's name.
fn profile_dir() -> (PathBuf, String) {
    // Test and bench executables live in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("path of the running test executable");
    if let Some(deps) = exe.parent().filter(|dir| dir.ends_with("deps")) {
        if let Some(dir) = deps.parent() {
            let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
            let profile = if name == "debug" { "dev" } else { name };
            return (dir.to_path_buf(), profile.to_owned());
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    if cfg!(debug_assertions) {
        (target.join("debug"), "dev".to_owned())
    } else {
        (target.join("release"), "release".to_owned())
    }
}

fn workspace_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn build_callledger(profile_dir: &Path, profile: &str) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // <target>/<profile>: pass the target directory on, in case it was chosen
    // by a config file this process does not see.
    let target_dir = profile_dir.parent().expect("profile dir has a parent");
    let output = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "--quiet",
            "-p",
            "callledger",
            "--bin",
            "callledger",
        ])
        .args(["--profile", profile])
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null())
        .output()
        .expect("run cargo build -p callledger");
    // Cargo's output (warnings included) is only noise unless the build failed.
    assert!(
        output.status.success(),
        "cargo build -p callledger failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Copies the files of the storage directory `healthy` into `into` (created if missing), then
/// writes `len` garbled bytes (a pattern that `seed` varies) at `offset` of the copy's `file`:
/// a damaged copy of a healthy database, for tests of what opening and reading it do.
pub fn damaged_copy(healthy: &Path, into: &Path, file: &str, offset: u64, len: u32, seed: u32) {
    use std::io::{Seek, SeekFrom, Write};
    std::fs::create_dir_all(into).expect("the copy's directory");
    for entry in std::fs::read_dir(healthy).expect("list the healthy directory") {
        let entry = entry.expect("an entry");
        if entry.file_type().expect("a type").is_file() {
            std::fs::copy(entry.path(), into.join(entry.file_name())).expect("copy");
        }
    }
    let mut copy = std::fs::OpenOptions::new()
        .write(true)
        .open(into.join(file))
        .expect("open the copy");
    copy.seek(SeekFrom::Start(offset)).expect("seek");
    let garbage: Vec<u8> = (0..len).map(|i| (i * 7 + seed * 13) as u8).collect();
    copy.write_all(&garbage).expect("garble");
}
