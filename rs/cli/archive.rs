//! `canister-snapshots archive …`: snapshot directories into and out of an object-store
//! archive (`spec/archive.md`). Credentials come from the environment, as `object_store`
//! reads them (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`, …).

use std::path::PathBuf;

use candid::Principal;
use clap::Subcommand;

use crate::archive::{Archive, PruneOptions, PullOptions, PushOptions, PushReport, VerifyReport};
use crate::memory::checksum::hex;
use crate::progress::human_bytes;

#[derive(Subcommand, Debug)]
pub enum ArchiveCommand {
    /// Push a snapshot directory into an archive (pages already there are skipped); prints
    /// the manifest's name.
    Push {
        dir: PathBuf,
        /// s3://BUCKET[/PREFIX], file:///PATH or a plain path.
        url: String,
        /// The canister, if DIR has no checksum.json naming it (directories of other tools).
        #[arg(long, value_name = "ID")]
        canister: Option<String>,
        /// Hash every page of every pack the push relies on, not only check the packs' sizes
        /// (reads each such pack once).
        #[arg(long)]
        verify: bool,
    },
    /// Pull a manifest back into a new dfx-compatible directory, verified end to end.
    Pull {
        url: String,
        /// CANISTER/TIMESTAMP-CHECKSUM, as `archive list` prints it.
        manifest: String,
        dir: PathBuf,
    },
    /// The archive's manifests, oldest first per canister.
    List {
        url: String,
        #[arg(long, value_name = "ID")]
        canister: Option<String>,
    },
    /// Check the archive end to end: every manifest (or NAME), every pack it names (present,
    /// the right size, the index hashing to its name, every page to its index entry). Names
    /// what is missing or damaged and exits non-zero if anything is.
    Verify {
        url: String,
        /// CANISTER/TIMESTAMP-CHECKSUM: check this manifest only.
        manifest: Option<String>,
    },
    /// Keep the newest N manifests per canister, then delete the packs nothing references.
    Prune {
        url: String,
        #[arg(long, value_name = "N")]
        keep_last: usize,
        #[arg(long, value_name = "ID")]
        canister: Option<String>,
    },
}

fn principal(text: Option<String>) -> Result<Option<Principal>, String> {
    text.map(|text| Principal::from_text(&text).map_err(|e| format!("--canister {text:?}: {e}")))
        .transpose()
}

pub fn open(url: &str) -> Result<Archive, String> {
    Archive::open(url).map_err(|e| e.to_string())
}

/// One line on what a push sent, for standard error.
pub fn push_summary(report: &PushReport) -> String {
    if report.already_archived {
        return "already archived, every pack it needs whole: nothing sent".into();
    }
    let repaired = match report.packs_damaged.len() {
        0 => String::new(),
        n => format!(
            "; {n} missing or damaged packs found ({}), their pages stored again",
            report.packs_damaged.join(", ")
        ),
    };
    format!(
        "sent {} ({} new pages of {}, in {} packs) for a snapshot of {}{repaired}",
        human_bytes(report.bytes_sent),
        report.pages_sent,
        report.pages,
        report.packs_sent,
        human_bytes(report.snapshot_bytes)
    )
}

/// What `archive verify` prints: one line per missing or damaged object, then a summary.
pub fn verify_summary(report: &VerifyReport) -> String {
    let mut lines: Vec<String> = report
        .damage
        .iter()
        .map(|d| {
            let needed = if d.manifests.is_empty() {
                String::new()
            } else {
                format!(" (needed by {})", d.manifests.join(", "))
            };
            format!("damaged: {}: {}{needed}", d.object, d.reason)
        })
        .collect();
    lines.push(format!(
        "checked {} manifests and {} packs ({} read): {}",
        report.manifests,
        report.packs,
        human_bytes(report.bytes_read),
        if report.is_whole() {
            "every manifest can be pulled".to_string()
        } else {
            format!("{} objects missing or damaged", report.damage.len())
        }
    ));
    lines.join("\n")
}

/// Runs an `archive` subcommand.
pub fn run(command: ArchiveCommand) -> Result<(), String> {
    match command {
        ArchiveCommand::Push {
            dir,
            url,
            canister,
            verify,
        } => {
            let options = PushOptions {
                canister_id: principal(canister)?,
                verify_pages: verify,
                ..PushOptions::default()
            };
            let report = open(&url)?
                .push(&dir, &options)
                .map_err(|e| e.to_string())?;
            eprintln!("{}", push_summary(&report));
            println!("{}", report.manifest);
            Ok(())
        }
        ArchiveCommand::Pull { url, manifest, dir } => {
            let report = open(&url)?
                .pull(&manifest, &dir, &PullOptions::default())
                .map_err(|e| e.to_string())?;
            println!(
                "pulled {} into {}: {} received, checksum {} verified",
                report.manifest,
                dir.display(),
                human_bytes(report.bytes_received),
                hex(&report.checksum)
            );
            Ok(())
        }
        ArchiveCommand::List { url, canister } => {
            for manifest in open(&url)?
                .list(principal(canister)?)
                .map_err(|e| e.to_string())?
            {
                println!(
                    "{}  {:>10}  {}",
                    manifest.name(),
                    human_bytes(manifest.snapshot_bytes()),
                    manifest.label.as_deref().unwrap_or("")
                );
            }
            Ok(())
        }
        ArchiveCommand::Verify { url, manifest } => {
            let report = open(&url)?
                .verify(manifest.as_deref())
                .map_err(|e| e.to_string())?;
            let summary = verify_summary(&report);
            if report.is_whole() {
                println!("{summary}");
                Ok(())
            } else {
                Err(format!(
                    "{summary}\npush the snapshots that need them again (if you still have \
                     them) to repair the archive"
                ))
            }
        }
        ArchiveCommand::Prune {
            url,
            keep_last,
            canister,
        } => {
            let options = PruneOptions {
                canister_id: principal(canister)?,
                ..PruneOptions::keep_last(keep_last)
            };
            let report = open(&url)?.prune(&options).map_err(|e| e.to_string())?;
            for name in &report.manifests_deleted {
                println!("deleted {name}");
            }
            println!(
                "kept {} manifests; deleted {} unreferenced packs ({})",
                report.manifests_kept,
                report.packs_deleted,
                human_bytes(report.bytes_freed)
            );
            Ok(())
        }
    }
}
