//! List and prune: mark and sweep under a prune lease, with the push locks checked before the
//! sweep is planned and again just before anything is deleted (`spec/archive.md`, "Prune, and
//! concurrent pushes"; the locks: `lock.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use candid::Principal;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path;

use super::manifest::{MAX_MANIFEST_BYTES, Manifest, check_name};
use super::{Archive, ArchiveError, Hook, LOCK_REFRESH, STALE_LOCK};

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
    /// How often the prune rewrites its own lock while it runs.
    pub lock_refresh: Duration,
    /// Called once the sweep is planned, just before the push locks are checked again and
    /// anything is deleted: the moment a push that started meanwhile could be hurt. For tests.
    pub before_sweep: Option<Hook>,
}

impl PruneOptions {
    pub fn keep_last(keep_last: usize) -> Self {
        PruneOptions {
            keep_last,
            canister_id: None,
            stale_after: STALE_LOCK,
            lock_refresh: LOCK_REFRESH,
            before_sweep: None,
        }
    }
}

/// What a prune will delete, decided before anything is.
#[derive(Default)]
struct PrunePlan {
    /// Manifest names (`<canister>/<id>`).
    manifests: Vec<String>,
    /// Manifests kept.
    kept: usize,
    /// Pack objects: name, kind (`pages`, `index`), size.
    objects: Vec<(String, &'static str, u64)>,
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
        let lease = self
            .runtime
            .block_on(self.take_lease("prune", options.lock_refresh))?;
        let planned = self.runtime.block_on(async {
            if let Some(push) = self
                .live_lock("push", &lease.path, options.stale_after)
                .await?
            {
                return Err(ArchiveError::PushInProgress { lock: push });
            }
            self.plan_prune(options).await
        });
        if let (Ok(_), Some(hook)) = (&planned, &options.before_sweep) {
            (hook.0)();
        }
        let result = planned.and_then(|plan| {
            // Just before deleting: this prune's lock was fresh all along (so a push that
            // started since withdrew), and no push lock appeared meanwhile.
            lease.check(options.stale_after)?;
            self.runtime.block_on(async {
                if let Some(push) = self
                    .live_lock("push", &lease.path, options.stale_after)
                    .await?
                {
                    return Err(ArchiveError::PushInProgress { lock: push });
                }
                self.sweep(plan).await
            })
        });
        self.release(lease);
        result
    }

    /// Mark: every manifest of every canister, and which manifests and pack objects go. One
    /// manifest that cannot be read stops the prune before anything is deleted: its packs are
    /// unknown. Nothing is deleted here.
    async fn plan_prune(&self, options: &PruneOptions) -> Result<PrunePlan, ArchiveError> {
        let mut by_canister: BTreeMap<String, Vec<Manifest>> = BTreeMap::new();
        for manifest in self.list_manifests(None).await? {
            by_canister
                .entry(manifest.canister_id.clone())
                .or_default()
                .push(manifest);
        }
        let only = options.canister_id.map(|id| id.to_text());
        let mut plan = PrunePlan::default();
        let mut marked: BTreeSet<String> = BTreeSet::new();
        for (canister, mut manifests) in by_canister {
            manifests.sort_by_key(Manifest::id);
            let drop = if only.as_ref().is_none_or(|c| *c == canister) {
                manifests.len().saturating_sub(options.keep_last)
            } else {
                0
            };
            let (dropped, kept) = manifests.split_at(drop);
            plan.manifests.extend(dropped.iter().map(Manifest::name));
            plan.kept = plan.kept.saturating_add(kept.len());
            for manifest in kept {
                marked.extend(manifest.referenced_packs());
            }
        }
        // A pack goes whole when no kept manifest names it, pages and index alike (a pages
        // object without an index is a crashed push's). Objects under packs/ that are not
        // named like a pack are not ours and stay.
        for (name, objects) in self.list_packs().await? {
            if marked.contains(&name) {
                continue;
            }
            for (kind, size) in [("index", objects.index), ("pages", objects.pages)] {
                if let Some(size) = size {
                    plan.objects.push((name.clone(), kind, size));
                }
            }
        }
        Ok(plan)
    }

    /// Sweep: deletes what the plan names, manifests first.
    async fn sweep(&self, plan: PrunePlan) -> Result<PruneReport, ArchiveError> {
        let mut report = PruneReport {
            manifests_kept: plan.kept,
            ..PruneReport::default()
        };
        for name in plan.manifests {
            self.store.delete(&self.manifest_path(&name)).await?;
            report.manifests_deleted.push(name);
        }
        let mut swept: BTreeSet<String> = BTreeSet::new();
        for (name, kind, size) in plan.objects {
            self.store.delete(&self.pack_path(&name, kind)).await?;
            report.bytes_freed = report.bytes_freed.saturating_add(size);
            swept.insert(name);
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
        let mut names = Vec::new();
        let objects: Vec<_> = self.store.list(Some(&dir)).try_collect().await?;
        for object in objects {
            let name = self.manifest_name(&object.location).map_err(|location| {
                ArchiveError::Manifest {
                    name: location,
                    reason: "an object under manifests/ that is not a manifest: remove it".into(),
                }
            })?;
            names.push(name);
        }
        names.sort();
        futures::stream::iter(names)
            .map(|name| async move { self.read_manifest(&name).await })
            .buffered(super::DEFAULT_CONCURRENCY)
            .try_collect()
            .await
    }

    /// The manifest name (`<canister>/<id>`) an object under `manifests/` is stored as, or the
    /// object's path if it is not named like a manifest.
    pub(super) fn manifest_name(&self, location: &Path) -> Result<String, String> {
        let root = format!("{}/", self.path("manifests"));
        location
            .as_ref()
            .strip_prefix(&root)
            .and_then(|rest| rest.strip_suffix(".json"))
            .filter(|name| check_name(name).is_ok())
            .map(str::to_string)
            .ok_or_else(|| location.to_string())
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
}
