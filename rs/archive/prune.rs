//! List, prune, and the lock objects that keep a prune's sweep away from a running push
//! (`spec/archive.md`, "Prune and concurrent pushes").

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use candid::Principal;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path;

use super::manifest::{MAX_MANIFEST_BYTES, Manifest, check_name, is_hash};
use super::push::PushOptions;
use super::{Archive, ArchiveError, STALE_LOCK};

/// Knobs for a prune.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Manifests kept per canister, the newest (by `taken_at_timestamp`); at least 1.
    pub keep_last: usize,
    /// Prune this canister's manifests only (packs are swept for the whole archive, marked
    /// by every canister's manifests).
    pub canister_id: Option<Principal>,
    /// Age (by the store's clock) past which a push lock is a crashed push's and ignored.
    pub stale_after: Duration,
}

impl PruneOptions {
    pub fn keep_last(keep_last: usize) -> Self {
        PruneOptions {
            keep_last,
            canister_id: None,
            stale_after: STALE_LOCK,
        }
    }
}

/// What a prune deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub manifests_deleted: Vec<String>,
    pub manifests_kept: usize,
    /// Packs deleted (pages and index objects; a crashed push's pages without an index).
    pub packs_deleted: u64,
    pub bytes_freed: u64,
}

impl Archive {
    /// The archive's manifests (of one canister, or all), oldest first within a canister.
    pub fn list(&self, canister_id: Option<Principal>) -> Result<Vec<Manifest>, ArchiveError> {
        self.runtime.block_on(self.list_manifests(canister_id))
    }

    /// The manifest `name` (`<canister>/<id>`).
    pub fn manifest(&self, name: &str) -> Result<Manifest, ArchiveError> {
        check_name(name)?;
        self.runtime.block_on(self.read_manifest(name))
    }

    /// Deletes all but the newest `keep_last` manifests of each canister, then every pack no
    /// remaining manifest references. Refused while a push runs ([`ArchiveError::PushInProgress`]).
    pub fn prune(&self, options: &PruneOptions) -> Result<PruneReport, ArchiveError> {
        if options.keep_last == 0 {
            return Err(ArchiveError::KeepLastZero);
        }
        self.runtime.block_on(async {
            let lock = self.write_lock("prune").await?;
            let result = match self.live_lock("push", &lock, options.stale_after).await {
                Ok(Some(push)) => Err(ArchiveError::PushInProgress { lock: push }),
                Ok(None) => self.prune_locked(options).await,
                Err(e) => Err(e),
            };
            let _ = self.store.delete(&lock).await;
            result
        })
    }

    async fn prune_locked(&self, options: &PruneOptions) -> Result<PruneReport, ArchiveError> {
        // Mark: every manifest of every canister. One that cannot be read stops the prune
        // before anything is deleted: its packs are unknown.
        let mut by_canister: BTreeMap<String, Vec<Manifest>> = BTreeMap::new();
        for manifest in self.list_manifests(None).await? {
            by_canister
                .entry(manifest.canister_id.clone())
                .or_default()
                .push(manifest);
        }
        let only = options.canister_id.map(|id| id.to_text());
        let mut report = PruneReport::default();
        let mut marked: BTreeSet<String> = BTreeSet::new();
        for (canister, mut manifests) in by_canister {
            manifests.sort_by_key(Manifest::id);
            let drop = if only.as_ref().is_none_or(|c| *c == canister) {
                manifests.len().saturating_sub(options.keep_last)
            } else {
                0
            };
            let (dropped, kept) = manifests.split_at(drop);
            for manifest in dropped {
                let name = manifest.name();
                self.store.delete(&self.manifest_path(&name)).await?;
                report.manifests_deleted.push(name);
            }
            report.manifests_kept = report.manifests_kept.saturating_add(kept.len());
            for manifest in kept {
                marked.extend(manifest.referenced_packs());
            }
        }
        // Sweep: a pack goes whole when no kept manifest names it, pages and index alike (a
        // pages object without an index is a crashed push's). Objects under packs/ that are
        // not named like a pack are not ours and stay.
        let objects: Vec<_> = self
            .store
            .list(Some(&self.path("packs")))
            .try_collect()
            .await?;
        let mut swept: BTreeSet<String> = BTreeSet::new();
        for object in objects {
            let Some((name, kind)) = object
                .location
                .filename()
                .and_then(|f| f.split_once('.'))
                .filter(|(name, kind)| is_hash(name) && matches!(*kind, "pages" | "index"))
            else {
                continue;
            };
            if !marked.contains(name) {
                self.store.delete(&self.pack_path(name, kind)).await?;
                swept.insert(name.to_string());
                report.bytes_freed = report.bytes_freed.saturating_add(object.size);
            }
        }
        report.packs_deleted = swept.len() as u64;
        Ok(report)
    }

    pub(super) async fn list_manifests(
        &self,
        canister_id: Option<Principal>,
    ) -> Result<Vec<Manifest>, ArchiveError> {
        let dir = match canister_id {
            Some(id) => self.path(&format!("manifests/{}", id.to_text())),
            None => self.path("manifests"),
        };
        let root = format!("{}/", self.path("manifests"));
        let mut names = Vec::new();
        let objects: Vec<_> = self.store.list(Some(&dir)).try_collect().await?;
        for object in objects {
            let location = object.location.as_ref();
            let name = location
                .strip_prefix(&root)
                .and_then(|rest| rest.strip_suffix(".json"))
                .unwrap_or(location);
            check_name(name).map_err(|_| ArchiveError::Manifest {
                name: location.to_string(),
                reason: "an object under manifests/ that is not a manifest: remove it".into(),
            })?;
            names.push(name.to_string());
        }
        names.sort();
        futures::stream::iter(names)
            .map(|name| async move { self.read_manifest(&name).await })
            .buffered(super::DEFAULT_CONCURRENCY)
            .try_collect()
            .await
    }

    pub(super) async fn read_manifest(&self, name: &str) -> Result<Manifest, ArchiveError> {
        let path = self.manifest_path(name);
        let found = match self.store.get(&path).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(ArchiveError::ManifestNotFound {
                    name: name.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        if found.meta.size > MAX_MANIFEST_BYTES {
            return Err(ArchiveError::Manifest {
                name: name.to_string(),
                reason: format!(
                    "it has {} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may have",
                    found.meta.size
                ),
            });
        }
        let bytes = found.bytes().await?;
        Manifest::parse(name, &bytes)
    }

    /// Writes a new lock object of `kind` (`push`, `prune`) and returns its path.
    pub(super) async fn write_lock(&self, kind: &str) -> Result<Path, ArchiveError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let nonce = format!("{nanos:x}-{:x}-{:x}", std::process::id(), next_nonce());
        let path = self.path(&format!("locks/{kind}-{nonce}.json"));
        self.refresh_lock(&path).await?;
        Ok(path)
    }

    /// Rewrites a lock, so that its `last_modified` (the store's clock) is now.
    pub(super) async fn refresh_lock(&self, path: &Path) -> Result<(), ArchiveError> {
        let body = format!(
            "{{\"pid\": {}, \"host\": {:?}}}\n",
            std::process::id(),
            std::env::var("HOSTNAME").unwrap_or_default()
        );
        self.put(path, body.into_bytes()).await
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

    /// Writes a push lock, withdrawing and waiting while a live prune lock is there.
    pub(super) fn acquire_push_lock(&self, options: &PushOptions) -> Result<Path, ArchiveError> {
        let start = Instant::now();
        loop {
            let lock = self.runtime.block_on(self.write_lock("push"))?;
            let prune = self
                .runtime
                .block_on(self.live_lock("prune", &lock, options.stale_after));
            match prune {
                Ok(None) => return Ok(lock),
                Ok(Some(prune)) => {
                    self.release_lock(&lock);
                    if start.elapsed() >= options.lock_wait {
                        return Err(ArchiveError::PruneInProgress { lock: prune });
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => {
                    self.release_lock(&lock);
                    return Err(e);
                }
            }
        }
    }

    /// Deletes a lock (best effort: a lock left behind expires).
    pub(super) fn release_lock(&self, lock: &Path) {
        let _ = self.runtime.block_on(self.store.delete(lock));
    }
}

/// A per-process counter, so that two locks written in the same nanosecond differ.
fn next_nonce() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
