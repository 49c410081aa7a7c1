//! Whether packs are whole: the cheap check a push makes of every pack it relies on (the sizes
//! the store's listing carries: a pages object of exactly `4096 × count` bytes beside an index
//! of `12 + 32 × count`), the thorough one it makes on request and `archive verify` always
//! makes (the index read and checked against its name, every page hashed and checked against
//! the index), and `archive verify` itself: every manifest, every pack it names.
//!
//! Cost: the cheap check is one listing of `packs/` for the whole archive; the thorough one
//! reads each pack it checks once (4 MiB by default) and hashes its pages on every core.

use std::collections::{BTreeMap, BTreeSet};

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use rayon::prelude::*;

use super::manifest::{MAX_PACK_PAGES, PAGE_BYTES, PackIndex, check_name, is_hash};
use super::pull::IndexError;
use super::{Archive, ArchiveError, DEFAULT_CONCURRENCY};
use crate::memory::checksum::leaf_hash;

/// The two objects of a pack as the store lists them: their sizes, `None` when absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct PackObjects {
    pub index: Option<u64>,
    pub pages: Option<u64>,
}

impl PackObjects {
    /// The page count the sizes agree on, or why they do not: both objects present, the index
    /// the size of `count` hashes, the pages object `count` pages.
    pub fn check_sizes(&self) -> Result<u32, String> {
        let index = self.index.ok_or("its index object is missing")?;
        let pages = self.pages.ok_or("its pages object is missing")?;
        let count = index
            .checked_sub(12)
            .filter(|hashes| hashes.is_multiple_of(32))
            .map(|hashes| hashes / 32)
            .filter(|count| (1..=u64::from(MAX_PACK_PAGES)).contains(count))
            .ok_or_else(|| format!("its index has {index} bytes, not the size of an index"))?;
        if pages != count.saturating_mul(PAGE_BYTES) {
            return Err(format!(
                "its pages object has {pages} bytes, its index lists {count} pages \
                 ({} bytes)",
                count.saturating_mul(PAGE_BYTES)
            ));
        }
        u32::try_from(count).map_err(|_| "its index lists too many pages".into())
    }
}

/// What a check found of one pack.
pub(super) enum PackState {
    /// Its index (checked against the pack's name) and the bytes read to check it.
    Whole {
        index: PackIndex,
        bytes_read: u64,
    },
    Damaged(String),
}

/// One listing of `packs/`: each pack's objects and their sizes, by pack name.
pub(super) type PackListing = BTreeMap<String, PackObjects>;

/// What `archive verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Manifests read.
    pub manifests: usize,
    /// Packs checked (each once, however many manifests name it).
    pub packs: usize,
    /// Bytes of pack indexes and pages read.
    pub bytes_read: u64,
    /// What is missing or damaged, by object.
    pub damage: Vec<Damage>,
}

impl VerifyReport {
    /// Nothing missing or damaged.
    pub fn is_whole(&self) -> bool {
        self.damage.is_empty()
    }
}

/// A missing or damaged object, and the manifests that cannot be pulled because of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// `packs/<name>` or `manifests/<canister>/<id>.json`.
    pub object: String,
    pub reason: String,
    /// The manifests that need it (for a manifest: itself).
    pub manifests: Vec<String>,
}

impl Archive {
    /// Every pack of the archive by its objects' sizes, from one listing of `packs/`. Objects
    /// not named like a pack's are not ours and left out.
    pub(super) async fn list_packs(&self) -> Result<PackListing, ArchiveError> {
        let objects: Vec<_> = self
            .store
            .list(Some(&self.path("packs")))
            .try_collect()
            .await?;
        let mut packs = PackListing::new();
        for object in objects {
            let Some((name, kind)) = object
                .location
                .filename()
                .and_then(|f| f.split_once('.'))
                .filter(|(name, _)| is_hash(name))
            else {
                continue;
            };
            let entry = packs.entry(name.to_string()).or_default();
            match kind {
                "index" => entry.index = Some(object.size),
                "pages" => entry.pages = Some(object.size),
                _ => {}
            }
        }
        Ok(packs)
    }

    /// Checks one pack: its objects' sizes (from `listing`), its index against its name, and,
    /// if `hash_pages`, every page against the index. A store error (not an absence) is an
    /// error: it says nothing about the pack.
    pub(super) async fn check_pack(
        &self,
        name: &str,
        listing: &PackListing,
        hash_pages: bool,
    ) -> Result<PackState, ArchiveError> {
        let objects = listing.get(name).copied().unwrap_or_default();
        if let Err(reason) = objects.check_sizes() {
            return Ok(PackState::Damaged(reason));
        }
        let (index, mut bytes_read) = match self.read_index(name).await {
            Ok(found) => found,
            Err(IndexError::Missing) => {
                return Ok(PackState::Damaged("its index object is missing".into()));
            }
            Err(IndexError::Corrupt(reason)) => return Ok(PackState::Damaged(reason)),
            Err(IndexError::Store(e)) => return Err(e.into()),
        };
        if hash_pages {
            let pages = match self.store.get(&self.pack_path(name, "pages")).await {
                Ok(found) => found.bytes().await?,
                Err(object_store::Error::NotFound { .. }) => {
                    return Ok(PackState::Damaged("its pages object is missing".into()));
                }
                Err(e) => return Err(e.into()),
            };
            bytes_read = bytes_read.saturating_add(pages.len() as u64);
            let expected = (index.pages.len() as u64).saturating_mul(PAGE_BYTES);
            if pages.len() as u64 != expected {
                return Ok(PackState::Damaged(format!(
                    "its pages object has {} bytes, its index lists {} pages",
                    pages.len(),
                    index.pages.len()
                )));
            }
            let bad = pages
                .par_chunks(PAGE_BYTES as usize)
                .zip(index.pages.par_iter())
                .position_first(|(page, stored)| {
                    <&[u8; PAGE_BYTES as usize]>::try_from(page)
                        .map_or(true, |page| leaf_hash(page) != *stored)
                });
            if let Some(page) = bad {
                return Ok(PackState::Damaged(format!(
                    "page {page} does not hash to its index entry"
                )));
            }
        }
        Ok(PackState::Whole { index, bytes_read })
    }

    /// The packs of `names` that are not whole ([`Self::check_pack`]), and the bytes read to
    /// find out.
    pub(super) async fn damaged_packs(
        &self,
        names: impl IntoIterator<Item = String>,
        listing: &PackListing,
        hash_pages: bool,
    ) -> Result<(BTreeSet<String>, u64), ArchiveError> {
        let states: Vec<(String, PackState)> = futures::stream::iter(names)
            .map(|name| async move {
                let state = self.check_pack(&name, listing, hash_pages).await?;
                Ok::<_, ArchiveError>((name, state))
            })
            .buffered(DEFAULT_CONCURRENCY)
            .try_collect()
            .await?;
        let mut damaged = BTreeSet::new();
        let mut read = 0u64;
        for (name, state) in states {
            match state {
                PackState::Whole { bytes_read, .. } => read = read.saturating_add(bytes_read),
                PackState::Damaged(_) => {
                    damaged.insert(name);
                }
            }
        }
        Ok((damaged, read))
    }

    /// Checks the archive end to end (`archive verify URL [NAME]`): every manifest (or the one
    /// named) read and validated, and every pack they name: both objects present, their sizes
    /// in agreement, the index hashing to the pack's name, every page hashing to its index
    /// entry, and every run inside its pack. What is missing or damaged is reported by object,
    /// with the manifests it breaks; only a store error (or an unknown `name`) is an `Err`.
    pub fn verify(&self, name: Option<&str>) -> Result<VerifyReport, ArchiveError> {
        self.runtime.block_on(self.verify_async(name))
    }

    async fn verify_async(&self, name: Option<&str>) -> Result<VerifyReport, ArchiveError> {
        let mut report = VerifyReport::default();
        let names = match name {
            Some(name) => {
                check_name(name)?;
                vec![name.to_string()]
            }
            None => {
                let objects: Vec<_> = self
                    .store
                    .list(Some(&self.path("manifests")))
                    .try_collect()
                    .await?;
                let mut names = Vec::new();
                for object in objects {
                    match self.manifest_name(&object.location) {
                        Ok(name) => names.push(name),
                        Err(location) => report.damage.push(Damage {
                            object: location,
                            reason: "an object under manifests/ that is not a manifest".into(),
                            manifests: Vec::new(),
                        }),
                    }
                }
                names.sort();
                names
            }
        };
        // Which packs each manifest needs, and how many of their pages.
        let mut needed: BTreeMap<String, (u32, Vec<String>)> = BTreeMap::new();
        for manifest_name in names {
            let manifest = match self.read_manifest(&manifest_name).await {
                Ok(manifest) => manifest,
                Err(ArchiveError::Manifest { reason, .. }) => {
                    report.damage.push(Damage {
                        object: format!("manifests/{manifest_name}.json"),
                        reason,
                        manifests: vec![manifest_name],
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            report.manifests = report.manifests.saturating_add(1);
            for (_, pages) in manifest.byte_strings() {
                for run in &pages.runs {
                    let Some(pack) = run.0.and_then(|p| manifest.packs.get(p as usize)) else {
                        continue;
                    };
                    let entry = needed.entry(pack.clone()).or_default();
                    entry.0 = entry.0.max(run.1.saturating_add(run.2));
                    if entry.1.last() != Some(&manifest_name) {
                        entry.1.push(manifest_name.clone());
                    }
                }
            }
        }
        let listing = self.list_packs().await?;
        let states: Vec<(String, PackState)> = futures::stream::iter(needed.keys().cloned())
            .map(|pack| {
                let listing = &listing;
                async move {
                    let state = self.check_pack(&pack, listing, true).await?;
                    Ok::<_, ArchiveError>((pack, state))
                }
            })
            .buffered(DEFAULT_CONCURRENCY)
            .try_collect()
            .await?;
        for (pack, state) in states {
            report.packs = report.packs.saturating_add(1);
            let (pages_needed, manifests) = needed.remove(&pack).unwrap_or_default();
            let reason = match state {
                PackState::Damaged(reason) => reason,
                PackState::Whole { index, bytes_read } => {
                    report.bytes_read = report.bytes_read.saturating_add(bytes_read);
                    if pages_needed as usize <= index.pages.len() {
                        continue;
                    }
                    format!(
                        "it holds {} pages, a manifest needs {pages_needed}",
                        index.pages.len()
                    )
                }
            };
            report.damage.push(Damage {
                object: format!("packs/{pack}"),
                reason,
                manifests,
            });
        }
        Ok(report)
    }
}
