//! A canister's history: the IC's `change` records, plus the one change this project adds.
//!
//! The IC records creation, code deployment and uninstallation, controllers changes, snapshot
//! loads and renames (`ic_management_canister_types::ChangeDetails`); a take is not a change
//! there. This project also records every *scheduled* take (`spec/management.md`, "Scheduled
//! snapshots"), as one more variant of the details, `scheduled_snapshot`. The types here are
//! the IC's field for field, so that the Candid `canister_info` replies with is the IC's
//! `change` extended the way the IC itself extends it (it added `load_snapshot` and
//! `rename_canister` the same way): a client decoding with the IC's Rust types, whose `details`
//! is an `opt`, reads a variant it does not know as `null` (Candid's rule for `opt`, applied
//! value by value) and every other entry unchanged.
//!
//! Plain data like the rest of [`crate::state`]: the entries are kept in insertion order, and
//! nothing here reads a clock.

use std::collections::VecDeque;

use candid::CandidType;
use ic_management_canister_types::{
    Change, ChangeDetails, ChangeOrigin, CodeDeploymentRecord, ControllersChangeRecord,
    CreationRecord, LoadSnapshotRecord, RenameCanisterRecord,
};
use serde::{Deserialize, Serialize};

/// Changes kept in a canister's history; older ones are dropped but still counted.
pub const MAX_CANISTER_HISTORY_CHANGES: usize = 20;

/// One history entry: the IC's `Change` with [`CanisterChangeDetails`] as its details.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CanisterChange {
    /// Batch time of the change, ns since the Unix epoch.
    pub timestamp_nanos: u64,
    /// The canister's version after the change.
    pub canister_version: u64,
    pub origin: ChangeOrigin,
    pub details: Option<CanisterChangeDetails>,
}

/// The IC's `ChangeDetails` (same variants, same Candid names) plus `scheduled_snapshot`.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum CanisterChangeDetails {
    #[serde(rename = "creation")]
    Creation(CreationRecord),
    #[serde(rename = "code_uninstall")]
    CodeUninstall,
    #[serde(rename = "code_deployment")]
    CodeDeployment(CodeDeploymentRecord),
    #[serde(rename = "load_snapshot")]
    LoadSnapshot(LoadSnapshotRecord),
    #[serde(rename = "controllers_change")]
    ControllersChange(ControllersChangeRecord),
    #[serde(rename = "rename_canister")]
    RenameCanister(RenameCanisterRecord),
    /// Extension: the round loop took a scheduled snapshot.
    #[serde(rename = "scheduled_snapshot")]
    ScheduledSnapshot(ScheduledSnapshotRecord),
}

/// A scheduled take: the snapshot it made and the older scheduled snapshot it replaced, if the
/// schedule already held `keep` of them. The entry's origin is the controller that set the
/// schedule, as whom the take ran.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ScheduledSnapshotRecord {
    #[serde(with = "serde_bytes")]
    pub snapshot_id: Vec<u8>,
    pub replaced_snapshot: Option<serde_bytes::ByteBuf>,
}

impl From<ChangeDetails> for CanisterChangeDetails {
    fn from(details: ChangeDetails) -> Self {
        match details {
            ChangeDetails::Creation(r) => CanisterChangeDetails::Creation(r),
            ChangeDetails::CodeUninstall => CanisterChangeDetails::CodeUninstall,
            ChangeDetails::CodeDeployment(r) => CanisterChangeDetails::CodeDeployment(r),
            ChangeDetails::LoadSnapshot(r) => CanisterChangeDetails::LoadSnapshot(r),
            ChangeDetails::ControllersChange(r) => CanisterChangeDetails::ControllersChange(r),
            ChangeDetails::RenameCanister(r) => CanisterChangeDetails::RenameCanister(r),
        }
    }
}

impl CanisterChangeDetails {
    /// The IC's details, or `None` for the extension: what a client decoding with the IC's
    /// types reads.
    pub fn to_ic(&self) -> Option<ChangeDetails> {
        Some(match self {
            CanisterChangeDetails::Creation(r) => ChangeDetails::Creation(r.clone()),
            CanisterChangeDetails::CodeUninstall => ChangeDetails::CodeUninstall,
            CanisterChangeDetails::CodeDeployment(r) => ChangeDetails::CodeDeployment(r.clone()),
            CanisterChangeDetails::LoadSnapshot(r) => ChangeDetails::LoadSnapshot(r.clone()),
            CanisterChangeDetails::ControllersChange(r) => {
                ChangeDetails::ControllersChange(r.clone())
            }
            CanisterChangeDetails::RenameCanister(r) => ChangeDetails::RenameCanister(r.clone()),
            CanisterChangeDetails::ScheduledSnapshot(_) => return None,
        })
    }
}

impl From<Change> for CanisterChange {
    fn from(change: Change) -> Self {
        CanisterChange {
            timestamp_nanos: change.timestamp_nanos,
            canister_version: change.canister_version,
            origin: change.origin,
            details: change.details.map(CanisterChangeDetails::from),
        }
    }
}

impl CanisterChange {
    /// The entry as a client decoding with the IC's `Change` reads it: the extension's details
    /// are `None`.
    pub fn to_ic(&self) -> Change {
        Change {
            timestamp_nanos: self.timestamp_nanos,
            canister_version: self.canister_version,
            origin: self.origin.clone(),
            details: self.details.as_ref().and_then(CanisterChangeDetails::to_ic),
        }
    }
}

/// The last [`MAX_CANISTER_HISTORY_CHANGES`] changes and how many there were in all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CanisterHistory {
    changes: VecDeque<CanisterChange>,
    total_num_changes: u64,
}

impl CanisterHistory {
    pub fn push(&mut self, change: CanisterChange) {
        if self.changes.len() == MAX_CANISTER_HISTORY_CHANGES {
            self.changes.pop_front();
        }
        self.changes.push_back(change);
        self.total_num_changes = self.total_num_changes.saturating_add(1);
    }

    pub fn changes(&self) -> impl DoubleEndedIterator<Item = &CanisterChange> + ExactSizeIterator {
        self.changes.iter()
    }

    pub fn total_num_changes(&self) -> u64 {
        self.total_num_changes
    }

    /// Drops every kept change but keeps the count of all changes ever made (the replica's
    /// `clear_canister_history`, when a canister is uninstalled for lack of cycles).
    pub fn clear(&mut self) {
        self.changes.clear();
    }

    /// A history read back from storage: the kept `changes` (oldest first, at most
    /// [`MAX_CANISTER_HISTORY_CHANGES`]) and the count of all changes ever made.
    pub fn from_parts(changes: Vec<CanisterChange>, total_num_changes: u64) -> Self {
        let mut changes = VecDeque::from(changes);
        while changes.len() > MAX_CANISTER_HISTORY_CHANGES {
            changes.pop_front();
        }
        let total_num_changes = total_num_changes.max(changes.len() as u64);
        CanisterHistory {
            changes,
            total_num_changes,
        }
    }
}
