//! The replica (the IC calls it the node): one process's owner of a state directory.
//!
//! It holds the state manager and the state, the execution loop, the ingress pool (signed
//! messages accepted and waiting for a round), the ingress history (request id → status, reply
//! or reject), the node's keys, and the certified state tree of the last durable round. It is
//! synchronous and single-owner: `serve` runs it on a thread of its own and talks to it over a
//! channel (`crate::http`).
//!
//! # A round, and when its answers leave
//!
//! 1. The batch is the pool (up to [`MAX_MESSAGES_PER_ROUND`]), its time the wall clock, made
//!    monotonic: never before the last batch (`batch_time`). This is the only place the
//!    replica reads the clock; the execution loop below sees only the batch time.
//! 2. The round executes ([`ExecutionLoop::execute_round`]) and each outcome enters the
//!    history.
//! 3. **Checkpoint before replies leave**: a round that executed a message is checkpointed
//!    before anything about it is certified; many messages share the round, so they share the
//!    checkpoint. Empty rounds checkpoint every `checkpoint_interval_rounds`. The history (its
//!    small replies) is written with the checkpoint (`node.bin`), atomically with the state.
//! 4. The state tree is built and its root hash signed ([`Certified`]). Only now can a client
//!    read a reply or a certificate; so `kill -9` at any moment loses only what no client was
//!    told happened.
//!
//! A request id executes at most once: the pool and the history refuse a known id, and the
//! history keeps an id until its `ingress_expiry` has passed, after which the request itself is
//! refused as expired.

#![forbid(unsafe_code)]

pub mod certification;
pub mod keys;
pub mod metadata;
pub mod system_canisters;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use candid::Principal;
use ic_error_types::{ErrorCode, UserError};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::execution::{TestCanisterEngine, WasmEngine};
use crate::replicated_state::{ReplicatedState, canister_id_from_index};
use crate::scheduler::{Batch, ExecutionLoop, Ingress, MessageId};
use crate::state_manager::{StateManager, StateManagerError};
use certification::{Tree, leb128};
use keys::NodeKeys;
use metadata::{MetadataCache, Visibility};
use system_canisters::{Answer, Route};

/// A request id: the representation-independent hash of a request's content.
pub type RequestId = [u8; 32];

/// The most messages one round executes; the rest wait for the next.
pub const MAX_MESSAGES_PER_ROUND: usize = 1_000;

/// The most messages the pool holds; one more is refused (the client retries).
pub const MAX_POOL_MESSAGES: usize = 10_000;

/// The most entries the ingress history holds: a new message is refused while it is full of
/// entries whose expiry has not passed.
pub const MAX_HISTORY_ENTRIES: usize = 200_000;

/// The longest `ingress_expiry` ahead of the replica's time that a request may carry (the
/// IC's `MAX_INGRESS_TTL`, 5 minutes), plus the clock drift it allows (30 s).
pub const MAX_INGRESS_TTL: Duration = Duration::from_secs(5 * 60 + 30);

/// Replies up to this size are kept with the history in checkpoints; a larger reply is kept in
/// memory only, and after a restart its request reads as `done` (the spec's status for a reply
/// no longer available), never as unknown, so it is never executed again.
pub const MAX_DURABLE_REPLY_BYTES: usize = 4 << 10;

/// An error opening the replica.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    State(#[from] StateManagerError),
    #[error("state directory {dir}: {reason}")]
    Node { dir: String, reason: String },
}

/// A signed ingress message the HTTP layer has authenticated.
#[derive(Debug, Clone)]
pub struct SignedIngress {
    pub request_id: RequestId,
    pub ingress_expiry: u64,
    /// The effective canister id it was sent to: its status is readable there only.
    pub effective_canister_id: Principal,
    pub sender: Principal,
    pub receiver: Principal,
    pub method: String,
    pub payload: Vec<u8>,
}

/// Why a message was not accepted into the pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// Already in the pool or the history: it executes at most once.
    #[error("request {} was already received; it executes at most once", hex(.0))]
    Duplicate(RequestId),
    #[error("{0}")]
    Expiry(String),
    #[error("{0}")]
    Full(String),
}

/// A message's status in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IngressStatus {
    Replied(#[serde(with = "serde_bytes")] Vec<u8>),
    Rejected {
        reject_code: u64,
        message: String,
        error_code: String,
    },
    /// Executed; the reply is no longer kept.
    Done,
}

impl IngressStatus {
    fn of(result: Result<Vec<u8>, UserError>) -> Self {
        match result {
            Ok(reply) => IngressStatus::Replied(reply),
            Err(err) => IngressStatus::Rejected {
                reject_code: err.reject_code() as u64,
                message: err.description().to_string(),
                error_code: err.code().to_string(),
            },
        }
    }

    /// Its `request_status/<id>` subtree.
    fn tree(&self) -> Tree {
        let leaf = |bytes: Vec<u8>| Arc::new(Tree::leaf(bytes));
        let entries: Vec<(Vec<u8>, Arc<Tree>)> = match self {
            IngressStatus::Replied(reply) => vec![
                (b"status".to_vec(), leaf(b"replied".to_vec())),
                (b"reply".to_vec(), leaf(reply.clone())),
            ],
            IngressStatus::Rejected {
                reject_code,
                message,
                error_code,
            } => vec![
                (b"status".to_vec(), leaf(b"rejected".to_vec())),
                (b"reject_code".to_vec(), leaf(leb128(*reject_code))),
                (
                    b"reject_message".to_vec(),
                    leaf(message.clone().into_bytes()),
                ),
                (
                    b"error_code".to_vec(),
                    leaf(error_code.clone().into_bytes()),
                ),
            ],
            IngressStatus::Done => vec![(b"status".to_vec(), leaf(b"done".to_vec()))],
        };
        Tree::map(entries)
    }
}

/// One executed message in the history.
#[derive(Debug, Clone)]
struct HistoryEntry {
    ingress_expiry: u64,
    origin: Origin,
    status: IngressStatus,
    tree: Arc<Tree>,
}

/// Who sent a message and where: only they may read its status (interface spec, `read_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub sender: Principal,
    pub effective_canister_id: Principal,
}

/// The history as `node.bin` keeps it.
#[derive(Serialize, Deserialize, Default)]
struct NodeRecord {
    version: u32,
    history: Vec<(RequestId, u64, Origin, IngressStatus)>,
}

const NODE_RECORD_VERSION: u32 = 1;

/// The certified state of the last durable round: its tree and the root key's signature.
pub struct Certified {
    pub time: u64,
    pub round: u64,
    pub tree: Tree,
    pub signature: Vec<u8>,
}

impl Certified {
    /// The CBOR certificate of this tree pruned to `paths` (spec: `certificate`), tagged with
    /// the self-describing tag 55799 as the IC sends it.
    pub fn certificate(&self, paths: &[&[Vec<u8>]]) -> Vec<u8> {
        let certificate = ic_certification::Certificate {
            tree: self.tree.witness(paths),
            signature: self.signature.clone(),
            delegation: None,
        };
        self_describing_cbor(&certificate)
    }

    /// The status certified for `request_id`, if the history has it.
    pub fn has_request_status(&self, request_id: &RequestId) -> bool {
        let path = [b"request_status".to_vec(), request_id.to_vec()];
        let witness = self.tree.witness(&[&path]);
        matches!(
            witness.lookup_path([b"request_status".as_ref(), request_id, b"status"]),
            ic_certification::LookupResult::Found(_)
        )
    }
}

/// CBOR with the self-describing tag (55799), as the IC's HTTP interface encodes.
pub fn self_describing_cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut serializer = serde_cbor::Serializer::new(Vec::new());
    // Writing into a `Vec` cannot fail, and these types have no maps with non-string keys
    // that CBOR could refuse; an empty answer would be refused by any client.
    if serializer.self_describe().is_err() || value.serialize(&mut serializer).is_err() {
        return Vec::new();
    }
    serializer.into_inner()
}

/// The replica over one state directory.
pub struct Replica {
    execution: ExecutionLoop,
    manager: StateManager,
    state: ReplicatedState,
    keys: NodeKeys,
    pool: Vec<SignedIngress>,
    pooled: BTreeSet<RequestId>,
    history: BTreeMap<RequestId, HistoryEntry>,
    /// `(ingress_expiry, request id)` of every history entry, to prune in expiry order.
    expiries: BTreeSet<(u64, RequestId)>,
    certified: Arc<Certified>,
    metadata: MetadataCache,
}

impl Replica {
    /// Opens (creating it if new) the state directory `dir`: its last checkpoint, the history
    /// kept with it, and the node's keys (created at the first start).
    pub fn open(dir: &Path, config: Config) -> Result<Replica, ReplicaError> {
        Self::open_with_engine(dir, config, Box::new(TestCanisterEngine))
    }

    pub fn open_with_engine(
        dir: &Path,
        config: Config,
        engine: Box<dyn WasmEngine>,
    ) -> Result<Replica, ReplicaError> {
        let mut config = config;
        config.reserved_canister_ids.extend(system_canisters::ids());
        let execution = ExecutionLoop::new(config, engine);
        let (manager, state) = execution.open_state(dir)?;
        let node_error = |reason: String| ReplicaError::Node {
            dir: dir.display().to_string(),
            reason,
        };
        let secret = manager.node_secret(NodeKeys::generate_secret)?;
        let keys = NodeKeys::from_secret(&secret).map_err(node_error)?;
        let record: NodeRecord = match manager.node_record() {
            None => NodeRecord::default(),
            Some(bytes) => postcard::from_bytes(bytes)
                .map_err(|e| node_error(format!("node.bin cannot be decoded: {e}")))?,
        };
        if record.version > NODE_RECORD_VERSION {
            return Err(node_error(format!(
                "node.bin has version {}, newer than this build reads ({NODE_RECORD_VERSION})",
                record.version
            )));
        }
        let mut replica = Replica {
            execution,
            manager,
            state,
            keys,
            pool: Vec::new(),
            pooled: BTreeSet::new(),
            history: BTreeMap::new(),
            expiries: BTreeSet::new(),
            certified: Arc::new(Certified {
                time: 0,
                round: 0,
                tree: Tree::map([]),
                signature: Vec::new(),
            }),
            metadata: MetadataCache::default(),
        };
        for (request_id, expiry, origin, status) in record.history {
            replica.record(request_id, expiry, origin, status);
        }
        replica.certify();
        Ok(replica)
    }

    pub fn keys(&self) -> &NodeKeys {
        &self.keys
    }

    pub fn state(&self) -> &ReplicatedState {
        &self.state
    }

    pub fn config(&self) -> &Config {
        self.execution.config()
    }

    /// The certified state of the last durable round.
    pub fn certified(&self) -> Arc<Certified> {
        Arc::clone(&self.certified)
    }

    /// The time the next batch would have: the wall clock, never before the state's time.
    pub fn batch_time(&self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        wall.max(self.state.time)
    }

    /// Checks `ingress_expiry` against the replica's time: not passed, and not further ahead
    /// than [`MAX_INGRESS_TTL`].
    pub fn check_expiry(&self, ingress_expiry: u64) -> Result<(), SubmitError> {
        let now = self.batch_time();
        let ttl = u64::try_from(MAX_INGRESS_TTL.as_nanos()).unwrap_or(u64::MAX);
        if ingress_expiry < now {
            return Err(SubmitError::Expiry(format!(
                "the request expired: its ingress_expiry {ingress_expiry} is before the \
                 replica's time {now}; send it again with a later expiry (is the clock right?)"
            )));
        }
        if ingress_expiry > now.saturating_add(ttl) {
            return Err(SubmitError::Expiry(format!(
                "ingress_expiry {ingress_expiry} is more than {} s after the replica's time \
                 {now}; send it with an expiry at most 5 minutes ahead",
                MAX_INGRESS_TTL.as_secs()
            )));
        }
        Ok(())
    }

    /// Accepts an authenticated message into the pool for the next round.
    pub fn submit(&mut self, message: SignedIngress) -> Result<(), SubmitError> {
        self.check_expiry(message.ingress_expiry)?;
        if self.history.contains_key(&message.request_id)
            || self.pooled.contains(&message.request_id)
        {
            return Err(SubmitError::Duplicate(message.request_id));
        }
        if self.pool.len() >= MAX_POOL_MESSAGES {
            return Err(SubmitError::Full(format!(
                "{MAX_POOL_MESSAGES} messages are waiting for a round; retry shortly"
            )));
        }
        if self.history.len() >= MAX_HISTORY_ENTRIES {
            return Err(SubmitError::Full(format!(
                "the ingress history holds {MAX_HISTORY_ENTRIES} unexpired messages; retry \
                 when some expire"
            )));
        }
        self.pooled.insert(message.request_id);
        self.pool.push(message);
        Ok(())
    }

    /// Messages waiting for a round.
    pub fn pool_len(&self) -> usize {
        self.pool.len()
    }

    /// Executes one round of what the pool holds (see the module docs) and certifies it.
    /// On a failed checkpoint the round stays executed in memory but nothing about it is
    /// certified; the next successful checkpoint makes it durable and certifies it.
    pub fn execute_round(&mut self) -> Result<(), StateManagerError> {
        let time = self.batch_time();
        let take = self.pool.len().min(MAX_MESSAGES_PER_ROUND);
        let messages: Vec<SignedIngress> = self.pool.drain(..take).collect();
        let mut ids: BTreeMap<MessageId, (RequestId, u64, Origin, Answer)> = BTreeMap::new();
        let mut ingress = Vec::with_capacity(messages.len());
        let executed_messages = !messages.is_empty();
        let subnet_id = self.keys.subnet_id();
        for (index, message) in messages.into_iter().enumerate() {
            self.pooled.remove(&message.request_id);
            let message_id = index as MessageId;
            let origin = Origin {
                sender: message.sender,
                effective_canister_id: message.effective_canister_id,
            };
            let routed = match system_canisters::route(
                subnet_id,
                message.receiver,
                message.method,
                message.payload,
            ) {
                Route::Execute(routed) => routed,
                Route::Answered(result) => {
                    let status = IngressStatus::of(result);
                    self.record(message.request_id, message.ingress_expiry, origin, status);
                    continue;
                }
            };
            ids.insert(
                message_id,
                (
                    message.request_id,
                    message.ingress_expiry,
                    origin,
                    routed.answer,
                ),
            );
            ingress.push(Ingress {
                message_id,
                sender: message.sender,
                receiver: routed.receiver,
                method: routed.method,
                payload: routed.payload,
            });
        }
        let results = self
            .execution
            .execute_round(&mut self.state, Batch { time, ingress });
        for (message_id, result) in results {
            if let Some((request_id, expiry, origin, answer)) = ids.get(&message_id) {
                let result = system_canisters::answer(*answer, result);
                self.record(*request_id, *expiry, *origin, IngressStatus::of(result));
            }
        }
        self.prune_history();
        let interval = self.config().checkpoint_interval_rounds.max(1);
        if executed_messages || self.state.round.is_multiple_of(interval) {
            self.checkpoint()?;
        }
        self.certify();
        Ok(())
    }

    /// Writes a checkpoint of the state with the history; durable when this returns `Ok`.
    pub fn checkpoint(&mut self) -> Result<(), StateManagerError> {
        let record = NodeRecord {
            version: NODE_RECORD_VERSION,
            history: self
                .history
                .iter()
                .map(|(id, entry)| {
                    let status = match &entry.status {
                        IngressStatus::Replied(reply) if reply.len() > MAX_DURABLE_REPLY_BYTES => {
                            IngressStatus::Done
                        }
                        status => status.clone(),
                    };
                    (*id, entry.ingress_expiry, entry.origin, status)
                })
                .collect(),
        };
        // Plain data of bounded size: postcard encodes it whatever it holds.
        if let Ok(bytes) = postcard::to_allocvec(&record) {
            self.manager.set_node_record(bytes);
        }
        self.manager.checkpoint(&mut self.state)
    }

    fn record(
        &mut self,
        request_id: RequestId,
        ingress_expiry: u64,
        origin: Origin,
        status: IngressStatus,
    ) {
        let tree = Arc::new(status.tree());
        self.expiries.insert((ingress_expiry, request_id));
        self.history.insert(
            request_id,
            HistoryEntry {
                ingress_expiry,
                origin,
                status,
                tree,
            },
        );
    }

    /// Drops the entries whose expiry has passed: such a request is refused as expired, so
    /// its id can no longer execute.
    fn prune_history(&mut self) {
        while let Some(&(expiry, request_id)) = self.expiries.first() {
            if expiry >= self.state.time {
                break;
            }
            self.expiries.pop_first();
            self.history.remove(&request_id);
        }
    }

    /// Whether `origin` may read the status of `request_id` (interface spec, `read_state`:
    /// only the request's sender, at its effective canister id). An unknown id may be read
    /// (its absence is what a client polls for); one still in the pool belongs to its sender.
    pub fn may_read_status(&self, request_id: &RequestId, origin: Origin) -> bool {
        if let Some(entry) = self.history.get(request_id) {
            return entry.origin == origin;
        }
        if self.pooled.contains(request_id) {
            return self.pool.iter().any(|m| {
                m.request_id == *request_id
                    && m.sender == origin.sender
                    && m.effective_canister_id == origin.effective_canister_id
            });
        }
        true
    }

    /// Whether `sender` may read `canister/<canister_id>/metadata/<name>` (see
    /// [`metadata`]): a private section only a controller may read.
    pub fn may_read_metadata(
        &self,
        sender: Principal,
        canister_id: Principal,
        name: &str,
    ) -> Result<(), String> {
        let Some(canister) = self.state.canisters.get(&canister_id) else {
            return Ok(());
        };
        let Some(hash) = canister.module_hash() else {
            return Ok(());
        };
        let private = self
            .metadata
            .cached(&hash)
            .and_then(|m| m.visibility.get(name))
            .is_some_and(|v| *v == Visibility::Private);
        if private && !canister.controllers.contains(&sender) {
            return Err(format!(
                "Custom section {name:.100} can only be requested by the controllers of the \
                 canister."
            ));
        }
        Ok(())
    }

    /// The status of a request in the history (uncertified: for tests and tools).
    pub fn request_status(&self, request_id: &RequestId) -> Option<&IngressStatus> {
        self.history.get(request_id).map(|entry| &entry.status)
    }

    /// Builds the state tree of the current (durable) state and signs its root hash.
    fn certify(&mut self) {
        let leaf = |bytes: Vec<u8>| Arc::new(Tree::leaf(bytes));
        let mut installed = BTreeSet::new();
        let metadata = &mut self.metadata;
        let canisters = self.state.canisters.iter().map(|(id, canister)| {
            let controllers: Vec<Principal> = canister.controllers.iter().copied().collect();
            let mut entries = vec![
                (
                    b"certified_data".to_vec(),
                    leaf(canister.certified_data.clone()),
                ),
                (
                    b"controllers".to_vec(),
                    leaf(self_describing_cbor(&controllers)),
                ),
            ];
            if let Some(execution) = &canister.execution_state {
                let hash = *execution.wasm_module.hash();
                installed.insert(hash);
                let sections = metadata.get(hash, execution.wasm_module.bytes());
                entries.push((b"metadata".to_vec(), Arc::clone(&sections.tree)));
                entries.push((b"module_hash".to_vec(), leaf(hash.to_vec())));
            }
            // Certified as the replica does (certification version 27 on): a natural number
            // of nanoseconds, present while code is installed.
            if let Some(time) = canister.last_install_timestamp {
                entries.push((b"last_install_timestamp".to_vec(), leaf(leb128(time))));
            }
            (id.as_slice().to_vec(), Arc::new(Tree::map(entries)))
        });
        let canister = Tree::map(canisters.collect::<Vec<_>>());
        self.metadata.retain(&installed);
        let request_status = Tree::map(
            self.history
                .iter()
                .map(|(id, entry)| (id.to_vec(), Arc::clone(&entry.tree))),
        );
        let subnet_id = self.keys.subnet_id();
        let ranges = canister_ranges();
        let ranges_cbor = self_describing_cbor(&ranges);
        let node = Tree::map([(
            self.keys.node_id().as_slice().to_vec(),
            Arc::new(Tree::map([(
                b"public_key".to_vec(),
                leaf(self.keys.node_key_der().to_vec()),
            )])),
        )]);
        let subnet = Tree::map([(
            subnet_id.as_slice().to_vec(),
            Arc::new(Tree::map([
                (b"canister_ranges".to_vec(), leaf(ranges_cbor.clone())),
                (b"node".to_vec(), Arc::new(node)),
                (
                    b"public_key".to_vec(),
                    leaf(self.keys.root_key_der().to_vec()),
                ),
                (b"type".to_vec(), leaf(b"application".to_vec())),
            ])),
        )]);
        let shards = Tree::map([(
            subnet_id.as_slice().to_vec(),
            Arc::new(Tree::map([(
                ranges
                    .first()
                    .map_or_else(Vec::new, |r| r.0.as_slice().to_vec()),
                leaf(ranges_cbor),
            )])),
        )]);
        let tree = Tree::map([
            (b"canister".to_vec(), Arc::new(canister)),
            (b"canister_ranges".to_vec(), Arc::new(shards)),
            (b"request_status".to_vec(), Arc::new(request_status)),
            (b"subnet".to_vec(), Arc::new(subnet)),
            (b"time".to_vec(), leaf(leb128(self.state.time))),
        ]);
        let signature = self.keys.sign_state_root(&tree.hash());
        self.certified = Arc::new(Certified {
            time: self.state.time,
            round: self.state.round,
            tree,
            signature,
        });
    }

    /// Executes a query at the last durable round: only a method the module exports as a
    /// query (or composite query) runs, on the canister as it is, and whatever it changes is
    /// dropped. An update method is refused as the IC refuses it (`CanisterMethodNotFound`,
    /// "has no query method"): run as a query, its changes would be silently lost.
    pub fn query(
        &self,
        sender: Principal,
        canister_id: Principal,
        method: &str,
        arg: &[u8],
    ) -> Result<Vec<u8>, UserError> {
        if let Some(answer) =
            system_canisters::query(self.keys.subnet_id(), canister_id, method, arg)
        {
            return answer;
        }
        if canister_id == Principal::management_canister() {
            return Err(UserError::new(
                ErrorCode::CanisterMethodNotFound,
                format!(
                    "the management canister has no query method {method}: call it as an \
                     update"
                ),
            ));
        }
        self.execution
            .execute_query(&self.state, canister_id, sender, method, arg)
    }
}

/// The canister ids this subnet hosts, as the certified ranges: every id the allocator gives
/// out (`u64_be(n) ‖ 0x01 0x01`).
pub fn canister_ranges() -> Vec<(Principal, Principal)> {
    vec![(canister_id_from_index(0), canister_id_from_index(u64::MAX))]
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
