//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) on stable, through the same
//! drivers the fuzz targets run (`fuzz/drivers/`), so that CI catches a regression without
//! nightly or libFuzzer. Also checks that the committed seeds are the ones the drivers build
//! (`FUZZ_WRITE_SEEDS=1 cargo test --test fuzz_corpus` rewrites them) and that the input
//! format's encoder is the exact inverse of its decoder.
//!
//! Inputs that reproduce a known, unfixed bug are named `known-bug-*` and replayed by their
//! own `#[ignore]`d test, which names the bug.

#[path = "../fuzz/drivers/mod.rs"]
#[allow(dead_code)]
mod drivers;

use std::path::{Path, PathBuf};

use drivers::TARGETS;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// The corpus files of `target`, in name order.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect()
}

fn target(name: &str) -> &'static drivers::Target {
    TARGETS.iter().find(|t| t.name == name).expect("a target")
}

/// Runs every input of `target` whose name passes `filter`; reports all failing inputs.
fn replay(name: &str, filter: impl Fn(&str) -> bool) {
    let target = target(name);
    let inputs: Vec<_> = corpus(name)
        .into_iter()
        .filter(|(file, _)| filter(file))
        .collect();
    let failures: Vec<String> = inputs
        .iter()
        .filter(|(_, data)| std::panic::catch_unwind(|| (target.run)(data)).is_err())
        .map(|(file, _)| format!("fuzz/corpus/{name}/{file}"))
        .collect();
    assert!(
        failures.is_empty(),
        "{name}: {} of {} inputs fail (replay one with `cargo +nightly fuzz run {name} <file>`): {failures:#?}",
        failures.len(),
        inputs.len()
    );
}

fn is_known_bug(file: &str) -> bool {
    file.starts_with("known-bug-")
}

macro_rules! replay_corpus {
    ($($target:ident),* $(,)?) => {$(
        #[test]
        fn $target() {
            let name = stringify!($target);
            assert!(
                corpus(name).iter().any(|(file, _)| !is_known_bug(file)),
                "{name}: no corpus"
            );
            replay(name, |file| !is_known_bug(file));
        }
    )*};
}

/// Inputs of open bugs (none at present; the set_global crash of an uploaded snapshot with
/// fewer globals than its module was one until main validated uploads on load): they fail, so
/// the ordinary replay skips them. Name the bug in the file name and in the commit.
#[test]
#[ignore = "replays the known-bug-* inputs, which fail until their bug is fixed"]
fn known_bugs() {
    for target in TARGETS {
        replay(target.name, is_known_bug);
    }
}

replay_corpus!(
    management_payload,
    canister_payload,
    management_sequence,
    snapshot_upload,
    snapshot_dir,
    page_map_ops,
    http_request,
    wasm_module,
);

#[test]
fn committed_seeds_are_the_drivers_seeds() {
    let write = std::env::var_os("FUZZ_WRITE_SEEDS").is_some();
    for target in TARGETS {
        let dir = corpus_dir(target.name);
        for (seed, bytes) in (target.seeds)() {
            let file = if is_known_bug(&seed) {
                seed
            } else {
                format!("seed-{seed}")
            };
            let path = dir.join(file);
            if write {
                // Through a rename, so that the replays running in parallel never read half a
                // file.
                std::fs::create_dir_all(&dir).unwrap();
                let part = path.with_extension("part");
                std::fs::write(&part, &bytes).unwrap();
                std::fs::rename(&part, &path).unwrap();
            }
            let committed = std::fs::read(&path).unwrap_or_default();
            assert!(
                committed == bytes,
                "{} differs from the seed the driver builds: run \
                 `FUZZ_WRITE_SEEDS=1 cargo test --test fuzz_corpus` and commit the corpus",
                path.display()
            );
        }
    }
}

/// Seeds are written as values; they must decode to the same values, or the committed corpus
/// would not exercise what its names say.
#[test]
fn seeds_decode_to_the_values_they_were_built_from() {
    use drivers::input::{Encode, decode};
    use drivers::{management_sequence, page_map_ops, snapshot_dir, snapshot_upload};
    fn roundtrip<T>(name: &str, value: &T)
    where
        T: Encode + for<'a> arbitrary::Arbitrary<'a> + PartialEq + std::fmt::Debug,
    {
        let bytes = value.to_bytes();
        let decoded: T = decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&decoded, value, "{name}");
    }
    for (name, value) in management_sequence::sequences() {
        roundtrip(name, &value);
    }
    for (name, value) in snapshot_upload::uploads() {
        roundtrip(name, &value);
    }
    for (name, value) in snapshot_dir::dirs() {
        roundtrip(name, &value);
    }
    for (name, value) in page_map_ops::sequences() {
        roundtrip(name, &value);
    }
}
