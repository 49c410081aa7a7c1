//! The lock objects that keep a prune's sweep away from a running push (`spec/archive.md`,
//! "Prune, and concurrent pushes"), and the lease that keeps a lock fresh for a whole run.
//!
//! A lock is an object `locks/<push|prune>-<nonce>.json`; it is **live** while its
//! `last_modified` (the store's clock) is less than `stale_after` older than the lock the
//! checking client just wrote, else it is a crashed client's and ignored. So a holder must
//! rewrite its lock more often than `stale_after` for as long as it runs, whatever it is doing:
//! a [`Lease`] rewrites it every `refresh` on a thread of its own, so a push that seals no pack
//! for an hour (a large, unchanged snapshot) or a prune listing a large archive never looks
//! crashed. A holder that could not rewrite its lock for half of `stale_after` (suspended, or
//! the store refused the writes) may have been taken for crashed: [`Lease::check`] fails, and
//! the holder stops before it writes a manifest or deletes anything.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::push::PushOptions;
use super::{Archive, ArchiveError};

/// A lock object held for one run and rewritten every `refresh` until it is released or
/// dropped. Dropping it stops the rewrites and leaves the object (it expires, as a crashed
/// client's would): [`Archive::release`] deletes it.
pub(super) struct Lease {
    pub path: Path,
    /// Dropped to stop the refresher.
    stop: Option<mpsc::Sender<()>>,
    refresher: Option<std::thread::JoinHandle<()>>,
    health: Arc<Mutex<Health>>,
    refresh: Duration,
}

/// What the refresher last managed.
struct Health {
    /// When the last successful rewrite started (the object is at least this fresh).
    written: Instant,
    /// The last failed rewrite's error, if the last attempt failed.
    failure: Option<String>,
}

impl Lease {
    /// Fails if the lock may have looked stale to another client: its refresher missed a beat
    /// (no rewrite for two periods) and it was not rewritten for half of `stale_after` (the
    /// other half is the margin for what the holder does next). A staleness shorter than
    /// that (`Duration::ZERO`: every other lock is stale) is the caller's choice to ignore
    /// locks, its own included.
    pub fn check(&self, stale_after: Duration) -> Result<(), ArchiveError> {
        let (idle, failure) = match self.health.lock() {
            Ok(health) => (health.written.elapsed(), health.failure.clone()),
            Err(_) => (Duration::MAX, Some("the refresher panicked".into())),
        };
        if idle < stale_after.checked_div(2).unwrap_or_default()
            || idle <= self.refresh.saturating_mul(2)
        {
            return Ok(());
        }
        Err(ArchiveError::LockLapsed {
            lock: self.path.to_string(),
            idle,
            reason: failure.unwrap_or_else(|| "the process was suspended".into()),
        })
    }

    fn stop(&mut self) {
        self.stop.take();
        if let Some(refresher) = self.refresher.take() {
            let _ = refresher.join();
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A lock object's body: who holds it (for a human reading the store).
fn lock_body() -> PutPayload {
    let body = format!(
        "{{\"pid\": {}, \"host\": {:?}}}\n",
        std::process::id(),
        std::env::var("HOSTNAME").unwrap_or_default()
    );
    PutPayload::from(body.into_bytes())
}

impl Archive {
    /// Writes a new lock object of `kind` (`push`, `prune`) and keeps it fresh every `refresh`
    /// until the lease is released or dropped.
    pub(super) async fn take_lease(
        &self,
        kind: &str,
        refresh: Duration,
    ) -> Result<Lease, ArchiveError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let nonce = format!("{nanos:x}-{:x}-{:x}", std::process::id(), next_nonce());
        let path = self.path(&format!("locks/{kind}-{nonce}.json"));
        let written = Instant::now();
        self.store.put(&path, lock_body()).await?;
        let health = Arc::new(Mutex::new(Health {
            written,
            failure: None,
        }));
        let (stop, stopped) = mpsc::channel::<()>();
        let refresher = {
            let (store, path, health) = (self.store.clone(), path.clone(), health.clone());
            let runtime = self.runtime.handle().clone();
            std::thread::Builder::new()
                .name(format!("{kind}-lock"))
                .spawn(move || {
                    refresh_until_stopped(&runtime, &*store, &path, &health, &stopped, refresh)
                })
                .map_err(|e| ArchiveError::io(std::path::Path::new("lock refresher thread"), e))?
        };
        Ok(Lease {
            path,
            stop: Some(stop),
            refresher: Some(refresher),
            health,
            refresh,
        })
    }

    /// Stops a lease's rewrites and deletes its lock (best effort: a lock left behind expires).
    pub(super) fn release(&self, mut lease: Lease) {
        lease.stop();
        let _ = self.runtime.block_on(self.store.delete(&lease.path));
    }

    /// Another client's live lock of `kind`, if any: one whose last write is less than
    /// `stale_after` older than `own`'s (both by the store's clock).
    pub(super) async fn live_lock(
        &self,
        kind: &str,
        own: &Path,
        stale_after: Duration,
    ) -> Result<Option<String>, ArchiveError> {
        let locks: Vec<_> = self
            .store
            .list(Some(&self.path("locks")))
            .try_collect()
            .await?;
        let now = locks
            .iter()
            .find(|l| l.location == *own)
            .or_else(|| locks.iter().max_by_key(|l| l.last_modified))
            .map(|l| l.last_modified);
        Ok(locks
            .iter()
            .filter(|l| l.location != *own)
            .filter(|l| {
                l.location
                    .filename()
                    .is_some_and(|f| f.starts_with(&format!("{kind}-")))
            })
            .find(|l| {
                // A lock written after ours (negative age) is live.
                now.is_none_or(|now| {
                    now.signed_duration_since(l.last_modified)
                        .to_std()
                        .is_ok_and(|age| age < stale_after)
                        || l.last_modified > now
                })
            })
            .map(|l| l.location.to_string()))
    }

    /// Takes a push lease, withdrawing and waiting while a live prune lock is there.
    pub(super) fn acquire_push_lease(&self, options: &PushOptions) -> Result<Lease, ArchiveError> {
        let start = Instant::now();
        loop {
            let lease = self
                .runtime
                .block_on(self.take_lease("push", options.lock_refresh))?;
            let prune =
                self.runtime
                    .block_on(self.live_lock("prune", &lease.path, options.stale_after));
            match prune {
                Ok(None) => return Ok(lease),
                Ok(Some(prune)) => {
                    self.release(lease);
                    if start.elapsed() >= options.lock_wait {
                        return Err(ArchiveError::PruneInProgress { lock: prune });
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => {
                    self.release(lease);
                    return Err(e);
                }
            }
        }
    }
}

/// The refresher's loop: rewrites the lock every `refresh` until the lease's sender is dropped.
fn refresh_until_stopped(
    runtime: &tokio::runtime::Handle,
    store: &dyn ObjectStore,
    path: &Path,
    health: &Mutex<Health>,
    stopped: &mpsc::Receiver<()>,
    refresh: Duration,
) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(refresh) {
        let started = Instant::now();
        let written = runtime.block_on(store.put(path, lock_body()));
        let Ok(mut health) = health.lock() else {
            return;
        };
        match written {
            Ok(_) => {
                health.written = started;
                health.failure = None;
            }
            Err(e) => health.failure = Some(e.to_string()),
        }
    }
}

/// A per-process counter, so that two locks written in the same nanosecond differ.
fn next_nonce() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
