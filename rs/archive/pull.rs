//! Pull: a manifest's snapshot back into a dfx-compatible directory. Per pack: its index
//! (checked against the pack's name), then the runs the manifest needs in one coalesced ranged
//! read, each page checked against the index; the whole checked against the snapshot checksum,
//! in a staging directory renamed into place only once verified (`spec/archive.md`).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path as FsPath, PathBuf};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use rayon::prelude::*;

use super::manifest::{Manifest, PAGE_BYTES, PackIndex, check_name};
use super::{Archive, ArchiveError, DEFAULT_CONCURRENCY};
use crate::memory::checksum::{Hash, hex, leaf_hash};
use crate::progress::progress_bar;
use crate::transfer::{ChecksumRecord, REGIONS, SnapshotDir, lock_directory, unhex};

/// Knobs for a pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Packs read at once.
    pub concurrency: usize,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

/// What a pull did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullReport {
    pub manifest: String,
    pub checksum: Hash,
    /// Bytes of pages and indexes downloaded.
    pub bytes_received: u64,
}

/// Pages of one pack that go to one place of one file.
struct Piece {
    /// Index into the destination files.
    file: usize,
    /// Byte offset in that file.
    offset: u64,
    /// Pages `first..first + count` of the pack.
    first: u32,
    count: u32,
}

/// A file the pull writes, and how an error names a place in it.
struct Destination {
    path: PathBuf,
    what: String,
    size: u64,
}

impl Archive {
    /// Pulls manifest `name` (`<canister>/<id>`) into `dir`, which must be absent or an empty
    /// directory. On any failure `dir` is left as it was.
    pub fn pull(
        &self,
        name: &str,
        dir: &FsPath,
        options: &PullOptions,
    ) -> Result<PullReport, ArchiveError> {
        check_name(name)?;
        let manifest = self.runtime.block_on(self.read_manifest(name))?;
        let dir_exists = match fs::symlink_metadata(dir) {
            Ok(m) if m.is_dir() => {
                let mut entries = fs::read_dir(dir).map_err(|e| ArchiveError::io(dir, e))?;
                if entries.next().is_some() {
                    return Err(ArchiveError::DestinationNotEmpty {
                        path: dir.to_path_buf(),
                    });
                }
                true
            }
            Ok(_) => {
                return Err(ArchiveError::DestinationNotEmpty {
                    path: dir.to_path_buf(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(ArchiveError::io(dir, e)),
        };
        let staging = staging_path(dir)?;
        remove_abandoned_staging(dir);
        fs::create_dir(&staging).map_err(|e| ArchiveError::io(&staging, e))?;
        // Locked while this pull runs: a later pull removes it only once its lock is free,
        // that is once this process has ended, however it ended.
        let held = lock_directory(&staging).map_err(|e| ArchiveError::io(&staging, e))?;
        let result = self.pull_into(&manifest, &SnapshotDir::new(&staging), options);
        let result = result.and_then(|report| {
            if dir_exists {
                fs::remove_dir(dir).map_err(|e| ArchiveError::io(dir, e))?;
            }
            fs::rename(&staging, dir).map_err(|e| ArchiveError::io(dir, e))?;
            Ok(report)
        });
        if result.is_err() {
            // The staging directory is ours (a new name): nothing in it is good.
            let _ = fs::remove_dir_all(&staging);
        }
        drop(held);
        result
    }

    fn pull_into(
        &self,
        manifest: &Manifest,
        target: &SnapshotDir,
        options: &PullOptions,
    ) -> Result<PullReport, ArchiveError> {
        let name = manifest.name();
        let metadata = manifest
            .metadata()
            .map_err(|reason| ArchiveError::Manifest {
                name: name.clone(),
                reason,
            })?;
        target.write_metadata(&metadata)?;
        if !manifest.chunks.is_empty() {
            let chunk_dir = target.chunk_store_dir();
            fs::create_dir(&chunk_dir).map_err(|e| ArchiveError::io(&chunk_dir, e))?;
        }
        // The files, sized first: zero runs stay holes.
        let mut destinations = Vec::new();
        for region in REGIONS {
            destinations.push(Destination {
                path: target.region_path(region),
                what: region.name().to_string(),
                size: 0,
            });
        }
        for chunk in &manifest.chunks {
            let hash = unhex(&chunk.hash).ok_or_else(|| ArchiveError::Manifest {
                name: name.clone(),
                reason: format!("chunk {:?} is not hex", chunk.hash),
            })?;
            destinations.push(Destination {
                path: target.chunk_path(&hash),
                what: format!("Wasm chunk {}", chunk.hash),
                size: 0,
            });
        }
        // Which pages of which pack go where, by pack.
        let mut by_pack: BTreeMap<u32, Vec<Piece>> = BTreeMap::new();
        for ((_, pages), (file, destination)) in manifest
            .byte_strings()
            .zip(destinations.iter_mut().enumerate())
        {
            destination.size = pages.size;
            let mut offset = 0u64;
            for run in &pages.runs {
                if let Some(pack) = run.0 {
                    by_pack.entry(pack).or_default().push(Piece {
                        file,
                        offset,
                        first: run.1,
                        count: run.2,
                    });
                }
                offset = offset.saturating_add(u64::from(run.2).saturating_mul(PAGE_BYTES));
            }
        }
        let files = destinations
            .iter()
            .map(|d| {
                let file = File::create(&d.path).map_err(|e| ArchiveError::io(&d.path, e))?;
                file.set_len(d.size)
                    .map_err(|e| ArchiveError::io(&d.path, e))?;
                Ok(file)
            })
            .collect::<Result<Vec<File>, ArchiveError>>()?;

        let bar = progress_bar(manifest.snapshot_bytes(), "pull");
        let mut received = 0u64;
        let fetches = futures::stream::iter(by_pack)
            .map(|(pack, pieces)| {
                let pack_name = manifest.packs.get(pack as usize).cloned();
                let destinations = &destinations;
                async move {
                    let pack_name = pack_name.ok_or_else(|| ArchiveError::Manifest {
                        name: manifest.name(),
                        reason: format!("a run names pack {pack}, not in its table"),
                    })?;
                    self.fetch_pack(&pack_name, pieces, destinations).await
                }
            })
            .buffer_unordered(options.concurrency.max(1));
        self.runtime.block_on(fetches.try_for_each(|fetched| {
            let written = self.write_pack(&destinations, &files, fetched, &bar, &mut received);
            futures::future::ready(written)
        }))?;
        for (file, destination) in files.iter().zip(&destinations) {
            file.sync_all()
                .map_err(|e| ArchiveError::io(&destination.path, e))?;
        }
        bar.finish_and_clear();
        // End to end: the files written, as any reader of the directory will see them.
        let digest = target.digest()?;
        let checksum = digest.checksum;
        if hex(&checksum) != manifest.checksum {
            return Err(ArchiveError::ChecksumMismatch {
                name,
                expected: manifest.checksum.clone(),
                actual: hex(&checksum),
            });
        }
        target.write_checksum_record(&ChecksumRecord {
            checksum: manifest.checksum.clone(),
            canister_id: manifest.canister_id.clone(),
            snapshot_id: manifest.snapshot_id.clone(),
            label: manifest.label.clone(),
            files: Some(digest.files),
        })?;
        Ok(PullReport {
            manifest: name,
            checksum,
            bytes_received: received,
        })
    }

    /// A pack's index (checked against the pack's name) and the pages `pieces` need, in one
    /// ranged read that the store coalesces.
    async fn fetch_pack(
        &self,
        pack: &str,
        pieces: Vec<Piece>,
        destinations: &[Destination],
    ) -> Result<FetchedPack, ArchiveError> {
        // What an error names: the first place this pack is needed.
        let what = pieces
            .first()
            .and_then(|p| {
                let d = destinations.get(p.file)?;
                Some(format!("{} at offset {}", d.what, p.offset))
            })
            .unwrap_or_default();
        let missing = || ArchiveError::MissingPack {
            name: pack.to_string(),
            what: what.clone(),
        };
        let (index, index_bytes) = match self.read_index(pack).await {
            Ok(found) => found,
            Err(IndexError::Missing) => return Err(missing()),
            Err(IndexError::Store(e)) => return Err(e.into()),
            Err(IndexError::Corrupt(reason)) => {
                return Err(ArchiveError::CorruptPack {
                    name: pack.to_string(),
                    what,
                    reason,
                });
            }
        };
        let mut ranges: Vec<Range<u64>> = Vec::with_capacity(pieces.len());
        for piece in &pieces {
            let end = piece.first.saturating_add(piece.count);
            if end as usize > index.pages.len() {
                return Err(ArchiveError::CorruptPack {
                    name: pack.to_string(),
                    what,
                    reason: format!(
                        "the manifest needs page {} but the pack has {}",
                        end.saturating_sub(1),
                        index.pages.len()
                    ),
                });
            }
            ranges.push(
                u64::from(piece.first).saturating_mul(PAGE_BYTES)
                    ..u64::from(end).saturating_mul(PAGE_BYTES),
            );
        }
        // The pages object's size first: a ranged read past the end of a truncated object is
        // not an error every backend reports (S3's coalesced reads would slice out of bounds).
        let pages_path = self.pack_path(pack, "pages");
        let size = match self.store.head(&pages_path).await {
            Ok(meta) => meta.size,
            Err(object_store::Error::NotFound { .. }) => return Err(missing()),
            Err(e) => return Err(e.into()),
        };
        let expected = (index.pages.len() as u64).saturating_mul(PAGE_BYTES);
        if size != expected {
            return Err(ArchiveError::CorruptPack {
                name: pack.to_string(),
                what,
                reason: format!(
                    "its pages object has {size} bytes, its index lists {} pages",
                    index.pages.len()
                ),
            });
        }
        let bytes = match self.store.get_ranges(&pages_path, &ranges).await {
            Ok(bytes) => bytes,
            Err(object_store::Error::NotFound { .. }) => return Err(missing()),
            Err(e) => return Err(e.into()),
        };
        Ok(FetchedPack {
            name: pack.to_string(),
            index,
            index_bytes,
            pieces,
            bytes,
        })
    }

    /// Checks every page of a fetched pack against its index (on every core), then writes it.
    /// A page that does not match stops the pull before it is written.
    fn write_pack(
        &self,
        destinations: &[Destination],
        files: &[File],
        fetched: FetchedPack,
        bar: &indicatif::ProgressBar,
        received: &mut u64,
    ) -> Result<(), ArchiveError> {
        *received = received.saturating_add(fetched.index_bytes);
        for (piece, bytes) in fetched.pieces.iter().zip(&fetched.bytes) {
            let (Some(destination), Some(file)) =
                (destinations.get(piece.file), files.get(piece.file))
            else {
                continue;
            };
            let expected = u64::from(piece.count).saturating_mul(PAGE_BYTES);
            let first = piece.first as usize;
            let bad = bytes
                .par_chunks(PAGE_BYTES as usize)
                .enumerate()
                .find_first(|(i, page)| {
                    let stored = fetched.index.pages.get(first.saturating_add(*i));
                    let page: Option<&[u8; PAGE_BYTES as usize]> = (*page).try_into().ok();
                    match (page, stored) {
                        (Some(page), Some(stored)) => leaf_hash(page) != *stored,
                        _ => true,
                    }
                })
                .map(|(i, _)| i);
            if bytes.len() as u64 != expected || bad.is_some() {
                let i = bad.unwrap_or(0) as u64;
                return Err(ArchiveError::CorruptPack {
                    name: fetched.name.clone(),
                    what: format!(
                        "{} at offset {}",
                        destination.what,
                        piece.offset.saturating_add(i.saturating_mul(PAGE_BYTES))
                    ),
                    reason: if bytes.len() as u64 != expected {
                        format!("{} bytes read where {expected} were asked", bytes.len())
                    } else {
                        format!(
                            "page {} does not hash to its index entry",
                            u64::from(piece.first).saturating_add(i)
                        )
                    },
                });
            }
            // The last page of a byte string is zero-padded in the pack: cut it back.
            let room = destination.size.saturating_sub(piece.offset);
            let len = usize::try_from(room.min(bytes.len() as u64)).unwrap_or(usize::MAX);
            let data = bytes.get(..len).unwrap_or(bytes);
            file.write_all_at(data, piece.offset)
                .map_err(|e| ArchiveError::io(&destination.path, e))?;
            *received = received.saturating_add(bytes.len() as u64);
            bar.inc(data.len() as u64);
        }
        Ok(())
    }

    /// A pack's index object, checked against its name, and its size in bytes.
    pub(super) async fn read_index(&self, pack: &str) -> Result<(PackIndex, u64), IndexError> {
        let found = match self.store.get(&self.pack_path(pack, "index")).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => return Err(IndexError::Missing),
            Err(e) => return Err(IndexError::Store(e)),
        };
        if found.meta.size > PackIndex::MAX_BYTES {
            return Err(IndexError::Corrupt(format!(
                "its index has {} bytes, more than an index may have",
                found.meta.size
            )));
        }
        let bytes = found.bytes().await.map_err(IndexError::Store)?;
        let index = PackIndex::decode(pack, &bytes).map_err(IndexError::Corrupt)?;
        Ok((index, bytes.len() as u64))
    }
}

/// Why a pack index could not be used.
pub(super) enum IndexError {
    Missing,
    Corrupt(String),
    Store(object_store::Error),
}

/// A pack's index and the byte ranges a pull asked of it, one per piece.
struct FetchedPack {
    name: String,
    index: PackIndex,
    index_bytes: u64,
    pieces: Vec<Piece>,
    bytes: Vec<Bytes>,
}

/// The prefix of the staging directories of pulls into `dir`: `.NAME.pull-`.
fn staging_prefix(dir: &FsPath) -> Option<String> {
    Some(format!(".{}.pull-", dir.file_name()?.to_string_lossy()))
}

/// Removes the staging directories that pulls into `dir` left behind when they were killed
/// (a failed pull removes its own): each one whose lock no process holds. One a running pull
/// holds is left alone. Best effort: what cannot be removed stays for the next run.
fn remove_abandoned_staging(dir: &FsPath) {
    let Some(prefix) = staging_prefix(dir) else {
        return;
    };
    let parent = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => FsPath::new("."),
    };
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let is_staging = entry.file_name().to_string_lossy().starts_with(&prefix)
            && entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_staging {
            continue;
        }
        let path = entry.path();
        if let Ok(Some(_lock)) = lock_directory(&path) {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// A new name beside `dir`, for the directory a pull writes before it is verified.
fn staging_path(dir: &FsPath) -> Result<PathBuf, ArchiveError> {
    let prefix = staging_prefix(dir).ok_or_else(|| ArchiveError::DestinationNotEmpty {
        path: dir.to_path_buf(),
    })?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    Ok(dir.with_file_name(format!("{prefix}{}-{nanos:x}", std::process::id())))
}
