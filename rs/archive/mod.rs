//! Off-chain archives of snapshots in object storage (S3 and compatible stores, local files,
//! memory), content-addressed and deduplicated by page. Format and guarantees:
//! `spec/archive.md` (format v2).
//!
//! An archive is four kinds of object under one prefix of one store:
//!
//! ```text
//! PREFIX/packs/<name>.pages                     up to 4,096 pages of 4 KiB (1,024 by default: 4 MiB)
//! PREFIX/packs/<name>.index                     the leaf hash of each; <name> = SHA-256 of this object
//! PREFIX/manifests/<canister>/<manifest>.json   a snapshot: its metadata and runs of pack pages
//! PREFIX/locks/<push|prune>-<nonce>.json        who is pushing or pruning right now
//! ```
//!
//! **Why pages in packs.** The unit of deduplication is the 4 KiB page, the leaf of the
//! checksum's Merkle tree (`spec/checksum.md`): a canister that changed 1% of its pages, even
//! one page in a hundred, sends 1% again (plus 32 bytes of index and a run or two of manifest
//! per changed stretch). 4 KiB objects would be 262,144 per GiB; packs of 1,024 new pages make
//! 256 packs, 512 objects per GiB, under the 2,000 an object store handles well. A manifest
//! names pages as runs `[pack, first, count]`, so a fresh snapshot is one run per pack and a
//! pull reads each pack's runs in one ranged, coalesced GET. Zero pages are runs of `null`:
//! not stored.
//!
//! **What a crash leaves behind.** A push writes a pack's pages before its index, and its
//! manifest last, each in one `put` (atomic in every `object_store` backend): a crash leaves
//! packs no manifest references (or a pages object without an index), never a manifest
//! without its pages, nor an index naming pages not stored. Running the push again reads the
//! indexes and skips the pages stored. A pull writes into a new staging directory beside the
//! destination, checks every page against its pack's index and every index against its name,
//! verifies the snapshot checksum of what it wrote end to end, and only then renames it; the
//! next pull into the same place removes a killed pull's staging directory.
//!
//! **Prune against a concurrent push: mark and sweep under lock objects.** A push writes
//! `locks/push-*` before it reads the indexes and deletes it after its manifest; a prune writes
//! `locks/prune-*`, then lists the locks and stops if a live push lock is there; a push that
//! finds a live prune lock after writing its own withdraws and waits. Whichever of the two lists
//! second sees the other's lock (S3 and the other backends list what was written before), so a
//! sweep never runs while a push relies on packs it found present. A lock not refreshed for
//! [`STALE_LOCK`] (by the store's clock: its `last_modified`) is a crashed client's and ignored;
//! a push or prune rewrites its lock every [`LOCK_REFRESH`] for its whole run (`lock.rs`), and
//! a prune checks the push locks again just before it deletes anything. A prune keeps a pack
//! whole while any manifest names any of its pages (no repacking: see `spec/archive.md` for
//! the trade-off).
//!
//! **Nothing stored is trusted unchecked.** A push uses a pack only if it is whole (`verify.rs`:
//! its objects' sizes, from one listing; on request its pages' hashes), and repairs an archived
//! snapshot whose packs are not; `archive verify` checks every manifest and pack end to end.
//!
//! The library's API is synchronous: each [`Archive`] owns a small tokio runtime and blocks on
//! it. Nothing here touches replicated state; the only clocks read are for lock refreshes,
//! temporary names and the store's own timestamps.

#![forbid(unsafe_code)]

mod lock;
mod manifest;
mod prune;
mod pull;
mod push;
mod verify;

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use candid::Principal;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::client::ManagementClient;
use crate::transfer::{TransferError, TransferOptions, download_canister_snapshot};

pub use manifest::{
    ChunkPages, DEFAULT_PACK_PAGES, MANIFEST_FORMAT, MAX_MANIFEST_BYTES, MAX_PACK_PAGES, Manifest,
    PAGE_BYTES, PackIndex, PageRuns, Run,
};
pub use prune::{PruneOptions, PruneReport};
pub use pull::{PullOptions, PullReport};
pub use push::{PushOptions, PushReport};
pub use verify::{Damage, VerifyReport};

/// A lock whose object was not rewritten for this long belongs to a client that crashed.
pub const STALE_LOCK: Duration = Duration::from_secs(15 * 60);

/// How often a running push or prune rewrites its lock, on a thread of its own, for the whole
/// run.
pub const LOCK_REFRESH: Duration = Duration::from_secs(60);

/// A callback at a moment of a run that a concurrent client could hurt (tests).
#[derive(Clone)]
pub struct Hook(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

/// Objects in flight at once, each way: enough to hide a store's per-request latency.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// Why an archive operation failed. Each variant names the object, file or step.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(
        "{url} is not an archive URL this build reads ({reason}): use s3://BUCKET[/PREFIX], \
         file:///PATH (or a plain path) or memory://"
    )]
    Url { url: String, reason: String },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "pack {name} (needed for {what}) is missing from the archive: the archive lost data; \
         nothing was written to the destination. Push the snapshot again if you still have it: \
         the push stores the missing pages again (`archive verify` lists what else needs it)"
    )]
    MissingPack { name: String, what: String },
    #[error(
        "pack {name} (needed for {what}) is corrupted in the archive: {reason}; nothing was \
         written to the destination. Push the snapshot again with `archive push --verify` if \
         you still have it: the push stores the damaged pages again (`archive verify` lists \
         what else needs it)"
    )]
    CorruptPack {
        name: String,
        what: String,
        reason: String,
    },
    #[error("manifest {name} is not valid: {reason}")]
    Manifest { name: String, reason: String },
    #[error("no manifest {name} in the archive: `archive list URL` shows the manifests")]
    ManifestNotFound { name: String },
    #[error(
        "{dir}: checksum.json records {recorded}, but the files hash to {computed}: the \
         directory is corrupted or edited; delete checksum.json to archive deliberate edits"
    )]
    DirectoryChecksum {
        dir: PathBuf,
        recorded: String,
        computed: String,
    },
    #[error(
        "manifest {name}: the pulled files hash to {actual}, not to the snapshot checksum \
         {expected} the manifest records; nothing was written to the destination"
    )]
    ChecksumMismatch {
        name: String,
        expected: String,
        actual: String,
    },
    #[error(
        "{dir} has no checksum.json naming its canister (a directory written by another tool): \
         pass the canister id (`--canister ID`)"
    )]
    NoCanisterId { dir: PathBuf },
    #[error(
        "{path} exists and is not an empty directory: pull into a new or empty directory (a \
         pull never overwrites anything)"
    )]
    DestinationNotEmpty { path: PathBuf },
    #[error(
        "a prune is running on this archive ({lock}); the push waited and gave up: run it again \
         later, or delete the lock object if its prune crashed"
    )]
    PruneInProgress { lock: String },
    #[error(
        "a push is running on this archive ({lock}), and it may rely on packs no manifest \
         references yet: prune again when it has finished (a crashed push's lock expires after \
         15 minutes)"
    )]
    PushInProgress { lock: String },
    #[error(
        "the lock {lock} was not rewritten for {idle:?} ({reason}): another client may have \
         taken it for a crashed one's, so this run stopped before writing or deleting \
         anything; run it again"
    )]
    LockLapsed {
        lock: String,
        idle: Duration,
        reason: String,
    },
    #[error(
        "the push stopped after {packs} new packs as asked, before its manifest: run it again \
         to resume (pages already stored are skipped)"
    )]
    Interrupted { packs: u64 },
    #[error(
        "manifest {name} would have {bytes} bytes, more than the {MAX_MANIFEST_BYTES} a reader \
         accepts: the snapshot's pages are too scattered across packs"
    )]
    ManifestTooLarge { name: String, bytes: u64 },
    #[error("--keep-last must be at least 1: to delete every snapshot, delete the archive")]
    KeepLastZero,
    #[error("{what} {text:?} is not valid: {reason}")]
    Argument {
        what: &'static str,
        text: String,
        reason: String,
    },
}

impl ArchiveError {
    fn io(path: &FsPath, source: std::io::Error) -> Self {
        ArchiveError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// An archive: a prefix in an object store, and the runtime its synchronous API blocks on.
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Archive({} / {:?})", self.store, self.prefix)
    }
}

impl Archive {
    /// Opens the archive a URL names: `s3://BUCKET[/PREFIX]` (credentials, region and endpoint
    /// from the environment, as `object_store`'s `AmazonS3Builder::from_env` reads them:
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`, …),
    /// `file:///PATH` or a plain path (a directory, created if absent), or `memory://` (lives as
    /// long as this value).
    pub fn open(url: &str) -> Result<Archive, ArchiveError> {
        let bad = |reason: String| ArchiveError::Url {
            url: url.to_string(),
            reason,
        };
        if url == "memory://" || url == "memory:" {
            return Archive::with_store(Arc::new(object_store::memory::InMemory::new()), "");
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            install_tls_provider();
            let store = object_store::aws::AmazonS3Builder::from_env()
                .with_url(url)
                .build()
                .map_err(|e| bad(e.to_string()))?;
            let prefix = rest.split_once('/').map(|(_, p)| p).unwrap_or("");
            return Archive::with_store(Arc::new(store), prefix);
        }
        let path = match url.split_once("://") {
            Some(("file", path)) => PathBuf::from(path),
            Some((scheme, _)) => return Err(bad(format!("no backend for {scheme}://"))),
            None => PathBuf::from(url),
        };
        std::fs::create_dir_all(&path).map_err(|e| ArchiveError::io(&path, e))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(&path)
            .map_err(|e| bad(e.to_string()))?;
        Archive::with_store(Arc::new(store), "")
    }

    /// An archive under `prefix` of a store the caller built (tests, custom configuration).
    pub fn with_store(store: Arc<dyn ObjectStore>, prefix: &str) -> Result<Archive, ArchiveError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| ArchiveError::io(FsPath::new("tokio runtime"), e))?;
        Ok(Archive {
            store,
            prefix: prefix.trim_matches('/').to_string(),
            runtime,
        })
    }

    /// The store's path of `relative` (`packs/…`, `manifests/…`, `locks/…`).
    fn path(&self, relative: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(relative)
        } else {
            Path::from(format!("{}/{relative}", self.prefix))
        }
    }

    /// `packs/<name>.<kind>`, `kind` being `pages` or `index`.
    fn pack_path(&self, name: &str, kind: &str) -> Path {
        self.path(&format!("packs/{name}.{kind}"))
    }

    fn manifest_path(&self, name: &str) -> Path {
        self.path(&format!("manifests/{name}.json"))
    }

    /// Every object of the archive, with its size: what the archive costs to keep.
    pub fn usage(&self) -> Result<ArchiveUsage, ArchiveError> {
        let prefix = (!self.prefix.is_empty()).then(|| Path::from(self.prefix.as_str()));
        let objects: Vec<_> = self
            .runtime
            .block_on(self.store.list(prefix.as_ref()).try_collect::<Vec<_>>())?;
        let mut usage = ArchiveUsage::default();
        for object in objects {
            usage.objects = usage.objects.saturating_add(1);
            usage.bytes = usage.bytes.saturating_add(object.size);
            if object
                .location
                .filename()
                .is_some_and(|f| f.ends_with(".index"))
            {
                usage.packs = usage.packs.saturating_add(1);
            }
        }
        Ok(usage)
    }

    /// Writes `bytes` at `path` (one atomic `put`).
    async fn put(&self, path: &Path, bytes: Vec<u8>) -> Result<(), ArchiveError> {
        self.store.put(path, PutPayload::from(bytes)).await?;
        Ok(())
    }
}

/// Makes `ring` the process's TLS provider, once (later calls, and a provider the embedding
/// program installed first, are left alone). The S3 client's `reqwest` is built with rustls
/// but without a bundled provider, so that `aws-lc-sys`, a C library of minutes to compile, is
/// not in the build; without a provider it could not build its client. [`Archive::open`]
/// calls this; a program that builds its own S3 store calls it before.
pub fn install_tls_provider() {
    // `Err` means a provider is installed already: that one serves.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What an archive holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveUsage {
    /// Objects of every kind.
    pub objects: u64,
    /// Packs with an index (a pages object without one is a crashed push's, until a prune).
    pub packs: u64,
    /// Bytes of every object.
    pub bytes: u64,
}

/// Downloads a snapshot with the transfer client into a temporary directory, pushes it into
/// `archive`, and removes the directory: `canister snapshot archive CANISTER ID --to URL`.
pub fn archive_snapshot<C: ManagementClient + ?Sized>(
    client: &mut C,
    canister_id: Principal,
    sender: Principal,
    snapshot_id: Vec<u8>,
    archive: &Archive,
    options: &PushOptions,
) -> Result<PushReport, ArchiveError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let tmp = std::env::temp_dir().join(format!(
        "canister-snapshots-archive-{}-{nanos}",
        std::process::id()
    ));
    let result = download_canister_snapshot(
        client,
        canister_id,
        sender,
        snapshot_id,
        &tmp,
        &TransferOptions::default(),
    )
    .map_err(ArchiveError::from)
    .and_then(|()| {
        archive.push(
            &tmp,
            &PushOptions {
                canister_id: Some(canister_id),
                ..options.clone()
            },
        )
    });
    // The directory is ours (a new name under the temporary directory): remove it either way.
    let _ = std::fs::remove_dir_all(&tmp);
    result
}
