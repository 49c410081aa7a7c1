//! Archive push and pull (`spec/archive.md`) beside the directory transfer of the same snapshot
//! in the same run: a fresh push, a second push after 1% of the pages changed (contiguous, and
//! scattered at random), a pull, and the archive's size after thirty daily snapshots.
//!
//! `cargo bench --bench archive`: 64 MiB by default; `ARCHIVE_BENCH_MIB=1024` for 1 GiB.
//! `ARCHIVE_BENCH_RUNS` (default 3) repetitions, medians reported. Without `--bench` (as
//! `cargo test --benches` runs it) one 16 MiB pass that checks nothing. Results:
//! benches/README.md.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candid::{Encode, Principal};
use canister_snapshots::archive::{Archive, PullOptions, PushOptions};
use canister_snapshots::progress::human_bytes;
use canister_snapshots::snapshots::SnapshotRegion;
use canister_snapshots::transfer::SnapshotDir;
use canister_snapshots::{Config, StateMachine, TEST_CANISTER_WASM};
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

    /// Takes a snapshot and downloads it: (directory, seconds the download took).
    fn snapshot(&mut self) -> (PathBuf, Duration) {
        let id = self
            .sm
            .take_canister_snapshot(self.canister, Some(user()), None)
            .unwrap()
            .id;
        let dir = self.path("snapshot");
        let start = Instant::now();
        self.sm
            .download_canister_snapshot(self.canister, Some(user()), id, &dir)
            .unwrap();
        (dir, start.elapsed())
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
        let store = env.path("archive");
        let archive = Archive::open(store.to_str().unwrap()).unwrap();
        let start = Instant::now();
        let report = archive.push(&dir, &PushOptions::default()).unwrap();
        push.push(start.elapsed());
        fresh_sent = report.bytes_sent;
        fresh_objects = archive.usage().unwrap().objects;
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
        "| | archive push (local files) | {} | sent {} in {fresh_objects} objects ({:.0} per GiB) | push ÷ download time {:.2} |",
        secs(push),
        human_bytes(fresh_sent),
        fresh_objects as f64 * (1u64 << 30) as f64 / snapshot_bytes as f64,
        push.as_secs_f64() / download.as_secs_f64()
    );
    println!(
        "| | archive pull (local files) | {} | | pull ÷ upload time {:.2}; pull ÷ download time {:.2} |",
        secs(pull),
        pull.as_secs_f64() / upload.as_secs_f64(),
        pull.as_secs_f64() / download.as_secs_f64()
    );

    // Second push after 1% of the pages changed.
    for (what, contiguous) in [("contiguous", true), ("scattered", false)] {
        let store = env.path("archive");
        let archive = Archive::open(store.to_str().unwrap()).unwrap();
        let (base, _) = env.snapshot();
        archive.push(&base, &PushOptions::default()).unwrap();
        if contiguous {
            env.change_contiguous();
        } else {
            env.change_scattered();
        }
        let (second, took) = env.snapshot();
        let start = Instant::now();
        let report = archive.push(&second, &PushOptions::default()).unwrap();
        let pushed = start.elapsed();
        println!(
            "| second push, 1% of pages changed ({what}) | directory download {} | push {} | sent {} = {:.2}% of the snapshot ({} of {} pages) |",
            secs(took),
            secs(pushed),
            human_bytes(report.bytes_sent),
            100.0 * report.bytes_sent as f64 / snapshot_bytes as f64,
            report.pages_sent,
            report.pages
        );
        std::fs::remove_dir_all(&store).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
        std::fs::remove_dir_all(&second).unwrap();
    }

    // Thirty daily snapshots, 1% (scattered) changed a day: what the archive holds. The
    // directories are edited in place (a copy of yesterday's, 1% of the heap rewritten), which
    // is what a day's download would produce, without a replica in the loop.
    let store = env.path("archive");
    let archive = Archive::open(store.to_str().unwrap()).unwrap();
    let day = env.path("day");
    copy_dir(&dir, &day);
    let options = PushOptions {
        canister_id: Some(env.canister),
        ..PushOptions::default()
    };
    let snapshot_dir = SnapshotDir::new(&day);
    let mut metadata = snapshot_dir.validate().unwrap();
    let heap = snapshot_dir.region_path(SnapshotRegion::WasmMemory);
    let start = Instant::now();
    for _ in 0..dailies {
        metadata.taken_at_timestamp += 86_400_000_000_000;
        snapshot_dir.write_metadata(&metadata).unwrap();
        let _ = std::fs::remove_file(snapshot_dir.checksum_path());
        archive.push(&day, &options).unwrap();
        let mut bytes = std::fs::read(&heap).unwrap();
        // 1% of the pages, one in a hundred from a random start: every 1 MiB block touched.
        let start = env.rng.next() % 100;
        for page in (start..size / PAGE).step_by(100) {
            let fresh = env.rng.bytes(PAGE);
            bytes[(page * PAGE) as usize..((page + 1) * PAGE) as usize].copy_from_slice(&fresh);
        }
        std::fs::write(&heap, bytes).unwrap();
    }
    let usage = archive.usage().unwrap();
    println!(
        "| {dailies} daily snapshots, 1% scattered change a day | archive {} in {} objects = {:.2}× one snapshot ({}) | {} |",
        human_bytes(usage.bytes),
        usage.objects,
        usage.bytes as f64 / snapshot_bytes as f64,
        human_bytes(snapshot_bytes),
        secs(start.elapsed())
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}
