//! The cluster backend: each instance's state and key-value data as one
//! value in a JetStream key-value bucket, every write fenced.
//!
//! An instance's value is `{"token","write_id","state","kv"}`. On
//! activation the owner stamps its fencing token into it (an update with
//! the expected revision; refused when a newer owner's token is there), and
//! every batch after that is one update with the revision it last saw: a
//! replaced owner's writes fail, since the new owner's stamp changed the
//! revision. A write whose outcome is unknown (a timeout; JetStream may
//! still apply it) is settled by reading the value back: our `write_id`
//! there means it landed.
//!
//! The owner keeps the instance's value in memory (it rewrites it whole on
//! each batch), so reads are served without a round trip.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Backend, BoxFuture, Done, InstanceId, StorageError, Write};
use crate::lock;

/// How long one JetStream operation may take before its outcome is
/// re-checked.
const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// Attempts at an activation or a write whose outcome stays unknown.
const ATTEMPTS: usize = 5;

/// The stored value of one instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Stored {
    token: u64,
    write_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state: Option<Box<RawValue>>,
    #[serde(default)]
    kv: BTreeMap<String, Box<RawValue>>,
}

/// The key of an instance in the bucket (agent and name, each base64url).
pub(crate) fn bucket_key(id: &InstanceId) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}",
        b64.encode(id.agent.as_bytes()),
        b64.encode(id.name.as_bytes())
    )
}

/// [`Backend`] on a JetStream key-value bucket.
#[derive(Debug)]
pub(crate) struct NatsStorage {
    bucket: kv::Store,
    /// Largest message the NATS server takes.
    max_payload: usize,
    /// Whether the node may serve (connected, lease valid).
    ready: Arc<AtomicBool>,
    slots: Mutex<HashMap<InstanceId, Arc<Slot>>>,
    failed: Mutex<HashSet<InstanceId>>,
    /// Batches submitted and not yet settled, for `flush`.
    in_flight: AtomicUsize,
    settled: tokio::sync::Notify,
}

/// An active instance: what it last wrote, and the batches waiting.
#[derive(Default)]
struct Slot {
    data: Mutex<Option<(u64, Stored)>>,
    queue: Mutex<Vec<(Vec<Write>, Done)>>,
    writing: AtomicBool,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

fn failed(what: impl std::fmt::Display) -> StorageError {
    StorageError::Failed(what.to_string())
}

impl NatsStorage {
    pub(crate) fn new(bucket: kv::Store, max_payload: usize, ready: Arc<AtomicBool>) -> Self {
        NatsStorage {
            bucket,
            max_payload,
            ready,
            slots: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashSet::new()),
            in_flight: AtomicUsize::new(0),
            settled: tokio::sync::Notify::new(),
        }
    }

    fn slot(&self, id: &InstanceId) -> Arc<Slot> {
        lock(&self.slots).entry(id.clone()).or_default().clone()
    }

    /// The stored value and its revision (`None`: no value, or deleted).
    async fn read(bucket: &kv::Store, key: &str) -> Result<Option<(u64, Stored)>, StorageError> {
        let entry = tokio::time::timeout(OP_TIMEOUT, bucket.entry(key))
            .await
            .map_err(|_| failed("cluster store timed out"))?
            .map_err(failed)?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let stored: Stored = serde_json::from_slice(&e.value)?;
                Ok(Some((e.revision, stored)))
            }
            _ => Ok(None),
        }
    }

    /// Activation: reads the value and stamps our token into it.
    async fn activate(
        bucket: kv::Store,
        max_payload: usize,
        slot: Arc<Slot>,
        id: InstanceId,
    ) -> Result<Option<String>, StorageError> {
        let key = bucket_key(&id);
        for _ in 0..ATTEMPTS {
            let (rev, mut stored) = match Self::read(&bucket, &key).await? {
                Some(found) => found,
                None => {
                    let fresh = Stored {
                        token: id.token,
                        ..Stored::default()
                    };
                    let value = encode(&fresh, max_payload)?;
                    match tokio::time::timeout(OP_TIMEOUT, bucket.create(&key, value)).await {
                        Ok(Ok(rev)) => {
                            *lock(&slot.data) = Some((rev, fresh));
                            return Ok(None);
                        }
                        // Someone else created it meanwhile, or unknown: look again.
                        _ => continue,
                    }
                }
            };
            if stored.token > id.token {
                return Err(StorageError::Fenced);
            }
            stored.token = id.token;
            let value = encode(&stored, max_payload)?;
            match tokio::time::timeout(OP_TIMEOUT, bucket.update(&key, value, rev)).await {
                Ok(Ok(rev)) => {
                    let state = stored.state.as_ref().map(|s| s.get().to_owned());
                    *lock(&slot.data) = Some((rev, stored));
                    return Ok(state);
                }
                // Changed meanwhile, or unknown: read again (a stamp that did
                // land shows as our token with this same write_id).
                _ => continue,
            }
        }
        Err(failed("cannot activate the instance in the cluster store"))
    }

    /// Writes the waiting batches of `slot`, merged, until none is left.
    async fn write_loop(self: Arc<Self>, slot: Arc<Slot>, id: InstanceId) {
        let key = bucket_key(&id);
        loop {
            let batches = std::mem::take(&mut *lock(&slot.queue));
            if batches.is_empty() {
                slot.writing.store(false, Ordering::Release);
                // A batch may have arrived between the take and the store.
                if lock(&slot.queue).is_empty() || slot.writing.swap(true, Ordering::AcqRel) {
                    return;
                }
                continue;
            }
            let n = batches.len();
            let (writes, dones): (Vec<_>, Vec<_>) = batches.into_iter().unzip();
            let result = if lock(&self.failed).contains(&id) {
                Err(failed("an earlier write of this instance failed"))
            } else {
                self.write(&slot, &id, &key, writes.into_iter().flatten())
                    .await
            };
            if let Err(err) = &result {
                if !matches!(err, StorageError::TooLarge { .. }) {
                    lock(&self.failed).insert(id.clone());
                }
            }
            for done in dones {
                done(match &result {
                    Ok(()) => Ok(()),
                    Err(StorageError::Fenced) => Err(StorageError::Fenced),
                    Err(StorageError::TooLarge { max }) => {
                        Err(StorageError::TooLarge { max: *max })
                    }
                    Err(err) => Err(failed(err)),
                });
            }
            self.in_flight.fetch_sub(n, Ordering::AcqRel);
            self.settled.notify_waiters();
        }
    }

    /// One fenced update carrying `writes`.
    async fn write(
        &self,
        slot: &Slot,
        id: &InstanceId,
        key: &str,
        writes: impl Iterator<Item = Write>,
    ) -> Result<(), StorageError> {
        let Some((rev, current)) = lock(&slot.data).clone() else {
            return Err(failed("the instance is not active here"));
        };
        let mut next = current;
        next.write_id += 1;
        for write in writes {
            match write {
                Write::State(json) => next.state = Some(RawValue::from_string(json)?),
                Write::Put(k, json) => {
                    next.kv.insert(k, RawValue::from_string(json)?);
                }
                Write::Delete(k) => {
                    next.kv.remove(&k);
                }
                Write::Barrier => {}
            }
        }
        let value = encode(&next, self.max_payload)?;
        let mut rev = rev;
        for _ in 0..ATTEMPTS {
            if !self.ready.load(Ordering::Acquire) {
                return Err(failed("the node lost its cluster lease"));
            }
            match tokio::time::timeout(OP_TIMEOUT, self.bucket.update(key, value.clone(), rev))
                .await
            {
                Ok(Ok(new_rev)) => {
                    *lock(&slot.data) = Some((new_rev, next));
                    return Ok(());
                }
                Ok(Err(err)) if err.kind() != kv::UpdateErrorKind::WrongLastRevision => {
                    tracing::debug!(%err, "cluster store write failed; checking what landed");
                }
                _ => {}
            }
            // Wrong revision, or unknown: what is there now?
            match Self::read(&self.bucket, key).await {
                Ok(Some((found, stored)))
                    if stored.token == id.token && stored.write_id == next.write_id =>
                {
                    // It landed (a retried or late acknowledgement).
                    *lock(&slot.data) = Some((found, next));
                    return Ok(());
                }
                Ok(Some((found, stored)))
                    if stored.token == id.token && stored.write_id + 1 == next.write_id =>
                {
                    // Not applied, and nobody else wrote: try again.
                    rev = found;
                }
                Ok(_) => return Err(StorageError::Fenced),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        Err(failed("the cluster store did not answer"))
    }
}

fn encode(stored: &Stored, max_payload: usize) -> Result<Bytes, StorageError> {
    let value = serde_json::to_vec(stored)?;
    if value.len() > max_payload {
        return Err(StorageError::TooLarge { max: max_payload });
    }
    Ok(value.into())
}

impl Backend for Arc<NatsStorage> {
    fn load_state(&self, id: &InstanceId) -> BoxFuture<Result<Option<String>, StorageError>> {
        let slot = self.slot(id);
        Box::pin(NatsStorage::activate(
            self.bucket.clone(),
            self.max_payload,
            slot,
            id.clone(),
        ))
    }

    fn submit(&self, id: &InstanceId, writes: Vec<Write>, done: Done) {
        let slot = self.slot(id);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        lock(&slot.queue).push((writes, done));
        if !slot.writing.swap(true, Ordering::AcqRel) {
            tokio::spawn(NatsStorage::write_loop(self.clone(), slot, id.clone()));
        }
    }

    fn reset(&self, id: &InstanceId) {
        lock(&self.failed).remove(id);
    }

    fn get(&self, id: &InstanceId, key: &str) -> BoxFuture<Result<Option<String>, StorageError>> {
        let value = lock(&self.slot(id).data)
            .as_ref()
            .and_then(|(_, stored)| stored.kv.get(key).map(|v| v.get().to_owned()));
        Box::pin(async move { Ok(value) })
    }

    fn keys(&self, id: &InstanceId, prefix: &str) -> BoxFuture<Result<Vec<String>, StorageError>> {
        let keys = lock(&self.slot(id).data)
            .as_ref()
            .map(|(_, stored)| {
                stored
                    .kv
                    .keys()
                    .filter(|k| k.starts_with(prefix))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        Box::pin(async move { Ok(keys) })
    }

    fn release(&self, id: &InstanceId) {
        lock(&self.slots).remove(id);
        lock(&self.failed).remove(id);
    }

    fn flush(&self) -> BoxFuture<()> {
        let this = self.clone();
        Box::pin(async move {
            loop {
                let settled = this.settled.notified();
                if this.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                settled.await;
            }
        })
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
