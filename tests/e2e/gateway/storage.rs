//! Storage that fails under `callledger serve`: a full disk refuses writes and resumes by
//! itself; a disk that stops completing writes (a frozen filesystem) makes the storage watchdog
//! end the process with status 75, and nothing acknowledged before it is lost.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use call_ledger_tests::{callledger_bin, NatsServer};
use serde_json::json;

use super::process::{arg, offline, wait_until_serving, Serve};
use super::{blocking, bounded, call_document, eventually, Caller, TEST_TIMEOUT};

/// `callledger serve` on `data` with `extra` flags, once it answers, and the ids of `calls`
/// calls it acknowledged.
async fn serve_with_calls(
    bin: &Path,
    data: &Path,
    nats: &NatsServer,
    extra: &[&str],
    log: PathBuf,
    calls: usize,
) -> (Serve, Caller, Vec<u64>) {
    let serve = blocking(|| Serve::start(bin, data, &nats.url(), extra, log));
    let client = async_nats::connect(nats.url()).await.expect("a client");
    let caller = Caller::new(client, None);
    wait_until_serving(&caller, &serve).await;
    let mut acknowledged = Vec::with_capacity(calls);
    for n in 0..calls {
        let call = caller
            .create_call(json!({"note": format!("before {n}")}))
            .await;
        acknowledged.push(call["id"].as_u64().expect("an id"));
    }
    (serve, caller, acknowledged)
}

/// A tmpfs of `size` mounted on `at`, unmounted on drop; `None` where mounting is not allowed
/// (not root, or no mount namespace of our own).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                arg(at),
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(Tmpfs(at.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// Bytes free, as df sees them.
    fn available(&self) -> u64 {
        let output = Command::new("df")
            .args(["--output=avail", "-B1", arg(&self.0)])
            .output()
            .expect("df runs");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .and_then(|line| line.trim().parse().ok())
            .expect("df prints the free bytes")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").args(["-l", arg(&self.0)]).status();
    }
}

/// The data directory on a small tmpfs that is then filled up: creates are answered 503 with a
/// log line saying the disk is full, reads go on, nothing acknowledged is lost, and once the
/// space is freed writes resume by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_reads_and_resumes_once_space_is_freed() {
    let bin = blocking(callledger_bin);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let disk = match Tmpfs::mount(&dir.path().join("disk"), "48m") {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("skipped: cannot mount a tmpfs here ({why})");
            return;
        }
    };
    bounded("the test", TEST_TIMEOUT, async {
        let nats = blocking(NatsServer::start);
        let data = disk.0.join("data");
        let (mut serve, caller, mut acknowledged) = serve_with_calls(
            &bin,
            &data,
            &nats,
            &["--disk-reserve-mb", "8"],
            dir.path().join("serve.log"),
            20,
        )
        .await;

        // Fill the disk to 4 MiB short of full, inside the reserve.
        let filler = disk.0.join("filler");
        let size = disk.available().saturating_sub(4 << 20);
        let filled = Command::new("fallocate")
            .args(["-l", &size.to_string(), arg(&filler)])
            .status()
            .expect("fallocate runs");
        assert!(filled.success());
        let refused = eventually("a create refused", Duration::from_secs(20), || {
            let caller = caller.clone();
            async move {
                let reply = caller
                    .create(&[], &call_document(json!({"note": "while full"})))
                    .await;
                (!reply.is_success()).then_some(reply)
            }
        })
        .await;
        refused.assert_error(503, "Service Unavailable");
        assert!(
            serve.logs().contains("disk full: refusing writes"),
            "a clear log line; the log:\n{}",
            serve.logs()
        );
        for _ in 0..5 {
            let reply = caller.create(&[], &call_document(json!({}))).await;
            reply.assert_error(503, "Service Unavailable");
        }
        // Reads go on.
        for id in &acknowledged {
            assert!(caller.get(*id, "").await.is_success(), "call {id}");
        }
        assert!(caller.list("page[size]=5").await.is_success());

        // Space freed: writes resume by themselves.
        std::fs::remove_file(&filler).expect("the filler goes");
        let resumed = eventually(
            "a create after the space is freed",
            Duration::from_secs(20),
            || {
                let caller = caller.clone();
                async move {
                    let reply = caller
                        .create(&[], &call_document(json!({"note": "after"})))
                        .await;
                    reply
                        .is_success()
                        .then(|| reply.data()["id"].as_u64().expect("an id"))
                }
            },
        )
        .await;
        acknowledged.push(resumed);
        assert!(
            serve.logs().contains("disk space freed"),
            "{}",
            serve.logs()
        );
        serve.stop_cleanly();
        let verified = offline(&bin, &data, &["verify"]);
        assert!(verified.contains("equals the live one"), "{verified}");
        for id in &acknowledged {
            let call = offline(&bin, &data, &["get", &id.to_string()]);
            assert!(call.contains("\"type\":\"call\""), "call {id}: {call}");
        }
    })
    .await;
    drop(disk);
}

/// An ext4 filesystem in an image file, loop-mounted on `at`; thawed, unmounted and detached on
/// drop. Freezing it (`fsfreeze`) makes every write to it wait, as a disk that no longer
/// completes writes would.
struct LoopDisk {
    at: PathBuf,
    frozen: bool,
}

impl LoopDisk {
    fn mount(at: &Path, image: &Path, size_mb: u64) -> Result<LoopDisk, String> {
        let run = |program: &str, args: &[&str]| -> Result<(), String> {
            let output = Command::new(program)
                .args(args)
                .output()
                .map_err(|e| format!("{program}: {e}"))?;
            if output.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{program}: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ))
            }
        };
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        std::fs::File::create(image)
            .and_then(|file| file.set_len(size_mb << 20))
            .map_err(|e| e.to_string())?;
        run("mkfs.ext4", &["-q", "-F", arg(image)])?;
        run("mount", &["-o", "loop", arg(image), arg(at)])?;
        Ok(LoopDisk {
            at: at.to_path_buf(),
            frozen: false,
        })
    }

    fn fsfreeze(&mut self, flag: &str) {
        let status = Command::new("fsfreeze")
            .args([flag, arg(&self.at)])
            .status()
            .expect("fsfreeze runs");
        assert!(status.success(), "fsfreeze {flag} {}", self.at.display());
        self.frozen = flag == "-f";
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        if self.frozen {
            let _ = Command::new("fsfreeze")
                .args(["-u", arg(&self.at)])
                .status();
        }
        // A loop mount detaches its device when unmounted.
        let _ = Command::new("umount").arg(arg(&self.at)).status();
    }
}

/// The data directory's disk stops completing writes (frozen) under a create: the storage
/// watchdog logs what stalled and ends the service with status 75 (for its supervisor to
/// restart it) instead of leaving it hung, and a ledger opened again on the thawed disk holds
/// every call acknowledged before and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_stops_answering_ends_the_service_and_loses_nothing_acknowledged() {
    let bin = blocking(callledger_bin);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut disk = match LoopDisk::mount(&dir.path().join("disk"), &dir.path().join("disk.img"), 64)
    {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("skipped: cannot loop-mount an ext4 image here ({why})");
            return;
        }
    };
    let data = disk.at.join("data");
    bounded("the test", TEST_TIMEOUT, async {
        let nats = blocking(NatsServer::start);
        let (mut serve, caller, acknowledged) = serve_with_calls(
            &bin,
            &data,
            &nats,
            &["--stall-exit-secs", "2", "--disk-reserve-mb", "8"],
            dir.path().join("serve.log"),
            10,
        )
        .await;

        disk.fsfreeze("-f");
        // Not acknowledged: its append waits on the frozen disk until the process ends.
        let unanswered = tokio::spawn({
            let caller = caller.clone();
            async move {
                caller
                    .create(&[], &call_document(json!({"note": "frozen"})))
                    .await
            }
        });
        eventually("the watchdog's log line", Duration::from_secs(30), || {
            let logs = serve.logs();
            async move { logs.contains("has made no progress for").then_some(()) }
        })
        .await;
        let logs = serve.logs();
        // The log's writer stalls on the create's flush; the projection's catch-up may stall
        // first, on a write of its own: either is named.
        assert!(
            (logs.contains("the event log's writer has made no progress")
                || logs.contains("the projection's catch-up has made no progress"))
                && logs.contains("Exiting for the supervisor to restart the service"),
            "says what stalled and what it does; the log:\n{logs}"
        );
        // A thread blocked on the frozen disk can hold the exit until the disk answers again.
        disk.fsfreeze("-u");
        let status = blocking(|| serve.wait(Duration::from_secs(30)));
        assert_eq!(
            status.code(),
            Some(75),
            "{status}; the log:\n{}",
            serve.logs()
        );
        unanswered.abort();

        let verified = blocking(|| offline(&bin, &data, &["verify"]));
        assert!(verified.contains("equals the live one"), "{verified}");
        for id in &acknowledged {
            let call = blocking(|| offline(&bin, &data, &["get", &id.to_string()]));
            assert!(call.contains("\"type\":\"call\""), "call {id}: {call}");
        }
    })
    .await;
    drop(disk);
}

/// `export` and an offline `backup` read the log alone: with the projection's database garbled,
/// they copy the whole log as before, and leave the projection's files as they found them
/// (opening the projection would have rebuilt it first).
#[test]
fn export_and_an_offline_backup_read_the_log_alone() {
    let bin = callledger_bin();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("data");
    let calls = dir.path().join("calls.ndjson");
    let lines: String = (0..50)
        .map(|n| format!("{{\"note\":\"call {n}\"}}\n"))
        .collect();
    std::fs::write(&calls, lines).expect("the calls");
    let imported = offline(&bin, &data, &["import", arg(&calls)]);
    assert!(imported.starts_with("imported 50 calls"), "{imported}");
    let exported = offline(&bin, &data, &["export"]);
    assert_eq!(exported.lines().count(), 50);

    let projection = data.join("projection").join("db");
    let mut bytes = std::fs::read(&projection).expect("the projection's database");
    let middle = bytes.len() / 2;
    for (offset, byte) in bytes[middle..].iter_mut().take(256).enumerate() {
        *byte = (offset as u8).wrapping_mul(7).wrapping_add(13);
    }
    std::fs::write(&projection, &bytes).expect("garble it");

    assert_eq!(offline(&bin, &data, &["export"]), exported);
    let backup = dir.path().join("backup");
    let backed_up = offline(&bin, &data, &["backup", arg(&backup)]);
    assert!(backed_up.starts_with("backed up 50 events"), "{backed_up}");
    assert_eq!(
        std::fs::read(&projection).expect("the projection's database"),
        bytes,
        "the projection is left as it was"
    );
}
