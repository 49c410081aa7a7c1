//! Pull: a manifest's snapshot back into a dfx-compatible directory, every block checked
//! against its name, the whole against the snapshot checksum, in a staging directory renamed
//! into place only once verified (`spec/archive.md`).

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path as FsPath, PathBuf};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;

use super::manifest::{BLOCK_BYTES, Manifest, check_name};
use super::{Archive, ArchiveError, DEFAULT_CONCURRENCY};
use crate::memory::checksum::{Hash, hex, sha256};
use crate::progress::progress_bar;
use crate::snapshots::SnapshotRegion;
use crate::transfer::{ChecksumRecord, REGIONS, SnapshotDir, unhex};

/// Knobs for a pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Blocks downloaded at once.
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
    /// Bytes of blocks downloaded.
    pub bytes_received: u64,
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
        fs::create_dir(&staging).map_err(|e| ArchiveError::io(&staging, e))?;
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
        let bar = progress_bar(manifest.snapshot_bytes(), "pull");
        let mut received = 0u64;
        for region in REGIONS {
            let blocks = match region {
                SnapshotRegion::WasmModule => &manifest.wasm_module,
                SnapshotRegion::WasmMemory => &manifest.wasm_memory,
                SnapshotRegion::StableMemory => &manifest.stable_memory,
            };
            let path = target.region_path(region);
            let mut file = File::create(&path).map_err(|e| ArchiveError::io(&path, e))?;
            // Zero blocks are not stored: the file is sized first, and they stay holes.
            file.set_len(blocks.size)
                .map_err(|e| ArchiveError::io(&path, e))?;
            let wanted = blocks.blocks.iter().enumerate().filter_map(|(i, b)| {
                b.as_ref()
                    .map(|b| ((i as u64).saturating_mul(BLOCK_BYTES), b.clone()))
            });
            let size = blocks.size;
            let fetches = futures::stream::iter(wanted)
                .map(|(offset, block)| {
                    let len = size.saturating_sub(offset).min(BLOCK_BYTES);
                    let what = format!("{} at offset {offset}", region.name());
                    async move {
                        let bytes = self.fetch_block(&block, &what, Some(len)).await?;
                        Ok::<_, ArchiveError>((offset, bytes))
                    }
                })
                .buffered(options.concurrency.max(1));
            self.runtime
                .block_on(fetches.try_for_each(|(offset, bytes)| {
                    let written = file
                        .seek(SeekFrom::Start(offset))
                        .and_then(|_| file.write_all(&bytes))
                        .map_err(|e| ArchiveError::io(&path, e));
                    received = received.saturating_add(bytes.len() as u64);
                    bar.inc(bytes.len() as u64);
                    futures::future::ready(written)
                }))?;
            file.sync_all().map_err(|e| ArchiveError::io(&path, e))?;
            bar.inc(
                (blocks.blocks.iter().filter(|b| b.is_none()).count() as u64)
                    .saturating_mul(BLOCK_BYTES),
            );
        }
        if !manifest.chunks.is_empty() {
            let chunk_dir = target.chunk_store_dir();
            fs::create_dir(&chunk_dir).map_err(|e| ArchiveError::io(&chunk_dir, e))?;
        }
        for chunk in &manifest.chunks {
            let bytes = self
                .runtime
                .block_on(self.fetch_block(chunk, "a Wasm chunk", None))?;
            received = received.saturating_add(bytes.len() as u64);
            let hash = unhex(chunk).ok_or_else(|| ArchiveError::Manifest {
                name: name.clone(),
                reason: format!("chunk {chunk:?} is not hex"),
            })?;
            let path = target.chunk_path(&hash);
            fs::write(&path, &bytes).map_err(|e| ArchiveError::io(&path, e))?;
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

    /// A block's bytes, checked against its name (and its length, when known).
    async fn fetch_block(
        &self,
        name: &str,
        what: &str,
        len: Option<u64>,
    ) -> Result<Bytes, ArchiveError> {
        let found = match self.store.get(&self.block_path(name)).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(ArchiveError::MissingBlock {
                    name: name.to_string(),
                    what: what.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let corrupt = |actual: String| ArchiveError::CorruptBlock {
            name: name.to_string(),
            what: what.to_string(),
            actual,
        };
        if found.meta.size > BLOCK_BYTES || len.is_some_and(|len| len != found.meta.size) {
            return Err(corrupt(format!("(it has {} bytes)", found.meta.size)));
        }
        let bytes = found.bytes().await?;
        let actual = hex(&sha256(&bytes));
        if actual != name || len.is_some_and(|len| len != bytes.len() as u64) {
            return Err(corrupt(actual));
        }
        Ok(bytes)
    }
}

/// A new name beside `dir`, for the directory a pull writes before it is verified.
fn staging_path(dir: &FsPath) -> Result<PathBuf, ArchiveError> {
    let file_name = dir
        .file_name()
        .ok_or_else(|| ArchiveError::DestinationNotEmpty {
            path: dir.to_path_buf(),
        })?
        .to_string_lossy()
        .into_owned();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    Ok(dir.with_file_name(format!(
        ".{file_name}.pull-{}-{nanos:x}",
        std::process::id()
    )))
}
