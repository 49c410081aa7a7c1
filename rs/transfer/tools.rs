//! Offline tools on snapshot directories: inspect, diff. They read files only.

use std::fmt::Write as _;
use std::path::Path;

use super::{SnapshotDir, TransferError, dir};
use crate::memory::PAGE_SIZE;
use crate::memory::checksum::hex;
use crate::progress::human_bytes;
use crate::snapshots::SnapshotRegion;

/// Page ranges `[first, first + count)` as (first page, count), in order.
pub type PageRanges = Vec<(u64, u64)>;

/// The page a byte offset lies in.
fn page_of(offset: u64) -> u64 {
    offset.checked_div(PAGE_SIZE as u64).unwrap_or(0)
}

/// Bytes in `pages` pages (saturating: a count from a file cannot overflow the arithmetic).
fn bytes_of(pages: u64) -> u64 {
    pages.saturating_mul(PAGE_SIZE as u64)
}

fn push_page(ranges: &mut PageRanges, page: u64) {
    match ranges.last_mut() {
        Some((first, count)) if first.saturating_add(*count) == page => {
            *count = count.saturating_add(1)
        }
        _ => ranges.push((page, 1)),
    }
}

/// The runs of pages of a file that are not all zero.
pub fn nonzero_page_ranges(path: &Path) -> Result<PageRanges, TransferError> {
    let mut ranges = PageRanges::new();
    dir::for_each_block(path, |offset, block| {
        for (i, page) in block.chunks(PAGE_SIZE).enumerate() {
            if page.iter().any(|&b| b != 0) {
                push_page(&mut ranges, page_of(offset).saturating_add(i as u64));
            }
        }
    })?;
    Ok(ranges)
}

/// Formats at most `limit` ranges as byte ranges.
fn format_ranges(ranges: &PageRanges, limit: usize) -> String {
    let mut out = String::new();
    for (first, count) in ranges.iter().take(limit) {
        let start = bytes_of(*first);
        let _ = write!(
            out,
            "[{start:#x}, {:#x}) ",
            start.saturating_add(bytes_of(*count))
        );
    }
    if ranges.len() > limit {
        let _ = write!(out, "… and {} more", ranges.len().saturating_sub(limit));
    }
    out.trim_end().to_string()
}

/// A human-readable summary of a snapshot directory: sizes, globals, certified data,
/// checksum (recomputed, and compared with `checksum.json` if present), non-zero page ranges.
pub fn inspect(path: &Path) -> Result<String, TransferError> {
    let snapshot_dir = SnapshotDir::new(path);
    let (metadata, checksum) = snapshot_dir.validate_and_checksum()?;
    let mut out = String::new();
    let _ = writeln!(out, "snapshot directory {}", path.display());
    if let Some(record) = snapshot_dir.read_checksum_record()? {
        let _ = writeln!(
            out,
            "  snapshot {} of canister {}{}",
            record.snapshot_id,
            record.canister_id,
            record
                .label
                .as_deref()
                .map(|l| format!(", label {l:?}"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(
        out,
        "  taken at {} ns, canister version {}, source {:?}",
        metadata.taken_at_timestamp, metadata.canister_version, metadata.source
    );
    for region in super::REGIONS {
        let size = SnapshotDir::region_size(&metadata, region);
        let line = match region {
            SnapshotRegion::WasmModule => {
                let bytes = snapshot_dir.read_module()?;
                format!("sha256 {}", hex(&crate::memory::checksum::sha256(&bytes)))
            }
            _ => {
                let ranges = nonzero_page_ranges(&snapshot_dir.region_path(region))?;
                let nonzero = bytes_of(ranges.iter().map(|(_, c)| c).sum::<u64>());
                format!(
                    "{} non-zero in {} ranges: {}",
                    human_bytes(nonzero),
                    ranges.len(),
                    format_ranges(&ranges, 8)
                )
            }
        };
        let _ = writeln!(
            out,
            "  {:<14} {:>12}  {line}",
            region.name(),
            human_bytes(size)
        );
    }
    let _ = writeln!(out, "  globals        {:?}", metadata.globals);
    let _ = writeln!(out, "  certified data {}", hex(&metadata.certified_data));
    let _ = writeln!(
        out,
        "  chunk store    {} chunks",
        metadata.wasm_chunk_store.len()
    );
    let _ = writeln!(out, "  checksum       {}", hex(&checksum));
    Ok(out)
}

/// How one region differs between two directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionDiff {
    pub region: SnapshotRegion,
    pub size_a: u64,
    pub size_b: u64,
    /// Pages of B that differ from A (A read as zeros past its end).
    pub changed: PageRanges,
}

impl RegionDiff {
    pub fn changed_bytes(&self) -> u64 {
        bytes_of(self.changed.iter().map(|(_, c)| c).sum::<u64>())
    }
}

/// What differs between two snapshot directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffReport {
    pub regions: Vec<RegionDiff>,
    pub globals_differ: bool,
    pub certified_data_differ: bool,
    pub chunk_store_differs: bool,
}

impl DiffReport {
    /// A readable report, including what an incremental upload of B over A would send.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut total = 0u64;
        for r in &self.regions {
            let sizes = if r.size_a == r.size_b {
                human_bytes(r.size_a)
            } else {
                format!("{} -> {}", human_bytes(r.size_a), human_bytes(r.size_b))
            };
            let _ = writeln!(
                out,
                "{:<14} {sizes}: {} changed in {} ranges {}",
                r.region.name(),
                human_bytes(r.changed_bytes()),
                r.changed.len(),
                format_ranges(&r.changed, 8)
            );
            total = total.saturating_add(r.changed_bytes());
        }
        let _ = writeln!(
            out,
            "globals {}, certified data {}, chunk store {}",
            if self.globals_differ {
                "differ"
            } else {
                "equal"
            },
            if self.certified_data_differ {
                "differs"
            } else {
                "equal"
            },
            if self.chunk_store_differs {
                "differs"
            } else {
                "equal"
            },
        );
        let _ = writeln!(
            out,
            "an incremental upload of B over A sends {}",
            human_bytes(total)
        );
        out
    }
}

/// Compares two snapshot directories page by page.
pub fn diff(a: &Path, b: &Path) -> Result<DiffReport, TransferError> {
    let (dir_a, dir_b) = (SnapshotDir::new(a), SnapshotDir::new(b));
    let (meta_a, meta_b) = (dir_a.validate()?, dir_b.validate()?);
    let mut regions = Vec::new();
    for region in super::REGIONS {
        let size_a = SnapshotDir::region_size(&meta_a, region);
        let size_b = SnapshotDir::region_size(&meta_b, region);
        let path_a = dir_a.region_path(region);
        let file_a = dir::open_plain_file(&path_a)?;
        let mut reader_a = std::io::BufReader::new(file_a);
        let mut block_a = Vec::new();
        let mut changed = PageRanges::new();
        let mut failed = None;
        dir::for_each_block(&dir_b.region_path(region), |offset, block| {
            block_a.clear();
            block_a.resize(block.len(), 0);
            if let Err(e) = dir::read_full(&mut reader_a, &mut block_a) {
                failed.get_or_insert(e);
            }
            for (first, count) in dir::changed_page_runs(&block_a, block) {
                for page in first..first.saturating_add(count) {
                    push_page(&mut changed, page_of(offset).saturating_add(page));
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(TransferError::io(&path_a, e));
        }
        regions.push(RegionDiff {
            region,
            size_a,
            size_b,
            changed,
        });
    }
    Ok(DiffReport {
        regions,
        // Compared as this crate's globals: floats by their bits, so NaN payloads count.
        globals_differ: dir::metadata_globals(&meta_a)? != dir::metadata_globals(&meta_b)?,
        certified_data_differ: meta_a.certified_data != meta_b.certified_data,
        chunk_store_differs: dir::chunk_hashes(&meta_a) != dir::chunk_hashes(&meta_b),
    })
}

/// Parses lower- or upper-case hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    // `from_str_radix` alone would take a sign ("+f").
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i.saturating_add(2))?, 16).ok())
        .collect()
}
