//! Archives in object storage (`spec/archive.md`): push, pull, list, prune, crashes and a
//! concurrent prune, each against the in-memory, local-file and S3 backends. The S3 backend is
//! `s3s-fs` served in-process on 127.0.0.1 and reached through `object_store`'s S3 client:
//! nothing leaves the machine.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use canister_snapshots::StateMachine;
use canister_snapshots::archive::{
    Archive, ArchiveError, Hook, PruneOptions, PullOptions, PushOptions, archive_snapshot,
};
use canister_snapshots::memory::checksum::hex;
use canister_snapshots::transfer::SnapshotDir;
use common::TestCanister;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

/// An object store for the tests, and what keeps it alive.
struct Backend {
    store: Arc<dyn ObjectStore>,
    _dir: Option<tempfile::TempDir>,
    _server: Option<S3Server>,
}

impl Backend {
    fn memory() -> Self {
        Backend {
            store: Arc::new(object_store::memory::InMemory::new()),
            _dir: None,
            _server: None,
        }
    }

    fn local() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        Backend {
            store: Arc::new(store),
            _dir: Some(dir),
            _server: None,
        }
    }

    fn s3() -> Self {
        let server = S3Server::start();
        canister_snapshots::archive::install_tls_provider();
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(format!("http://{}", server.addr))
            .with_allow_http(true)
            .with_bucket_name("archive")
            .with_region("us-east-1")
            .with_access_key_id(S3Server::ACCESS_KEY)
            .with_secret_access_key(S3Server::SECRET_KEY)
            .build()
            .unwrap();
        Backend {
            store: Arc::new(store),
            _dir: None,
            _server: Some(server),
        }
    }

    /// An archive client of this store (several may share one, as several machines would).
    fn archive(&self) -> Archive {
        Archive::with_store(self.store.clone(), "team/archive").unwrap()
    }

    fn block_path(&self, name: &str) -> object_store::path::Path {
        object_store::path::Path::from(format!("team/archive/blocks/{name}"))
    }

    fn block_exists(&self, name: &str) -> bool {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(self.store.head(&self.block_path(name)))
            .is_ok()
    }

    fn put_block(&self, name: &str, bytes: Vec<u8>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(
                self.store
                    .put(&self.block_path(name), PutPayload::from(bytes)),
            )
            .unwrap();
    }

    fn delete_block(&self, name: &str) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(self.store.delete(&self.block_path(name)))
            .unwrap();
    }
}

/// `s3s-fs` (an S3 server over a directory) on an ephemeral port of 127.0.0.1, served by its
/// own runtime thread until dropped.
struct S3Server {
    addr: std::net::SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    _root: tempfile::TempDir,
}

impl S3Server {
    const ACCESS_KEY: &'static str = "test-access-key";
    const SECRET_KEY: &'static str = "test-secret-key";

    fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("archive")).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let service = {
            let mut builder = s3s::service::S3ServiceBuilder::new(fs);
            builder.set_auth(s3s::auth::SimpleAuth::from_single(
                Self::ACCESS_KEY,
                Self::SECRET_KEY,
            ));
            builder.build()
        };
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move {
            let http =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            while let Ok((socket, _)) = listener.accept().await {
                let connection = http
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service.clone())
                    .into_owned();
                tokio::spawn(connection);
            }
        });
        S3Server {
            addr,
            runtime: Some(runtime),
            _root: root,
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs each test body against the three backends.
macro_rules! on_every_backend {
    ($($name:ident($backend:ident) $body:block)*) => {
        mod memory { use super::*; $( #[test] fn $name() { let $backend = Backend::memory(); $body } )* }
        mod local { use super::*; $( #[test] fn $name() { let $backend = Backend::local(); $body } )* }
        mod s3 { use super::*; $( #[test] fn $name() { let $backend = Backend::s3(); $body } )* }
    };
}

// ---------------------------------------------------------------------------------------------
// Snapshots to archive
// ---------------------------------------------------------------------------------------------

/// A canister with 3 MiB of heap and some stable memory, and a place to download its snapshots.
struct Fixture {
    sm: StateMachine,
    canister: TestCanister,
    dirs: tempfile::TempDir,
    snapshots: u32,
}

impl Fixture {
    fn new() -> Self {
        let (mut sm, canister) = common::env();
        let pattern: Vec<u8> = (0..3 * MIB).map(|i| (i * 7 % 251) as u8).collect();
        for (i, piece) in pattern.chunks(MIB as usize).enumerate() {
            canister.write(&mut sm, false, i as u64 * MIB, piece);
        }
        canister.fill(&mut sm, true, 0, 70_000, 0x5B);
        canister.set_global(&mut sm, 0, -42);
        canister.set_certified_data(&mut sm, b"certified");
        Fixture {
            sm,
            canister,
            dirs: tempfile::tempdir().unwrap(),
            snapshots: 0,
        }
    }

    /// Takes a snapshot (replacing the previous one: the quota is small) and downloads it.
    fn snapshot(&mut self) -> PathBuf {
        let existing = self
            .sm
            .list_canister_snapshots(self.canister.id, Some(self.canister.sender))
            .unwrap();
        for snapshot in existing {
            self.sm
                .delete_canister_snapshot(self.canister.id, Some(self.canister.sender), snapshot.id)
                .unwrap();
        }
        // Snapshots a day apart: their manifests sort in this order.
        self.sm.advance_time(Duration::from_secs(86_400));
        let id = self
            .sm
            .take_canister_snapshot(self.canister.id, Some(self.canister.sender), None)
            .unwrap()
            .id;
        self.snapshots += 1;
        let dir = self
            .dirs
            .path()
            .join(format!("snapshot-{}", self.snapshots));
        self.sm
            .download_canister_snapshot(self.canister.id, Some(self.canister.sender), id, &dir)
            .unwrap();
        dir
    }

    /// Changes one 4 KiB page of the heap at `offset`.
    fn touch(&mut self, offset: u64, byte: u8) {
        self.canister.fill(&mut self.sm, false, offset, 4096, byte);
    }

    fn pull_dir(&self, name: &str) -> PathBuf {
        self.dirs.path().join(name)
    }
}

/// Every file of two snapshot directories is equal (metadata, regions, chunks, checksum.json).
fn assert_same_snapshot(a: &Path, b: &Path) {
    let (a, b) = (SnapshotDir::new(a), SnapshotDir::new(b));
    assert_eq!(a.compute_checksum().unwrap(), b.compute_checksum().unwrap());
    assert_eq!(
        format!("{:?}", a.read_metadata().unwrap()),
        format!("{:?}", b.read_metadata().unwrap())
    );
    for region in canister_snapshots::transfer::REGIONS {
        assert_eq!(
            std::fs::read(a.region_path(region)).unwrap(),
            std::fs::read(b.region_path(region)).unwrap(),
            "{}",
            region.name()
        );
    }
    assert_eq!(
        a.read_checksum_record().unwrap(),
        b.read_checksum_record().unwrap()
    );
}

fn killed_before_manifest() -> PushOptions {
    PushOptions {
        stop_after_blocks: Some(u64::MAX),
        ..PushOptions::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

on_every_backend! {
    push_list_pull_round_trip(backend) {
        let mut fx = Fixture::new();
        let dir = fx.snapshot();
        let archive = backend.archive();
        let pushed = archive.push(&dir, &PushOptions::default()).unwrap();
        assert!(!pushed.already_archived);
        // 3 MiB of heap pattern, 1 block of stable memory, 1 of module; the zero heap tail
        // is not stored.
        assert_eq!(pushed.blocks, pushed.blocks_sent);
        assert!(pushed.blocks >= 5, "{pushed:?}");
        let listed = archive.list(None).unwrap();
        assert_eq!(listed.iter().map(|m| m.name()).collect::<Vec<_>>(), std::slice::from_ref(&pushed.manifest));
        assert_eq!(listed[0].canister_id, fx.canister.id.to_text());
        assert_eq!(archive.list(Some(common::stranger())).unwrap(), []);

        let out = fx.pull_dir("pulled");
        let pulled = archive.pull(&pushed.manifest, &out, &PullOptions::default()).unwrap();
        assert_eq!(pulled.checksum, pushed.checksum);
        assert_same_snapshot(&dir, &out);

        // Idempotent: the same snapshot again sends nothing.
        let again = archive.push(&dir, &PushOptions::default()).unwrap();
        assert!(again.already_archived);
        assert_eq!((again.bytes_sent, again.manifest), (0, pushed.manifest));
    }

    second_push_sends_only_the_changed_blocks(backend) {
        let mut fx = Fixture::new();
        let archive = backend.archive();
        let first = archive.push(&fx.snapshot(), &PushOptions::default()).unwrap();
        let before = archive.usage().unwrap();
        fx.touch(MIB + 8192, 0xEE);
        let dir = fx.snapshot();
        let second = archive.push(&dir, &PushOptions::default()).unwrap();
        assert_ne!(first.manifest, second.manifest);
        assert_eq!(second.blocks_sent, 1, "{second:?}");
        assert!(second.bytes_sent < MIB + 64 * 1024, "{second:?}");
        let after = archive.usage().unwrap();
        assert_eq!(after.blocks, before.blocks + 1);
        let out = fx.pull_dir("second");
        archive.pull(&second.manifest, &out, &PullOptions::default()).unwrap();
        assert_same_snapshot(&dir, &out);
    }

    crash_between_blocks_and_manifest_leaves_no_manifest_and_resumes(backend) {
        let mut fx = Fixture::new();
        let dir = fx.snapshot();
        let archive = backend.archive();
        // Killed after two blocks, then again just before the manifest.
        let first = archive.push(&dir, &PushOptions { stop_after_blocks: Some(2), ..PushOptions::default() });
        assert!(matches!(first, Err(ArchiveError::Interrupted { blocks: 2 })), "{first:?}");
        let second = archive.push(&dir, &killed_before_manifest());
        assert!(matches!(second, Err(ArchiveError::Interrupted { .. })), "{second:?}");
        assert_eq!(archive.list(None).unwrap(), [], "no manifest after a crash");
        // Resumed: every block is there already.
        let resumed = archive.push(&dir, &PushOptions::default()).unwrap();
        assert_eq!(resumed.blocks_sent, 0, "{resumed:?}");
        let out = fx.pull_dir("resumed");
        archive.pull(&resumed.manifest, &out, &PullOptions::default()).unwrap();
        assert_same_snapshot(&dir, &out);
    }

    prune_keeps_the_newest_and_sweeps_unreferenced_blocks(backend) {
        let mut fx = Fixture::new();
        let archive = backend.archive();
        let mut names = Vec::new();
        let mut dirs = Vec::new();
        for day in 0..3u8 {
            fx.touch(u64::from(day) * MIB, 0xC0 + day);
            let dir = fx.snapshot();
            names.push(archive.push(&dir, &PushOptions::default()).unwrap().manifest);
            dirs.push(dir);
        }
        let blocks_before = archive.usage().unwrap().blocks;
        assert!(matches!(archive.prune(&PruneOptions::keep_last(0)), Err(ArchiveError::KeepLastZero)));
        let report = archive.prune(&PruneOptions::keep_last(1)).unwrap();
        assert_eq!(report.manifests_deleted, names[..2]);
        assert_eq!(report.manifests_kept, 1);
        // Each older snapshot had one changed heap block of its own, superseded later.
        assert!(report.blocks_deleted >= 2, "{report:?}");
        let kept = archive.list(None).unwrap();
        assert_eq!(kept.iter().map(|m| m.name()).collect::<Vec<_>>(), names[2..]);
        let usage = archive.usage().unwrap();
        assert_eq!(usage.blocks, kept[0].referenced_blocks().len() as u64);
        assert_eq!(usage.blocks, blocks_before - report.blocks_deleted);
        let out = fx.pull_dir("kept");
        archive.pull(&names[2], &out, &PullOptions::default()).unwrap();
        assert_same_snapshot(&dirs[2], &out);
        // --canister: another canister's manifests are not touched.
        let other = archive.prune(&PruneOptions { canister_id: Some(common::stranger()), ..PruneOptions::keep_last(1) }).unwrap();
        assert_eq!((other.manifests_deleted.len(), other.blocks_deleted), (0, 0));
    }

    prune_during_a_push_never_deletes_blocks_the_push_relies_on(backend) {
        // Canister A has two snapshots, the first with blocks of its own. A push of the first
        // snapshot's directory for canister B finds all its blocks present; just before its
        // manifest, another client prunes A to its newest snapshot. Without the lock protocol
        // that sweep deletes the blocks only A's first manifest referenced, and B's manifest
        // then names missing blocks.
        let mut fx = Fixture::new();
        let pusher = backend.archive();
        let pruner = Arc::new(backend.archive());
        let old = fx.snapshot();
        pusher.push(&old, &PushOptions::default()).unwrap();
        fx.touch(0, 0x11);
        fx.touch(2 * MIB, 0x22);
        let new = fx.snapshot();
        pusher.push(&new, &PushOptions::default()).unwrap();

        let prune_result = Arc::new(std::sync::Mutex::new(None));
        let hook = {
            let (pruner, prune_result) = (pruner.clone(), prune_result.clone());
            Hook(Arc::new(move || {
                *prune_result.lock().unwrap() = Some(pruner.prune(&PruneOptions::keep_last(1)));
            }))
        };
        let b = common::stranger();
        let pushed = pusher.push(&old, &PushOptions {
            canister_id: Some(b),
            before_manifest: Some(hook),
            ..PushOptions::default()
        }).unwrap();
        assert_eq!(pushed.blocks_sent, 0, "every block was present: {pushed:?}");
        let prune_result = prune_result.lock().unwrap().take().expect("the hook ran");
        assert!(matches!(prune_result, Err(ArchiveError::PushInProgress { .. })), "{prune_result:?}");
        let out = fx.pull_dir("b");
        archive_pull_ok(&pusher, &pushed.manifest, &out);
        assert_same_snapshot_content(&old, &out);

        // Once the push is done, the same prune runs and keeps what B references.
        let report = pruner.prune(&PruneOptions::keep_last(1)).unwrap();
        assert_eq!(report.manifests_kept, 2);
        let out = fx.pull_dir("b-after-prune");
        archive_pull_ok(&pusher, &pushed.manifest, &out);
    }

    a_crashed_push_blocks_prune_until_its_lock_is_stale(backend) {
        let mut fx = Fixture::new();
        let archive = backend.archive();
        let dir = fx.snapshot();
        assert!(archive.push(&dir, &killed_before_manifest()).is_err());
        let stored = archive.usage().unwrap().blocks;
        assert!(stored > 0);
        let refused = archive.prune(&PruneOptions::keep_last(1));
        assert!(matches!(refused, Err(ArchiveError::PushInProgress { .. })), "{refused:?}");
        assert_eq!(archive.usage().unwrap().blocks, stored, "nothing deleted");
        // A stale lock (here: any age) is a crashed push's: the orphans go.
        let report = archive.prune(&PruneOptions { stale_after: Duration::ZERO, ..PruneOptions::keep_last(1) }).unwrap();
        assert_eq!(report.blocks_deleted, stored);
        // And a push after that stores them again.
        let pushed = archive.push(&dir, &PushOptions::default()).unwrap();
        assert_eq!(pushed.blocks_sent, stored);
        archive_pull_ok(&archive, &pushed.manifest, &fx.pull_dir("again"));
    }

    corrupted_and_missing_blocks_are_named_and_nothing_is_written(backend) {
        let mut fx = Fixture::new();
        let archive = backend.archive();
        let pushed = archive.push(&fx.snapshot(), &PushOptions::default()).unwrap();
        let manifest = archive.manifest(&pushed.manifest).unwrap();
        let victim = manifest.wasm_memory.blocks[1].clone().unwrap();

        backend.put_block(&victim, vec![0xFF; MIB as usize]);
        let out = fx.pull_dir("corrupt");
        let err = archive.pull(&pushed.manifest, &out, &PullOptions::default()).unwrap_err();
        assert!(matches!(&err, ArchiveError::CorruptBlock { name, .. } if *name == victim), "{err:?}");
        assert!(err.to_string().contains(&victim) && err.to_string().contains("wasm_memory at offset 1048576"), "{err}");
        assert_nothing_written(&out);

        backend.delete_block(&victim);
        let err = archive.pull(&pushed.manifest, &out, &PullOptions::default()).unwrap_err();
        assert!(matches!(&err, ArchiveError::MissingBlock { name, .. } if *name == victim), "{err:?}");
        assert_nothing_written(&out);

        // A push repairs the archive: the missing block is sent again.
        let repaired = archive.push(&fx.snapshot(), &PushOptions::default()).unwrap();
        assert_eq!(repaired.blocks_sent, 1);
        assert!(backend.block_exists(&victim));
        archive_pull_ok(&archive, &pushed.manifest, &out);
    }
}

fn archive_pull_ok(archive: &Archive, name: &str, out: &Path) {
    let report = archive
        .pull(name, out, &PullOptions::default())
        .unwrap_or_else(|e| panic!("pull of {name} failed: {e}"));
    assert_eq!(
        hex(&SnapshotDir::new(out).compute_checksum().unwrap()),
        hex(&report.checksum)
    );
}

/// The same content (the checksum record may name another canister).
fn assert_same_snapshot_content(a: &Path, b: &Path) {
    let (a, b) = (SnapshotDir::new(a), SnapshotDir::new(b));
    assert_eq!(a.compute_checksum().unwrap(), b.compute_checksum().unwrap());
    assert_eq!(
        format!("{:?}", a.read_metadata().unwrap()),
        format!("{:?}", b.read_metadata().unwrap())
    );
}

/// Neither the destination nor a staging directory beside it exists.
fn assert_nothing_written(out: &Path) {
    assert!(!out.exists(), "{} was written", out.display());
    let parent = out.parent().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".pull-"))
        .collect();
    assert_eq!(leftovers, Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// Backend-independent checks
// ---------------------------------------------------------------------------------------------

#[test]
fn push_refuses_an_edited_directory_and_writes_nothing() {
    let mut fx = Fixture::new();
    let backend = Backend::memory();
    let archive = backend.archive();
    let dir = fx.snapshot();
    let path = SnapshotDir::new(&dir)
        .region_path(canister_snapshots::snapshots::SnapshotRegion::WasmMemory);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[5] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let err = archive.push(&dir, &PushOptions::default()).unwrap_err();
    assert!(
        matches!(err, ArchiveError::DirectoryChecksum { .. }),
        "{err:?}"
    );
    assert_eq!(archive.usage().unwrap().objects, 0);
}

#[test]
fn a_directory_without_checksum_json_needs_the_canister_and_keeps_its_chunks() {
    let mut fx = Fixture::new();
    let backend = Backend::local();
    let archive = backend.archive();
    let dir = fx.snapshot();
    // A directory of another tool: no checksum.json; and a chunk in its chunk store.
    let snapshot_dir = SnapshotDir::new(&dir);
    std::fs::remove_file(snapshot_dir.checksum_path()).unwrap();
    let chunk = b"a wasm chunk".to_vec();
    let hash = canister_snapshots::memory::checksum::sha256(&chunk);
    let mut metadata = snapshot_dir.read_metadata().unwrap();
    metadata
        .wasm_chunk_store
        .push(ic_management_canister_types::ChunkHash {
            hash: hash.to_vec(),
        });
    snapshot_dir.write_metadata(&metadata).unwrap();
    std::fs::create_dir_all(snapshot_dir.chunk_store_dir()).unwrap();
    std::fs::write(snapshot_dir.chunk_path(&hash), &chunk).unwrap();

    let err = archive.push(&dir, &PushOptions::default()).unwrap_err();
    assert!(matches!(err, ArchiveError::NoCanisterId { .. }), "{err:?}");
    let options = PushOptions {
        canister_id: Some(fx.canister.id),
        ..PushOptions::default()
    };
    let pushed = archive.push(&dir, &options).unwrap();
    assert!(
        backend.block_exists(&hex(&hash)),
        "the chunk is a block named by its hash"
    );
    let out = fx.pull_dir("with-chunk");
    archive_pull_ok(&archive, &pushed.manifest, &out);
    assert_eq!(
        std::fs::read(SnapshotDir::new(&out).chunk_path(&hash)).unwrap(),
        chunk
    );
    assert_same_snapshot_content(&dir, &out);
}

#[test]
fn pull_refuses_a_non_empty_destination_and_an_edited_manifest() {
    let mut fx = Fixture::new();
    let backend = Backend::memory();
    let archive = backend.archive();
    let pushed = archive
        .push(&fx.snapshot(), &PushOptions::default())
        .unwrap();
    let busy = fx.pull_dir("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("notes.txt"), b"mine").unwrap();
    let err = archive
        .pull(&pushed.manifest, &busy, &PullOptions::default())
        .unwrap_err();
    assert!(
        matches!(err, ArchiveError::DestinationNotEmpty { .. }),
        "{err:?}"
    );
    assert_eq!(std::fs::read(busy.join("notes.txt")).unwrap(), b"mine");
    // An empty directory is fine.
    let empty = fx.pull_dir("empty");
    std::fs::create_dir(&empty).unwrap();
    archive_pull_ok(&archive, &pushed.manifest, &empty);

    // A manifest whose recorded checksum was edited (past the part in its name): the blocks
    // are all good, the end-to-end check catches it.
    let mut manifest = archive.manifest(&pushed.manifest).unwrap();
    let last = manifest.checksum.pop().unwrap();
    manifest.checksum.push(if last == '0' { '1' } else { '0' });
    let path =
        object_store::path::Path::from(format!("team/archive/manifests/{}.json", pushed.manifest));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(backend.store.put(
            &path,
            PutPayload::from(serde_json::to_vec(&manifest).unwrap()),
        ))
        .unwrap();
    let out = fx.pull_dir("edited");
    let err = archive
        .pull(&pushed.manifest, &out, &PullOptions::default())
        .unwrap_err();
    assert!(
        matches!(err, ArchiveError::ChecksumMismatch { .. }),
        "{err:?}"
    );
    assert_nothing_written(&out);
    // Names are checked before they become object paths.
    let err = archive
        .pull("../../etc/x", &out, &PullOptions::default())
        .unwrap_err();
    assert!(matches!(err, ArchiveError::Argument { .. }), "{err:?}");
}

#[test]
fn archive_snapshot_downloads_and_pushes_through_the_client() {
    let mut fx = Fixture::new();
    let backend = Backend::memory();
    let archive = backend.archive();
    let id = fx
        .sm
        .take_canister_snapshot(fx.canister.id, Some(fx.canister.sender), None)
        .unwrap()
        .id;
    let replica_checksum = fx
        .sm
        .read_canister_snapshot_metadata(fx.canister.id, Some(fx.canister.sender), id.clone())
        .unwrap()
        .checksum;
    let report = archive_snapshot(
        &mut fx.sm,
        fx.canister.id,
        fx.canister.sender,
        id.clone(),
        &archive,
        &PushOptions::default(),
    )
    .unwrap();
    assert_eq!(report.checksum.to_vec(), replica_checksum);
    let manifest = archive.manifest(&report.manifest).unwrap();
    assert_eq!(manifest.snapshot_id, hex(&id));
    archive_pull_ok(&archive, &report.manifest, &fx.pull_dir("archived"));
}

#[test]
fn every_push_of_a_changed_block_stores_exactly_one_block() {
    // Thirty "daily" snapshots, each changing one page: the archive grows by one block a day,
    // however many full copies the snapshots add up to.
    let mut fx = Fixture::new();
    let backend = Backend::memory();
    let archive = backend.archive();
    archive
        .push(&fx.snapshot(), &PushOptions::default())
        .unwrap();
    let first = archive.usage().unwrap();
    for day in 1..30u64 {
        fx.touch((day % 3) * MIB + day * 4096, day as u8);
        archive
            .push(&fx.snapshot(), &PushOptions::default())
            .unwrap();
    }
    let usage = archive.usage().unwrap();
    assert_eq!(usage.blocks, first.blocks + 29);
    assert_eq!(archive.list(None).unwrap().len(), 30);
}

#[test]
fn command_line_push_list_pull_prune() {
    let mut fx = Fixture::new();
    let store = tempfile::tempdir().unwrap();
    let url = format!("file://{}", store.path().display());
    let bin = env!("CARGO_BIN_EXE_canister-snapshots");
    let run = |args: &[&str]| {
        let output = std::process::Command::new(bin).args(args).output().unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let first = fx.snapshot();
    let name1 = run(&["archive", "push", first.to_str().unwrap(), &url]);
    fx.touch(0, 0x42);
    let second = fx.snapshot();
    let name2 = run(&["archive", "push", second.to_str().unwrap(), &url]);
    let (name1, name2) = (name1.trim(), name2.trim());
    let listed = run(&[
        "archive",
        "list",
        &url,
        "--canister",
        &fx.canister.id.to_text(),
    ]);
    assert_eq!(
        listed
            .lines()
            .map(|l| l.split_whitespace().next().unwrap())
            .collect::<Vec<_>>(),
        [name1, name2]
    );
    let out = fx.pull_dir("cli-pulled");
    run(&["archive", "pull", &url, name2, out.to_str().unwrap()]);
    assert_same_snapshot(&second, &out);
    let pruned = run(&["archive", "prune", &url, "--keep-last", "1"]);
    assert!(pruned.contains(&format!("deleted {name1}")), "{pruned}");
    let listed = run(&["archive", "list", &url]);
    assert_eq!(listed.lines().count(), 1);
    // A refusal exits non-zero with a message that says what to do.
    let output = std::process::Command::new(bin)
        .args([
            "archive",
            "pull",
            &url,
            name1,
            fx.pull_dir("gone").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("archive list"));
}
