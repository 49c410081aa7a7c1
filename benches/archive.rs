//! Archive push and pull (`spec/archive.md`) beside the directory transfer of the same snapshot
//! in the same run: a fresh push, a second push after 1% of the pages changed (contiguous, and
//! scattered at random), a pull, and the archive's size after thirty daily snapshots.
//!
//! Like with like: the archive lives on local files through `object_store`'s local store with
//! `fsync` on (each object synced before it is published, as the directory download syncs its
//! files), and every byte and object sent is counted by a wrapper around that store
//! (`tests/common/counting_store.rs`, the one `tests/archive.rs` asserts with), not taken from
//! the archive's own report. The thirty days are thirty real snapshots: each day 1% of the
//! heap's pages (chosen at random) is rewritten through canister messages, a snapshot is taken,
//! downloaded and pushed.
//!
//! `cargo bench --bench archive`: 64 MiB by default; `ARCHIVE_BENCH_MIB=1024` for 1 GiB.
//! `ARCHIVE_BENCH_RUNS` (default 3) repetitions, medians reported. Without `--bench` (as
//! `cargo test --benches` runs it) one 16 MiB pass that checks nothing. Results:
//! benches/README.md.

#[path = "../tests/common/counting_store.rs"]
mod counting_store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candid::{Encode, Principal};
use canister_snapshots::archive::{Archive, PullOptions, PushOptions};
use canister_snapshots::progress::human_bytes;
use canister_snapshots::transfer::SnapshotDir;
use canister_snapshots::{Config, StateMachine, TEST_CANISTER_WASM};
use counting_store::CountingStore;
use serde_bytes::ByteBuf;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

fn user() -> Principal {
    Principal::from_slice(&[0x42; 29])
}

/// xorshift64*: varied bytes that do not deduplicate, reproducibly.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn bytes(&mut self, len: u64) -> Vec<u8> {
        (0..len / 8)
            .flat_map(|_| self.next().to_le_bytes())
            .collect()
    }
}

struct Env {
    sm: StateMachine,
    canister: Principal,
    size: u64,
    rng: Rng,
    tmp: tempfile::TempDir,
    n: u32,
}

impl Env {
    fn new(size: u64) -> Self {
        let mut sm = StateMachine::with_config(Config {
            max_snapshots_per_canister: 10,
            ..Config::default()
        });
        let canister = sm.create_canister_with_settings(Some(user()), None);
        sm.install_canister(canister, TEST_CANISTER_WASM.to_vec(), vec![], Some(user()));
        let mut env = Env {
            sm,
            canister,
            size,
            rng: Rng(0x9E37_79B9_7F4A_7C15),
            tmp: tempfile::tempdir().unwrap(),
            n: 0,
        };
        let mut offset = 0;
        while offset < size {
            let piece = env.rng.bytes(MIB.min(size - offset));
            env.write(offset, piece);
            offset += MIB;
        }
        env
    }

    fn write(&mut self, offset: u64, bytes: Vec<u8>) {
        let arg = Encode!(&offset, &ByteBuf::from(bytes)).unwrap();
        self.sm
            .update_call(self.canister, user(), "write_heap", arg)
            .unwrap();
        while self.sm.state().canisters[&self.canister].heap_delta_debit
            >= self.sm.config().heap_delta_rate_limit_bytes
        {
            self.sm.tick();
        }
    }

    /// 1% of the heap's pages, one contiguous run (an append log, a rewritten table).
    fn change_contiguous(&mut self) {
        let pages = self.size / PAGE / 100;
        let start = self.rng.next() % (self.size / PAGE - pages);
        let bytes = self.rng.bytes(pages * PAGE);
        // In messages of at most 1 MiB: an ingress message is limited to 2 MB.
        for (i, piece) in bytes.chunks(MIB as usize).enumerate() {
            self.write(start * PAGE + i as u64 * MIB, piece.to_vec());
        }
    }

    /// 1% of the heap's pages, each chosen at random.
    fn change_scattered(&mut self) {
        for _ in 0..self.size / PAGE / 100 {
            let page = self.rng.next() % (self.size / PAGE);
            let bytes = self.rng.bytes(PAGE);
            self.write(page * PAGE, bytes);
        }
    }

    fn path(&mut self, what: &str) -> PathBuf {
        self.n += 1;
        self.tmp.path().join(format!("{what}-{}", self.n))
    }

    /// Takes a snapshot, downloads it and deletes it from the replica (it lives on in the
    /// directory): (directory, time the download took).
    fn snapshot(&mut self) -> (PathBuf, Duration) {
        let id = self
            .sm
            .take_canister_snapshot(self.canister, Some(user()), None)
            .unwrap()
            .id;
        let dir = self.path("snapshot");
        let start = Instant::now();
        self.sm
            .download_canister_snapshot(self.canister, Some(user()), id.clone(), &dir)
            .unwrap();
        let took = start.elapsed();
        self.sm
            .delete_canister_snapshot(self.canister, Some(user()), id)
            .unwrap();
        (dir, took)
    }

    /// A new archive on local files, with `fsync` on, behind a counter of what it receives.
    fn archive(&mut self) -> (Archive, Arc<CountingStore>, PathBuf) {
        let path = self.path("archive");
        std::fs::create_dir_all(&path).unwrap();
        let local = object_store::local::LocalFileSystem::new_with_prefix(&path)
            .unwrap()
            .with_fsync(true);
        let counter = Arc::new(CountingStore::new(Arc::new(local)));
        let archive = Archive::with_store(counter.clone(), "").unwrap();
        (archive, counter, path)
    }

    fn upload_time(&mut self, dir: &Path) -> Duration {
        let start = Instant::now();
        let id = self
            .sm
            .upload_canister_snapshot(self.canister, Some(user()), dir, None)
            .unwrap();
        let elapsed = start.elapsed();
        self.sm
            .delete_canister_snapshot(self.canister, Some(user()), id)
            .unwrap();
        elapsed
    }
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let env_u64 = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let size = if bench {
        env_u64("ARCHIVE_BENCH_MIB", 64)
    } else {
        16
    } * MIB;
    let runs = if bench {
        env_u64("ARCHIVE_BENCH_RUNS", 3)
    } else {
        1
    } as usize;
    let dailies = if bench {
        env_u64("ARCHIVE_BENCH_DAYS", 30)
    } else {
        2
    };
    println!("archive benchmark: heap {}, {runs} runs", human_bytes(size));

    let mut env = Env::new(size);
    let (dir, _) = env.snapshot();
    let snapshot_bytes = {
        let m = SnapshotDir::new(&dir).validate().unwrap();
        m.wasm_module_size + m.wasm_memory_size + m.stable_memory_size
    };

    // Fresh push and pull, each beside the directory transfer of the same snapshot.
    let (mut download, mut upload, mut push, mut pull) = (vec![], vec![], vec![], vec![]);
    let (mut fresh_sent, mut fresh_objects) = (0, 0);
    for _ in 0..runs {
        let (again, took) = env.snapshot();
        download.push(took);
        upload.push(env.upload_time(&again));
        let (archive, counter, store) = env.archive();
        let start = Instant::now();
        let report = archive.push(&dir, &PushOptions::default()).unwrap();
        push.push(start.elapsed());
        (fresh_sent, fresh_objects) = (counter.put_bytes(), counter.puts());
        let out = env.path("pulled");
        let start = Instant::now();
        archive
            .pull(&report.manifest, &out, &PullOptions::default())
            .unwrap();
        pull.push(start.elapsed());
        std::fs::remove_dir_all(&out).unwrap();
        std::fs::remove_dir_all(&again).unwrap();
        std::fs::remove_dir_all(&store).unwrap();
    }
    let (download, upload, push, pull) =
        (median(download), median(upload), median(push), median(pull));
    println!(
        "| fresh {} | directory download | {} |",
        human_bytes(snapshot_bytes),
        secs(download)
    );
    println!("| | directory upload | {} |", secs(upload));
    println!(
        "| | archive push (local files, fsync) | {} | the store received {} in {fresh_objects} objects ({:.0} per GiB) | push ÷ download time {:.2} |",
        secs(push),
        human_bytes(fresh_sent),
        fresh_objects as f64 * (1u64 << 30) as f64 / snapshot_bytes as f64,
        push.as_secs_f64() / download.as_secs_f64()
    );
    println!(
        "| | archive pull (local files, fsync) | {} | | pull ÷ upload time {:.2}; pull ÷ download time {:.2} |",
        secs(pull),
        pull.as_secs_f64() / upload.as_secs_f64(),
        pull.as_secs_f64() / download.as_secs_f64()
    );

    // Second push after 1% of the pages changed.
    for (what, contiguous) in [("contiguous", true), ("scattered", false)] {
        let (archive, counter, store) = env.archive();
        let (base, _) = env.snapshot();
        archive.push(&base, &PushOptions::default()).unwrap();
        let before = counter.put_bytes();
        if contiguous {
            env.change_contiguous();
        } else {
            env.change_scattered();
        }
        let (second, took) = env.snapshot();
        let start = Instant::now();
        let report = archive.push(&second, &PushOptions::default()).unwrap();
        let pushed = start.elapsed();
        let sent = counter.put_bytes() - before;
        println!(
            "| second push, 1% of pages changed ({what}) | directory download {} | push {} | the store received {} = {:.2}% of the snapshot ({} of {} pages new) |",
            secs(took),
            secs(pushed),
            human_bytes(sent),
            100.0 * sent as f64 / snapshot_bytes as f64,
            report.pages_sent,
            report.pages
        );
        std::fs::remove_dir_all(&store).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
        std::fs::remove_dir_all(&second).unwrap();
    }

    // Thirty daily snapshots, 1% of the pages (at random) rewritten a day through canister
    // messages: each day a real snapshot, downloaded and pushed. What the archive holds.
    let (archive, counter, _store) = env.archive();
    let options = PushOptions {
        canister_id: Some(env.canister),
        ..PushOptions::default()
    };
    let mut pushing = Duration::ZERO;
    for day in 0..dailies {
        if day > 0 {
            env.change_scattered();
        }
        let (today, _) = env.snapshot();
        let start = Instant::now();
        archive.push(&today, &options).unwrap();
        pushing += start.elapsed();
        std::fs::remove_dir_all(&today).unwrap();
    }
    let usage = archive.usage().unwrap();
    println!(
        "| {dailies} daily snapshots, 1% scattered change a day | archive {} in {} objects = {:.2}× one snapshot ({}); the store received {} in {} objects | {} for the {dailies} pushes |",
        human_bytes(usage.bytes),
        usage.objects,
        usage.bytes as f64 / snapshot_bytes as f64,
        human_bytes(snapshot_bytes),
        human_bytes(counter.put_bytes()),
        counter.puts(),
        secs(pushing)
    );
}
