//! Snapshot ids in the IC's format (`spec/snapshot-id.md`): the 8-byte big-endian local counter,
//! then the canister principal's bytes. Displayed `{canister_id}-{counter}`.

use std::ops::RangeInclusive;

use candid::Principal;
use ic_error_types::{ErrorCode, UserError};

/// A principal is at most 29 bytes.
const MAX_PRINCIPAL_BYTES: usize = 29;

/// A snapshot id. Ordered by canister, then counter, so each canister's snapshots are one range.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotId {
    canister_id: Principal,
    local_id: u64,
}

/// Bytes that are not a snapshot id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSnapshotId {
    pub len: usize,
}

impl std::fmt::Display for InvalidSnapshotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a snapshot id is 8 bytes of counter followed by a canister principal (9 to 37 bytes), \
             got {} bytes; pass an id returned by take_canister_snapshot or \
             list_canister_snapshots",
            self.len
        )
    }
}

impl std::error::Error for InvalidSnapshotId {}

impl From<InvalidSnapshotId> for UserError {
    fn from(err: InvalidSnapshotId) -> Self {
        UserError::new(ErrorCode::InvalidManagementPayload, err)
    }
}

impl SnapshotId {
    pub fn new(canister_id: Principal, local_id: u64) -> Self {
        SnapshotId {
            canister_id,
            local_id,
        }
    }

    pub fn canister_id(&self) -> Principal {
        self.canister_id
    }

    pub fn local_id(&self) -> u64 {
        self.local_id
    }

    /// The wire form: `u64_be(local_id) ‖ principal bytes`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let principal = self.canister_id.as_slice();
        let mut out = Vec::with_capacity(principal.len().saturating_add(8));
        out.extend_from_slice(&self.local_id.to_be_bytes());
        out.extend_from_slice(principal);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, InvalidSnapshotId> {
        let invalid = InvalidSnapshotId { len: bytes.len() };
        if bytes.len() <= 8 || bytes.len() > 8 + MAX_PRINCIPAL_BYTES {
            return Err(invalid);
        }
        let (counter, principal) = bytes.split_at(8);
        let local_id = u64::from_be_bytes(counter.try_into().map_err(|_| invalid.clone())?);
        let canister_id = Principal::try_from_slice(principal).map_err(|_| invalid)?;
        Ok(SnapshotId::new(canister_id, local_id))
    }

    /// All ids of one canister, for range queries over an ordered map.
    pub fn range_of(canister_id: Principal) -> RangeInclusive<SnapshotId> {
        SnapshotId::new(canister_id, 0)..=SnapshotId::new(canister_id, u64::MAX)
    }
}

impl std::fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.canister_id, self.local_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_is_counter_then_principal() {
        let canister = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 1, 1]);
        let id = SnapshotId::new(canister, 258);
        let bytes = id.to_bytes();
        assert_eq!(&bytes[..8], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(&bytes[8..], canister.as_slice());
        assert_eq!(SnapshotId::from_bytes(&bytes).unwrap(), id);
        assert_eq!(id.to_string(), format!("{canister}-258"));
    }

    #[test]
    fn malformed_ids_are_refused() {
        assert!(SnapshotId::from_bytes(&[]).is_err());
        assert!(SnapshotId::from_bytes(&[0; 8]).is_err());
        assert!(SnapshotId::from_bytes(&[0; 38]).is_err());
        let err = UserError::from(SnapshotId::from_bytes(&[1; 3]).unwrap_err());
        assert_eq!(err.code(), ErrorCode::InvalidManagementPayload);
    }
}
