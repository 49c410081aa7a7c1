//! Archives in object storage (`spec/archive.md`): push, pull, list, prune, crashes, a
//! concurrent prune and the dedup targets, each against the in-memory, local-file and S3
//! backends, every store wrapped in a counter of the bytes it received. The S3 backend is
//! `s3s-fs` served in-process on 127.0.0.1 and reached through `object_store`'s S3 client:
//! nothing leaves the machine.

mod common;
#[path = "common/counting_store.rs"]
mod counting_store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use canister_snapshots::StateMachine;
use canister_snapshots::archive::{
    Archive, ArchiveError, Hook, Manifest, PageRuns, PruneOptions, PullOptions, PushOptions, Run,
    archive_snapshot,
};
use canister_snapshots::memory::checksum::hex;
use canister_snapshots::transfer::SnapshotDir;
use common::TestCanister;
use counting_store::CountingStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

/// An object store for the tests, and what keeps it alive.
struct Backend {
    store: Arc<dyn ObjectStore>,
    counter: Arc<CountingStore>,
    _dir: Option<tempfile::TempDir>,
    _server: Option<S3Server>,
}

impl Backend {
    fn wrap(
        inner: Arc<dyn ObjectStore>,
        dir: Option<tempfile::TempDir>,
        server: Option<S3Server>,
    ) -> Self {
        let counter = Arc::new(CountingStore::new(inner.clone()));
        Backend {
            store: inner,
            counter,
            _dir: dir,
            _server: server,
        }
    }

    fn memory() -> Self {
        Backend::wrap(Arc::new(object_store::memory::InMemory::new()), None, None)
    }

    fn local() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        Backend::wrap(Arc::new(store), Some(dir), None)
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
        Backend::wrap(Arc::new(store), None, Some(server))
    }

    /// An archive client of this store (several may share one, as several machines would),
    /// through the counter.
    fn archive(&self) -> Archive {
        Archive::with_store(self.counter.clone(), "team/archive").unwrap()
    }

    /// Bytes the store received in `put`s so far (lock objects aside), from every client.
    fn received(&self) -> u64 {
        self.counter.put_bytes()
    }

    fn pack_path(&self, name: &str, kind: &str) -> object_store::path::Path {
        object_store::path::Path::from(format!("team/archive/packs/{name}.{kind}"))
    }

    fn block_on<T>(&self, future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    }

    fn exists(&self, name: &str, kind: &str) -> bool {
        self.block_on(self.store.head(&self.pack_path(name, kind)))
            .is_ok()
    }

    fn read(&self, name: &str, kind: &str) -> Vec<u8> {
        self.block_on(async {
            let found = self.store.get(&self.pack_path(name, kind)).await.unwrap();
            found.bytes().await.unwrap().to_vec()
        })
    }

    fn write(&self, name: &str, kind: &str, bytes: Vec<u8>) {
        self.block_on(
            self.store
                .put(&self.pack_path(name, kind), PutPayload::from(bytes)),
        )
        .unwrap();
    }

    /// Replaces manifest `name` with `manifest`, as a hostile or broken store would.
    fn put_manifest(&self, name: &str, manifest: &Manifest) {
        let path = object_store::path::Path::from(format!("team/archive/manifests/{name}.json"));
        let bytes = serde_json::to_vec(manifest).unwrap();
        self.block_on(self.store.put(&path, PutPayload::from(bytes)))
            .unwrap();
    }

    /// Writes a lock object of `kind` (`push`, `prune`) as another client would.
    fn write_lock(&self, kind: &str) {
        let path = object_store::path::Path::from(format!(
            "team/archive/locks/{kind}-from-another-client.json"
        ));
        self.block_on(self.store.put(&path, PutPayload::from_static(b"{}")))
            .unwrap();
    }

    /// Every pack every manifest names is stored, both objects.
    fn assert_every_named_pack_stored(&self, archive: &Archive) {
        for manifest in archive.list(None).unwrap() {
            for pack in manifest.referenced_packs() {
                assert!(
                    self.exists(&pack, "pages") && self.exists(&pack, "index"),
                    "{} names pack {pack}, which is gone",
                    manifest.name()
                );
            }
        }
    }

    fn delete(&self, name: &str, kind: &str) {
        self.block_on(self.store.delete(&self.pack_path(name, kind)))
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

/// A day later, the canister's only snapshot (the previous one deleted: the quota is small),
/// downloaded into `dirs/snapshot-<n>`.
fn next_daily_snapshot(
    sm: &mut StateMachine,
    canister: &TestCanister,
    dirs: &tempfile::TempDir,
    n: u32,
) -> PathBuf {
    for snapshot in sm
        .list_canister_snapshots(canister.id, Some(canister.sender))
        .unwrap()
    {
        sm.delete_canister_snapshot(canister.id, Some(canister.sender), snapshot.id)
            .unwrap();
    }
    // Snapshots a day apart: their manifests sort in this order.
    sm.advance_time(Duration::from_secs(86_400));
    let id = sm
        .take_canister_snapshot(canister.id, Some(canister.sender), None)
        .unwrap()
        .id;
    let dir = dirs.path().join(format!("snapshot-{n}"));
    sm.download_canister_snapshot(canister.id, Some(canister.sender), id, &dir)
        .unwrap();
    dir
}

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
        self.snapshots += 1;
        next_daily_snapshot(&mut self.sm, &self.canister, &self.dirs, self.snapshots)
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
        stop_after_packs: Some(u64::MAX),
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
        // The heap's pattern repeats every 251 pages: each distinct page is stored once, and
        // the zero heap tail not at all. Everything fits one pack.
        assert!(pushed.pages_sent < pushed.pages, "{pushed:?}");
        assert_eq!(pushed.packs_sent, 1, "{pushed:?}");
        assert_eq!(pushed.bytes_sent, backend.received(), "the report counts what the store got");
        let listed = archive.list(None).unwrap();
        assert_eq!(listed.iter().map(|m| m.name()).collect::<Vec<_>>(), std::slice::from_ref(&pushed.manifest));
        assert_eq!(listed[0].canister_id, fx.canister.id.to_text());
        assert_eq!(archive.list(Some(common::stranger())).unwrap(), []);

        let out = fx.pull_dir("pulled");
        let pulled = archive.pull(&pushed.manifest, &out, &PullOptions::default()).unwrap();
        assert_eq!(pulled.checksum, pushed.checksum);
        assert_same_snapshot(&dir, &out);

        // Idempotent: the same snapshot again sends nothing.
        let before = backend.received();
        let again = archive.push(&dir, &PushOptions::default()).unwrap();
        assert!(again.already_archived);
        assert_eq!((again.bytes_sent, again.manifest), (0, pushed.manifest));
        assert_eq!(backend.received(), before);
    }

    second_push_sends_only_the_changed_page(backend) {
        let mut fx = Fixture::new();
        let archive = backend.archive();
        let first = archive.push(&fx.snapshot(), &PushOptions::default()).unwrap();
        let before = (archive.usage().unwrap(), backend.received());
        fx.touch(MIB + 8192, 0xEE);
        let dir = fx.snapshot();
        let second = archive.push(&dir, &PushOptions::default()).unwrap();
        assert_ne!(first.manifest, second.manifest);
        assert_eq!((second.pages_sent, second.packs_sent), (1, 1), "{second:?}");
        // One page, its index entry, a manifest of a few runs.
        let sent = backend.received() - before.1;
        assert!(sent < 4096 + 8 * 1024, "{sent} bytes sent: {second:?}");
        assert_eq!(archive.usage().unwrap().packs, before.0.packs + 1);
        let out = fx.pull_dir("second");
        archive.pull(&second.manifest, &out, &PullOptions::default()).unwrap();
        assert_same_snapshot(&dir, &out);
    }

    scattered_one_percent_change_sends_at_most_three_percent(backend) {
        // The target, at 16 MiB: 1% of the heap's pages changed at a stride of 100
        // pages (every 1 MiB block touched), the second push sends ≤ 3% of the snapshot.
        let mut big = BigCanister::new(16 * MIB);
        let archive = backend.archive();
        let first = archive.push(&big.snapshot(), &PushOptions::default()).unwrap();
        let fresh_objects = archive.usage().unwrap();
        let changed = big.change_scattered(100);
        let dir = big.snapshot();
        let before = backend.received();
        let second = archive.push(&dir, &PushOptions::default()).unwrap();
        let sent = backend.received() - before;
        let snapshot_bytes = second.snapshot_bytes;
        assert!(sent * 100 <= 3 * snapshot_bytes, "sent {sent} of {snapshot_bytes}: {second:?}");
        assert_eq!(second.pages_sent, changed, "{second:?}");
        // Objects per GiB: what one fresh snapshot costs, scaled.
        let per_gib = fresh_objects.objects as f64 * (1u64 << 30) as f64 / first.snapshot_bytes as f64;
        assert!(per_gib <= 2000.0, "{per_gib} objects per GiB: {fresh_objects:?}");
        let out = big.dirs.path().join("pulled");
        archive.pull(&second.manifest, &out, &PullOptions::default()).unwrap();
        assert_same_snapshot(&dir, &out);
    }

    thirty_daily_snapshots_take_at_most_1_4_times_one(backend) {
        // 4 MiB changing 1% a day (scattered) for thirty days, all kept.
        let mut big = BigCanister::new(4 * MIB);
        let archive = backend.archive();
        let mut snapshot_bytes = 0;
        let mut last = None;
        for _ in 0..30 {
            let dir = big.snapshot();
            let report = archive.push(&dir, &PushOptions::default()).unwrap();
            snapshot_bytes = report.snapshot_bytes;
            std::fs::remove_dir_all(&dir).unwrap();
            last = Some(report.manifest);
            big.change_scattered(100);
        }
        let usage = archive.usage().unwrap();
        assert_eq!(archive.list(None).unwrap().len(), 30);
        assert!(usage.bytes as f64 <= 1.4 * snapshot_bytes as f64, "{usage:?} for {snapshot_bytes}");
        archive_pull_ok(&archive, &last.unwrap(), &big.dirs.path().join("day-30"));
    }

    crash_mid_push_leaves_no_manifest_and_resumes(backend) {
        let mut fx = Fixture::new();
        let dir = fx.snapshot();
        let archive = backend.archive();
        let small_packs = PushOptions { pack_pages: 16, ..PushOptions::default() };
        // Killed after two packs, then again just before the manifest.
        let first = archive.push(&dir, &PushOptions { stop_after_packs: Some(2), ..small_packs.clone() });
        assert!(matches!(first, Err(ArchiveError::Interrupted { packs: 2 })), "{first:?}");
        assert_eq!(archive.usage().unwrap().packs, 2);
        let second = archive.push(&dir, &PushOptions { stop_after_packs: Some(u64::MAX), ..small_packs.clone() });
        assert!(matches!(second, Err(ArchiveError::Interrupted { .. })), "{second:?}");
        assert_eq!(archive.list(None).unwrap(), [], "no manifest after a crash");
        // Resumed: every page is there already.
        let before = backend.received();
        let resumed = archive.push(&dir, &small_packs).unwrap();
        assert_eq!((resumed.pages_sent, resumed.packs_sent), (0, 0), "{resumed:?}");
        assert_eq!(backend.received() - before, resumed.bytes_sent, "only the manifest");
        let out = fx.pull_dir("resumed");
        archive.pull(&resumed.manifest, &out, &PullOptions::default()).unwrap();
        assert_same_snapshot(&dir, &out);
    }

    prune_keeps_the_newest_and_sweeps_unreferenced_packs(backend) {
        let mut fx = Fixture::new();
        let archive = backend.archive();
        let mut names = Vec::new();
        let mut dirs = Vec::new();
        // The same page rewritten each day: each day's pack holds the one page of that day.
        for day in 0..3u8 {
            fx.touch(MIB, 0xC0 + day);
            let dir = fx.snapshot();
            names.push(archive.push(&dir, &PushOptions::default()).unwrap().manifest);
            dirs.push(dir);
        }
        let packs_before = archive.usage().unwrap().packs;
        assert_eq!(packs_before, 3);
        assert!(matches!(archive.prune(&PruneOptions::keep_last(0)), Err(ArchiveError::KeepLastZero)));
        let report = archive.prune(&PruneOptions::keep_last(1)).unwrap();
        assert_eq!(report.manifests_deleted, names[..2]);
        assert_eq!(report.manifests_kept, 1);
        // Day 1's pack held only a page superseded on day 2; day 0's pack still holds the
        // rest of the snapshot (kept whole, with its one dead page).
        assert_eq!(report.packs_deleted, 1, "{report:?}");
        assert!(report.bytes_freed >= 4096, "{report:?}");
        let kept = archive.list(None).unwrap();
        assert_eq!(kept.iter().map(|m| m.name()).collect::<Vec<_>>(), names[2..]);
        let usage = archive.usage().unwrap();
        assert_eq!(usage.packs, kept[0].referenced_packs().len() as u64);
        assert_eq!(usage.packs, packs_before - report.packs_deleted);
        let out = fx.pull_dir("kept");
        archive.pull(&names[2], &out, &PullOptions::default()).unwrap();
        assert_same_snapshot(&dirs[2], &out);
        // --canister: another canister's manifests are not touched.
        let other = archive.prune(&PruneOptions { canister_id: Some(common::stranger()), ..PruneOptions::keep_last(1) }).unwrap();
        assert_eq!((other.manifests_deleted.len(), other.packs_deleted), (0, 0));
    }

    prune_during_a_push_never_deletes_packs_the_push_relies_on(backend) {
        // Canister A has three snapshots; the middle one's changed page is in a pack of its
        // own, which a prune to A's newest would delete. A push of the middle snapshot's
        // directory for canister B finds all its pages present; just before its manifest,
        // another client prunes A to its newest snapshot. Without the lock protocol that sweep
        // deletes the pack, and B's manifest then names a missing pack.
        let mut fx = Fixture::new();
        let pusher = backend.archive();
        let pruner = Arc::new(backend.archive());
        pusher.push(&fx.snapshot(), &PushOptions::default()).unwrap();
        fx.touch(MIB, 0x11);
        let middle = fx.snapshot();
        pusher.push(&middle, &PushOptions::default()).unwrap();
        fx.touch(MIB, 0x22);
        pusher.push(&fx.snapshot(), &PushOptions::default()).unwrap();

        let prune_result = Arc::new(std::sync::Mutex::new(None));
        let hook = {
            let (pruner, prune_result) = (pruner.clone(), prune_result.clone());
            Hook(Arc::new(move || {
                *prune_result.lock().unwrap() = Some(pruner.prune(&PruneOptions::keep_last(1)));
            }))
        };
        let b = common::stranger();
        let pushed = pusher.push(&middle, &PushOptions {
            canister_id: Some(b),
            before_manifest: Some(hook),
            ..PushOptions::default()
        }).unwrap();
        assert_eq!(pushed.pages_sent, 0, "every page was present: {pushed:?}");
        let prune_result = prune_result.lock().unwrap().take().expect("the hook ran");
        assert!(matches!(prune_result, Err(ArchiveError::PushInProgress { .. })), "{prune_result:?}");
        let out = fx.pull_dir("b");
        archive_pull_ok(&pusher, &pushed.manifest, &out);
        assert_same_snapshot_content(&middle, &out);

        // Once the push is done, the same prune runs and keeps what B references.
        let report = pruner.prune(&PruneOptions::keep_last(1)).unwrap();
        assert_eq!((report.manifests_kept, report.packs_deleted), (2, 0), "{report:?}");
        let out = fx.pull_dir("b-after-prune");
        archive_pull_ok(&pusher, &pushed.manifest, &out);
    }

    a_crashed_push_blocks_prune_until_its_lock_is_stale(backend) {
        let mut fx = Fixture::new();
        let archive = backend.archive();
        let dir = fx.snapshot();
        assert!(archive.push(&dir, &killed_before_manifest()).is_err());
        let stored = archive.usage().unwrap();
        assert!(stored.packs > 0);
        let refused = archive.prune(&PruneOptions::keep_last(1));
        assert!(matches!(refused, Err(ArchiveError::PushInProgress { .. })), "{refused:?}");
        assert_eq!(archive.usage().unwrap().packs, stored.packs, "nothing deleted");
        // A stale lock (here: any age) is a crashed push's: the orphans go.
        let report = archive.prune(&PruneOptions { stale_after: Duration::ZERO, ..PruneOptions::keep_last(1) }).unwrap();
        assert_eq!(report.packs_deleted, stored.packs);
        // What remains is the crashed push's lock, ignored as stale.
        assert_eq!(archive.usage().unwrap().objects, 1, "{:?}", archive.usage());
        // And a push after that stores them again.
        let pushed = archive.push(&dir, &PushOptions::default()).unwrap();
        assert_eq!(pushed.packs_sent, stored.packs);
        archive_pull_ok(&archive, &pushed.manifest, &fx.pull_dir("again"));
    }

    corrupted_and_missing_packs_are_named_and_nothing_is_written(backend) {
        let mut fx = Fixture::new();
        let archive = backend.archive();
        let dir = fx.snapshot();
        let pushed = archive.push(&dir, &PushOptions::default()).unwrap();
        let manifest = archive.manifest(&pushed.manifest).unwrap();
        // The pack and position of the heap's page at 400 KiB (the pattern repeats every 251
        // pages: page 100 is the first of its content).
        let (victim, position) = {
            let mut page = 0;
            let mut found = None;
            for run in &manifest.wasm_memory.runs {
                if (page..page + run.2).contains(&100) {
                    found = Some((manifest.packs[run.0.unwrap() as usize].clone(), run.1 + 100 - page));
                    break;
                }
                page += run.2;
            }
            found.unwrap()
        };
        let good = backend.read(&victim, "pages");

        // One flipped bit in one page.
        let mut bad = good.clone();
        bad[position as usize * 4096 + 7] ^= 1;
        backend.write(&victim, "pages", bad);
        let out = fx.pull_dir("corrupt");
        let err = archive.pull(&pushed.manifest, &out, &PullOptions::default()).unwrap_err();
        assert!(matches!(&err, ArchiveError::CorruptPack { name, .. } if *name == victim), "{err:?}");
        assert!(err.to_string().contains(&victim) && err.to_string().contains("wasm_memory at offset 409600"), "{err}");
        assert_nothing_written(&out);

        // A truncated pages object.
        backend.write(&victim, "pages", good[..4096].to_vec());
        let err = archive.pull(&pushed.manifest, &out, &PullOptions::default()).unwrap_err();
        assert!(matches!(&err, ArchiveError::CorruptPack { name, .. } if *name == victim), "{err:?}");
        assert_nothing_written(&out);

        // An index that does not hash to its name.
        backend.write(&victim, "pages", good.clone());
        let mut index = backend.read(&victim, "index");
        index[20] ^= 1;
        backend.write(&victim, "index", index);
        let err = archive.pull(&pushed.manifest, &out, &PullOptions::default()).unwrap_err();
        assert!(matches!(&err, ArchiveError::CorruptPack { name, .. } if *name == victim), "{err:?}");
        assert_nothing_written(&out);

        // Missing: the index, then the pages.
        backend.delete(&victim, "index");
        let err = archive.pull(&pushed.manifest, &out, &PullOptions::default()).unwrap_err();
        assert!(matches!(&err, ArchiveError::MissingPack { name, .. } if *name == victim), "{err:?}");
        assert_nothing_written(&out);
        backend.delete(&victim, "pages");
        let err = archive.pull(&pushed.manifest, &out, &PullOptions::default()).unwrap_err();
        assert!(matches!(&err, ArchiveError::MissingPack { name, .. } if *name == victim), "{err:?}");
        assert!(err.to_string().contains(&victim), "{err}");
        assert_nothing_written(&out);

        // A push of the same content repairs the archive: the same pages in the same order
        // make the same pack, under the same name.
        let repaired = archive.push(&fx.snapshot(), &PushOptions::default()).unwrap();
        assert_eq!(repaired.packs_sent, 1, "{repaired:?}");
        assert!(backend.exists(&victim, "pages") && backend.exists(&victim, "index"));
        archive_pull_ok(&archive, &pushed.manifest, &out);
    }
}

/// A canister whose heap is `size` bytes of pages that do not repeat, changed a page at a time.
struct BigCanister {
    sm: StateMachine,
    canister: TestCanister,
    dirs: tempfile::TempDir,
    size: u64,
    seed: u64,
    snapshots: u32,
}

impl BigCanister {
    fn new(size: u64) -> Self {
        let (sm, canister) = common::env();
        let mut big = BigCanister {
            sm,
            canister,
            dirs: tempfile::tempdir().unwrap(),
            size,
            seed: 1,
            snapshots: 0,
        };
        for offset in (0..size).step_by(MIB as usize) {
            let bytes = big.random_bytes(MIB);
            big.write(offset, &bytes);
        }
        big
    }

    /// Writes heap bytes, waiting out the heap-delta rate limit as a real canister would.
    fn write(&mut self, offset: u64, bytes: &[u8]) {
        while self.sm.state().canisters[&self.canister.id].heap_delta_debit
            >= self.sm.config().heap_delta_rate_limit_bytes
        {
            self.sm.tick();
        }
        self.canister.write(&mut self.sm, false, offset, bytes);
    }

    fn pages(&self) -> u64 {
        self.size / 4096
    }

    /// SplitMix64 bytes: pages that never repeat.
    fn random_bytes(&mut self, len: u64) -> Vec<u8> {
        (0..len / 8)
            .flat_map(|_| {
                self.seed = self.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = self.seed;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                (z ^ (z >> 31)).to_le_bytes()
            })
            .collect()
    }

    /// Rewrites one page in every `stride` (1% at 100), starting at a page that moves each
    /// time, so that consecutive days change different pages.
    fn change_scattered(&mut self, stride: u64) -> u64 {
        let start = self.seed % stride;
        let mut changed = 0;
        for page in (start..self.pages()).step_by(stride as usize) {
            let bytes = self.random_bytes(4096);
            self.write(page * 4096, &bytes);
            changed += 1;
        }
        changed
    }

    fn snapshot(&mut self) -> PathBuf {
        self.snapshots += 1;
        next_daily_snapshot(&mut self.sm, &self.canister, &self.dirs, self.snapshots)
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
    let manifest = archive.manifest(&pushed.manifest).unwrap();
    assert_eq!(manifest.chunks.len(), 1);
    assert_eq!(manifest.chunks[0].hash, hex(&hash));
    assert_eq!(manifest.chunks[0].pages.size, chunk.len() as u64);
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

    // A manifest whose recorded checksum was edited (past the part in its name): the pages
    // are all good, the end-to-end check catches it.
    let mut manifest = archive.manifest(&pushed.manifest).unwrap();
    let last = manifest.checksum.pop().unwrap();
    manifest.checksum.push(if last == '0' { '1' } else { '0' });
    backend.put_manifest(&pushed.manifest, &manifest);
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
fn every_push_of_a_changed_page_stores_exactly_one_page() {
    // Thirty "daily" snapshots, each changing one page: the archive grows by one page (in one
    // small pack) a day, however many full copies the snapshots add up to.
    let mut fx = Fixture::new();
    let backend = Backend::memory();
    let archive = backend.archive();
    archive
        .push(&fx.snapshot(), &PushOptions::default())
        .unwrap();
    let first = archive.usage().unwrap();
    for day in 1..30u64 {
        fx.touch((day % 3) * MIB + day * 4096, day as u8);
        let report = archive
            .push(&fx.snapshot(), &PushOptions::default())
            .unwrap();
        assert_eq!(report.pages_sent, 1, "{report:?}");
    }
    let usage = archive.usage().unwrap();
    assert_eq!(usage.packs, first.packs + 29);
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

#[test]
fn command_line_canister_snapshot_archive_downloads_and_pushes_in_one_step() {
    // `canister snapshot archive CANISTER ID --to URL` over a durable local replica, every
    // step a new process, as a daily cron job runs it.
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let store = work.path().join("backups");
    let url = format!("file://{}", store.display());
    let bin = env!("CARGO_BIN_EXE_canister-snapshots");
    let run = |args: &[&str]| {
        let output = std::process::Command::new(bin)
            .arg("--state-dir")
            .arg(&state)
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    };
    let canister = run(&["canister", "create"]);
    run(&["canister", "install", &canister]);
    run(&[
        "canister",
        "call",
        &canister,
        "write_heap",
        "(70000 : nat64, blob \"archived at the shell\")",
    ]);
    let id = run(&["canister", "snapshot", "create", &canister, "--force"]);
    let name = run(&[
        "canister", "snapshot", "archive", &canister, &id, "--to", &url,
    ]);
    assert!(name.starts_with(&format!("{canister}/")), "{name}");
    assert_eq!(
        run(&["archive", "list", &url]).split_whitespace().next(),
        Some(name.as_str())
    );
    // Pulled back, it is the snapshot a download gives.
    let pulled = work.path().join("pulled");
    run(&["archive", "pull", &url, &name, pulled.to_str().unwrap()]);
    let downloaded = work.path().join("downloaded");
    run(&[
        "canister",
        "snapshot",
        "download",
        &canister,
        &id,
        "--dir",
        downloaded.to_str().unwrap(),
    ]);
    assert_same_snapshot(&downloaded, &pulled);
    // Again the next day: nothing new is sent for the same snapshot.
    assert_eq!(
        run(&[
            "canister", "snapshot", "archive", &canister, &id, "--to", &url
        ]),
        name
    );
}

// ---------------------------------------------------------------------------------------------
// A store that loses or damages objects; locks that must not expire; hostile manifests
// ---------------------------------------------------------------------------------------------

/// The one pack a fresh push of the fixture's snapshot stores.
fn only_pack(archive: &Archive, manifest: &str) -> String {
    let packs = archive.manifest(manifest).unwrap().referenced_packs();
    assert_eq!(packs.len(), 1, "{packs:?}");
    packs.into_iter().next().unwrap()
}

#[test]
fn a_push_repairs_a_pack_whose_pages_a_store_lost_or_cut_and_verify_names_it() {
    let mut fx = Fixture::new();
    let backend = Backend::local();
    let archive = backend.archive();
    let dir = fx.snapshot();
    let pushed = archive.push(&dir, &PushOptions::default()).unwrap();
    let victim = only_pack(&archive, &pushed.manifest);
    let good = backend.read(&victim, "pages");
    assert!(archive.verify(None).unwrap().is_whole());

    for damage in ["lost", "cut"] {
        match damage {
            "lost" => backend.delete(&victim, "pages"),
            _ => backend.write(&victim, "pages", good[..good.len() - 4096].to_vec()),
        }
        // `archive verify` names the pack and the manifest that needs it.
        let report = archive.verify(None).unwrap();
        assert_eq!(report.damage.len(), 1, "{report:?}");
        assert_eq!(report.damage[0].object, format!("packs/{victim}"));
        assert_eq!(
            report.damage[0].manifests,
            std::slice::from_ref(&pushed.manifest)
        );
        assert!(archive.verify(Some(&pushed.manifest)).unwrap().damage.len() == 1);
        // Pushing the same snapshot again repairs it instead of skipping it.
        let again = archive.push(&dir, &PushOptions::default()).unwrap();
        assert!(!again.already_archived, "{damage}: {again:?}");
        assert_eq!(
            again.packs_damaged,
            std::slice::from_ref(&victim),
            "{damage}: {again:?}"
        );
        assert_eq!(again.packs_sent, 1, "{again:?}");
        assert_eq!(
            backend.read(&victim, "pages"),
            good,
            "the same pages, the same pack"
        );
        assert!(archive.verify(None).unwrap().is_whole());
        archive_pull_ok(
            &archive,
            &pushed.manifest,
            &fx.pull_dir(&format!("repaired-{damage}")),
        );
    }

    // A later snapshot does not deduplicate against a pack that is not whole: its pull works
    // although the pack is still damaged.
    backend.delete(&victim, "pages");
    fx.touch(MIB, 0x77);
    let next = archive
        .push(&fx.snapshot(), &PushOptions::default())
        .unwrap();
    assert_eq!(
        next.packs_damaged,
        std::slice::from_ref(&victim),
        "{next:?}"
    );
    assert!(
        !archive
            .manifest(&next.manifest)
            .unwrap()
            .referenced_packs()
            .contains(&victim)
    );
    archive_pull_ok(&archive, &next.manifest, &fx.pull_dir("next"));
}

#[test]
fn a_page_a_store_corrupted_in_place_is_found_on_request_and_by_verify() {
    let mut fx = Fixture::new();
    let backend = Backend::local();
    let archive = backend.archive();
    let dir = fx.snapshot();
    let pushed = archive.push(&dir, &PushOptions::default()).unwrap();
    let victim = only_pack(&archive, &pushed.manifest);
    let good = backend.read(&victim, "pages");
    let mut bad = good.clone();
    bad[5 * 4096 + 9] ^= 0x40;
    backend.write(&victim, "pages", bad);

    let report = archive.verify(None).unwrap();
    assert_eq!(report.damage.len(), 1, "{report:?}");
    assert!(report.damage[0].reason.contains("page 5"), "{report:?}");
    // The sizes are right: the cheap check cannot see it, a push that hashes the pages can.
    assert!(
        archive
            .push(&dir, &PushOptions::default())
            .unwrap()
            .already_archived
    );
    let verify_pages = PushOptions {
        verify_pages: true,
        ..PushOptions::default()
    };
    let repaired = archive.push(&dir, &verify_pages).unwrap();
    assert_eq!(
        repaired.packs_damaged,
        std::slice::from_ref(&victim),
        "{repaired:?}"
    );
    assert_eq!(backend.read(&victim, "pages"), good);
    assert!(archive.verify(None).unwrap().is_whole());
    assert!(archive.push(&dir, &verify_pages).unwrap().already_archived);
    archive_pull_ok(&archive, &pushed.manifest, &fx.pull_dir("repaired"));
}

#[test]
fn command_line_archive_verify_names_the_damage_and_exits_non_zero() {
    let mut fx = Fixture::new();
    let store = tempfile::tempdir().unwrap();
    let url = format!("file://{}", store.path().display());
    let bin = env!("CARGO_BIN_EXE_canister-snapshots");
    let run = |args: &[&str]| std::process::Command::new(bin).args(args).output().unwrap();
    let dir = fx.snapshot();
    let pushed = run(&["archive", "push", dir.to_str().unwrap(), &url]);
    assert!(pushed.status.success());
    let name = String::from_utf8(pushed.stdout).unwrap().trim().to_string();
    let verified = run(&["archive", "verify", &url]);
    assert!(verified.status.success(), "{verified:?}");
    let archive = Archive::open(&url).unwrap();
    let victim = only_pack(&archive, &name);
    std::fs::remove_file(store.path().join(format!("packs/{victim}.pages"))).unwrap();

    let verified = run(&["archive", "verify", &url, &name]);
    assert!(!verified.status.success());
    let stderr = String::from_utf8_lossy(&verified.stderr);
    assert!(
        stderr.contains(&format!("packs/{victim}")) && stderr.contains(&name),
        "{stderr}"
    );
    let repaired = run(&["archive", "push", dir.to_str().unwrap(), &url]);
    assert!(repaired.status.success());
    assert!(
        String::from_utf8_lossy(&repaired.stderr).contains("damaged"),
        "{repaired:?}"
    );
    assert!(run(&["archive", "verify", &url]).status.success());
}

#[test]
fn a_push_that_seals_nothing_keeps_its_lock_alive_against_a_prune() {
    // Staleness scaled down from 15 minutes to 2 s, the refresh from 60 s to 50 ms. A push
    // whose pages are all present seals no pack; it takes longer than the staleness before
    // its manifest, and a prune then runs. Its lock must still be live: the prune refuses,
    // and nothing the push's manifest names is deleted.
    let mut fx = Fixture::new();
    let backend = Backend::local();
    let pusher = backend.archive();
    let pruner = Arc::new(backend.archive());
    let stale_after = Duration::from_secs(2);
    pusher
        .push(&fx.snapshot(), &PushOptions::default())
        .unwrap();
    fx.touch(MIB, 0x11);
    let middle = fx.snapshot();
    pusher.push(&middle, &PushOptions::default()).unwrap();
    fx.touch(MIB, 0x22);
    pusher
        .push(&fx.snapshot(), &PushOptions::default())
        .unwrap();

    let prune_result = Arc::new(std::sync::Mutex::new(None));
    let hook = {
        let (pruner, prune_result) = (pruner.clone(), prune_result.clone());
        Hook(Arc::new(move || {
            std::thread::sleep(stale_after + Duration::from_millis(500));
            *prune_result.lock().unwrap() = Some(pruner.prune(&PruneOptions {
                stale_after,
                lock_refresh: Duration::from_millis(50),
                ..PruneOptions::keep_last(1)
            }));
        }))
    };
    let pushed = pusher
        .push(
            &middle,
            &PushOptions {
                canister_id: Some(common::stranger()),
                stale_after,
                lock_refresh: Duration::from_millis(50),
                before_manifest: Some(hook),
                ..PushOptions::default()
            },
        )
        .unwrap();
    assert_eq!(pushed.packs_sent, 0, "the push sealed nothing: {pushed:?}");
    let prune_result = prune_result.lock().unwrap().take().expect("the hook ran");
    assert!(
        matches!(prune_result, Err(ArchiveError::PushInProgress { .. })),
        "{prune_result:?}"
    );
    backend.assert_every_named_pack_stored(&pusher);
    archive_pull_ok(&pusher, &pushed.manifest, &fx.pull_dir("b"));
}

#[test]
fn a_prune_checks_the_push_locks_again_just_before_it_deletes() {
    // A push lock that appears after the prune's first look (a push that started meanwhile)
    // stops the sweep: nothing is deleted.
    let mut fx = Fixture::new();
    let backend = Backend::local();
    let archive = backend.archive();
    for day in 0..3u8 {
        fx.touch(MIB, 0xC0 + day);
        archive
            .push(&fx.snapshot(), &PushOptions::default())
            .unwrap();
    }
    let before = archive.usage().unwrap();
    let hook = {
        let store = backend.store.clone();
        Hook(Arc::new(move || {
            let path =
                object_store::path::Path::from("team/archive/locks/push-started-meanwhile.json");
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(store.put(&path, PutPayload::from_static(b"{}")))
                .unwrap();
        }))
    };
    let refused = archive.prune(&PruneOptions {
        before_sweep: Some(hook),
        ..PruneOptions::keep_last(1)
    });
    assert!(
        matches!(refused, Err(ArchiveError::PushInProgress { .. })),
        "{refused:?}"
    );
    assert_eq!(archive.list(None).unwrap().len(), 3);
    let after = archive.usage().unwrap();
    assert_eq!((after.packs, after.bytes), (before.packs, before.bytes + 2));
    // Another client's live prune lock keeps a push waiting, then refused.
    backend.write_lock("prune");
    let waited = archive.push(
        &fx.snapshot(),
        &PushOptions {
            lock_wait: Duration::ZERO,
            ..PushOptions::default()
        },
    );
    assert!(
        matches!(waited, Err(ArchiveError::PruneInProgress { .. })),
        "{waited:?}"
    );
}

#[test]
fn a_hostile_manifest_is_refused_before_anything_is_allocated_or_read() {
    let mut fx = Fixture::new();
    let backend = Backend::local();
    let archive = backend.archive();
    let dir = fx.snapshot();
    let pushed = archive.push(&dir, &PushOptions::default()).unwrap();
    // A 1 TiB stable memory, one run of zero pages: metadata and runs agree, the name too.
    let mut manifest = archive.manifest(&pushed.manifest).unwrap();
    let mut metadata = manifest.metadata().unwrap();
    metadata.stable_memory_size = 1 << 40;
    manifest.metadata_candid = hex(&candid::encode_one(&metadata).unwrap());
    manifest.stable_memory = PageRuns {
        size: 1 << 40,
        runs: vec![Run(None, 0, 1 << 28)],
    };
    backend.put_manifest(&pushed.manifest, &manifest);
    let err = archive.manifest(&pushed.manifest).unwrap_err();
    assert!(
        matches!(&err, ArchiveError::Manifest { reason, .. } if reason.contains("stable_memory_size")),
        "{err:?}"
    );
    let out = fx.pull_dir("hostile");
    let err = archive
        .pull(&pushed.manifest, &out, &PullOptions::default())
        .unwrap_err();
    assert!(matches!(err, ArchiveError::Manifest { .. }), "{err:?}");
    assert_nothing_written(&out);
    let report = archive.verify(None).unwrap();
    assert!(
        report.damage[0].reason.contains("stable_memory_size"),
        "{report:?}"
    );
    // A hostile metadata.json in a snapshot directory: refused naming the field, before the
    // region file is even looked at.
    let snapshot_dir = SnapshotDir::new(&dir);
    let mut metadata = snapshot_dir.read_metadata().unwrap();
    metadata.stable_memory_size = 1 << 40;
    snapshot_dir.write_metadata(&metadata).unwrap();
    let err = archive.push(&dir, &PushOptions::default()).unwrap_err();
    assert!(err.to_string().contains("stable_memory_size"), "{err}");
    assert!(
        matches!(
            err,
            ArchiveError::Transfer(canister_snapshots::transfer::TransferError::Metadata { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn a_killed_pull_leaves_a_staging_directory_the_next_pull_removes() {
    let mut fx = Fixture::new();
    let backend = Backend::local();
    let archive = backend.archive();
    let pushed = archive
        .push(&fx.snapshot(), &PushOptions::default())
        .unwrap();
    let out = fx.pull_dir("restored");
    // What a pull killed midway leaves: its staging directory, half written, its lock gone
    // with the process; and one a pull still running holds.
    let abandoned = out.with_file_name(".restored.pull-4242-dead");
    std::fs::create_dir(&abandoned).unwrap();
    std::fs::write(abandoned.join("stable_memory.bin"), vec![1u8; 8192]).unwrap();
    let running = out.with_file_name(".restored.pull-4343-live");
    std::fs::create_dir(&running).unwrap();
    let held = canister_snapshots::transfer::lock_directory(&running)
        .unwrap()
        .unwrap();
    archive_pull_ok(&archive, &pushed.manifest, &out);
    assert!(
        !abandoned.exists(),
        "the killed pull's staging directory is removed"
    );
    assert!(running.exists(), "a running pull's is left alone");
    drop(held);
}

#[test]
fn a_push_whose_lock_could_not_be_rewritten_writes_no_manifest() {
    // The store refuses the push's lock rewrites for longer than half the (scaled-down)
    // staleness: a prune may have taken the push for crashed, so it stops before its manifest.
    let mut fx = Fixture::new();
    let backend = Backend::memory();
    let archive = backend.archive();
    let counter = backend.counter.clone();
    let hook = Hook(Arc::new(move || {
        counter.refuse_locks.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(600));
        counter.refuse_locks.store(false, Ordering::SeqCst);
    }));
    let dir = fx.snapshot();
    let err = archive
        .push(
            &dir,
            &PushOptions {
                stale_after: Duration::from_millis(400),
                lock_refresh: Duration::from_millis(20),
                before_manifest: Some(hook),
                ..PushOptions::default()
            },
        )
        .unwrap_err();
    assert!(
        matches!(&err, ArchiveError::LockLapsed { reason, .. } if reason.contains("refused")),
        "{err:?}"
    );
    assert_eq!(archive.list(None).unwrap(), []);
    // Run again, it completes (the pages stored are skipped).
    let again = archive.push(&dir, &PushOptions::default()).unwrap();
    assert_eq!(again.packs_sent, 0, "{again:?}");
    archive_pull_ok(&archive, &again.manifest, &fx.pull_dir("again"));
}
