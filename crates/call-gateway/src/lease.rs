//! The writer lock: one ledger per subject prefix on a NATS system. Each embedded (sled) ledger
//! keeps its own log, so two of them serving the same subjects would hand out the same call ids
//! and split the ledger between them. Before serving, the gateway takes a key in a NATS KV bucket
//! (named from the prefix) and renews it; a second instance finds it held and refuses to start,
//! naming the holder.
//!
//! The key expires `ttl` after its last renewal (the bucket's `max_age`), so a holder that died
//! without releasing it is replaced once that time has passed. The holder's identity is a random
//! instance id kept in its data directory: the same directory restarted after a crash is the
//! same instance and takes its key back at once, without waiting for it to expire (and no other
//! process can hold that directory meanwhile: the log locks it).

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::error::{GatewayError, GatewayErrorKind};
use crate::{sleep_or_stop, stopped, Backoff};

/// The key the holder is written under.
const KEY: &str = "writer";
/// The instance id's file in the data directory.
pub(crate) const INSTANCE_FILE: &str = "instance.id";

/// Who holds (or wants) the lock.
#[derive(Clone, Debug)]
pub(crate) struct Holder {
    /// The instance id, from the data directory.
    pub(crate) instance: String,
    /// What an operator needs to find it: host, pid and data directory.
    pub(crate) description: Value,
}

impl Holder {
    /// This process, serving `data_dir` (whose instance id is read or created).
    pub(crate) fn of_this_process(data_dir: &Path) -> Result<Holder, GatewayError> {
        let instance = instance_id(data_dir)?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .unwrap_or_else(|_| "unknown host".to_owned());
        Ok(Holder {
            description: json!({
                "instance": instance,
                "host": host,
                "pid": std::process::id(),
                "dataDir": data_dir.display().to_string(),
            }),
            instance,
        })
    }

    fn to_bytes(&self) -> Bytes {
        Bytes::from(self.description.to_string())
    }
}

/// Reads the data directory's instance id, creating it (random) the first time.
fn instance_id(data_dir: &Path) -> Result<String, GatewayError> {
    let path = data_dir.join(INSTANCE_FILE);
    let failed = |what: &str, error: std::io::Error| {
        GatewayError::with_source(
            GatewayErrorKind::Checkpoint,
            format!("cannot {what} {}", path.display()),
            error,
        )
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(failed("read", error)),
    }
    let id = uuid::Uuid::now_v7().to_string();
    std::fs::create_dir_all(data_dir).map_err(|e| failed("create the directory of", e))?;
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, &id).map_err(|e| failed("write", e))?;
    std::fs::rename(&temporary, &path).map_err(|e| failed("write", e))?;
    Ok(id)
}

/// A held lock.
pub(crate) struct WriterLock {
    kv: kv::Store,
    bucket: String,
    holder: Holder,
    revision: u64,
    ttl: Duration,
}

pub(crate) fn kv_error(
    what: String,
    error: impl std::error::Error + Send + Sync + 'static,
) -> GatewayError {
    GatewayError::with_source(GatewayErrorKind::JetStream, what, error)
}

/// Opens the lock's bucket, creating its stream first. The stream is made here, with the KV
/// conventions (`KV_<bucket>` on `$KV.<bucket>.>`, one message per key, rollups, direct gets),
/// rather than by `create_key_value`: async-nats 0.51 asks the account's limits first, and cannot
/// read the answer of a nats-server 2.9.
pub(crate) async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
    ttl: Duration,
) -> Result<kv::Store, GatewayError> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age: ttl,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    })
    .await
    .map_err(|e| kv_error(format!("cannot create the KV bucket {bucket}"), e))?;
    js.get_key_value(bucket)
        .await
        .map_err(|e| kv_error(format!("cannot open the KV bucket {bucket}"), e))
}

/// What the current value of the key says.
enum Current {
    /// Nobody holds it (never taken, released, or expired).
    Free,
    /// This instance holds it, at this revision.
    Ours(u64),
    /// Another instance holds it.
    Theirs(Value),
}

impl WriterLock {
    /// Takes the lock in `bucket` (creating the bucket), or fails with
    /// [`GatewayErrorKind::Locked`] naming the instance that holds it.
    pub(crate) async fn acquire(
        js: &jetstream::Context,
        bucket: &str,
        holder: Holder,
        ttl: Duration,
    ) -> Result<WriterLock, GatewayError> {
        let kv = open_bucket(
            js,
            bucket,
            "call-ledger: the instance that serves these subjects",
            ttl,
        )
        .await?;
        let mut lock = WriterLock {
            kv,
            bucket: bucket.to_owned(),
            holder,
            revision: 0,
            ttl,
        };
        // A few rounds: the key can expire or be released between a read and a write.
        for _ in 0..3 {
            match lock.current().await? {
                Current::Free => match lock.kv.create(KEY, lock.holder.to_bytes()).await {
                    Ok(revision) => {
                        lock.revision = revision;
                        return Ok(lock);
                    }
                    Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                    Err(error) => {
                        return Err(kv_error(format!("cannot take the lock in {bucket}"), error))
                    }
                },
                Current::Ours(revision) => {
                    match lock.kv.update(KEY, lock.holder.to_bytes(), revision).await {
                        Ok(revision) => {
                            lock.revision = revision;
                            return Ok(lock);
                        }
                        Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                            continue
                        }
                        Err(error) => {
                            return Err(kv_error(
                                format!("cannot take the lock in {bucket} back"),
                                error,
                            ))
                        }
                    }
                }
                Current::Theirs(other) => return Err(lock.held_by(&other)),
            }
        }
        Err(GatewayError::new(
            GatewayErrorKind::Locked,
            format!("the lock in {bucket} changed hands while it was being taken; try again"),
        ))
    }

    async fn current(&self) -> Result<Current, GatewayError> {
        let entry = self
            .kv
            .entry(KEY)
            .await
            .map_err(|e| kv_error(format!("cannot read the lock in {}", self.bucket), e))?;
        Ok(match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let value: Value = serde_json::from_slice(&entry.value).unwrap_or(Value::Null);
                if value["instance"].as_str() == Some(self.holder.instance.as_str()) {
                    Current::Ours(entry.revision)
                } else {
                    Current::Theirs(value)
                }
            }
            _ => Current::Free,
        })
    }

    fn held_by(&self, other: &Value) -> GatewayError {
        let field = |name: &str| other[name].as_str().unwrap_or("?").to_owned();
        GatewayError::new(
            GatewayErrorKind::Locked,
            format!(
                "another call-ledger instance serves these subjects: instance {} (pid {} on {}, data directory {}) holds the lock in the KV bucket {}. \
                 Two embedded ledgers on the same subjects would split the ledger: stop that instance, or give this one its own --subject-prefix; \
                 to serve one ledger from several instances, use the JetStream engine (docs/operations.md). \
                 A holder that died frees the lock {} s after its last renewal.",
                field("instance"),
                other["pid"],
                field("host"),
                field("dataDir"),
                self.bucket,
                self.ttl.as_secs()
            ),
        )
    }

    /// Renews the lock once. `Ok(false)` when NATS could not be reached (try again soon);
    /// an error when another instance holds it now.
    async fn renew(&mut self) -> Result<bool, GatewayError> {
        match self
            .kv
            .update(KEY, self.holder.to_bytes(), self.revision)
            .await
        {
            Ok(revision) => {
                self.revision = revision;
                Ok(true)
            }
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                // Expired while NATS was away, or taken by another instance.
                match self.current().await? {
                    Current::Ours(revision) => {
                        self.revision = revision;
                        Ok(true)
                    }
                    Current::Free => match self.kv.create(KEY, self.holder.to_bytes()).await {
                        Ok(revision) => {
                            self.revision = revision;
                            Ok(true)
                        }
                        Err(_) => Ok(false),
                    },
                    Current::Theirs(other) => Err(self.held_by(&other)),
                }
            }
            Err(error) => {
                tracing::warn!(%error, bucket = %self.bucket, "cannot renew the writer lock; retrying");
                Ok(false)
            }
        }
    }

    /// Renews the lock every third of its time to live until `stop`, then releases it. Returns
    /// an error only when another instance took the lock: this one must stop serving.
    pub(crate) async fn hold(
        mut self,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), GatewayError> {
        let period = self.ttl / 3;
        let mut backoff = Backoff::new(Duration::from_millis(200), period);
        let mut delay = period;
        loop {
            if sleep_or_stop(delay, &mut stop).await {
                break;
            }
            delay = if self.renew().await? {
                backoff.reset();
                period
            } else {
                backoff.next_delay()
            };
        }
        stopped(&mut stop).await;
        self.release().await;
        Ok(())
    }

    /// Deletes the key if this instance still holds it, so that another instance may start at
    /// once; otherwise, or when NATS is away, the key expires by itself.
    async fn release(&self) {
        let released = match self.current().await {
            Ok(Current::Ours(revision)) => self
                .kv
                .delete_expect_revision(KEY, Some(revision))
                .await
                .map_err(|e| e.to_string()),
            Ok(_) => return,
            Err(error) => Err(error.to_string()),
        };
        match released {
            Ok(()) => tracing::info!(bucket = %self.bucket, "writer lock released"),
            Err(error) => {
                tracing::warn!(%error, bucket = %self.bucket, "cannot release the writer lock; it expires by itself")
            }
        }
    }
}
