//! Up to 30 messages against one replica: any management or test-canister method, from any of
//! four callers, with template, mutated or raw payloads, so that states several steps deep are
//! reachable (an uploaded snapshot loaded and then called, a canister stopped, deleted and
//! recreated). After every message: no panic, and a refused message left no trace
//! ([`Replica::deliver`]).

use arbitrary::{Arbitrary, Result, Unstructured};
use candid::Principal;

use super::input::{self, Encode, Writer};
use super::replica::{self, Replica};
use super::templates::{self, Args, Payload};

pub const MAX_MESSAGES: usize = 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Index into [`replica::callers`].
    pub caller: u8,
    /// Index into [`templates::all_methods`].
    pub method: u8,
    /// For canister methods: which canister ([`templates::pick_canister`]).
    pub receiver: u8,
    pub payload: Payload,
}

impl<'a> Arbitrary<'a> for Message {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Message {
            caller: input::byte(u)?,
            method: input::byte(u)?,
            receiver: input::byte(u)?,
            payload: Payload::arbitrary(u)?,
        })
    }
}

impl Encode for Message {
    fn encode(&self, w: &mut Writer) {
        w.byte(self.caller);
        w.byte(self.method);
        w.byte(self.receiver);
        self.payload.encode(w);
    }
}

impl Message {
    /// A template message from `caller` (an index into [`replica::callers`]).
    pub fn new(caller: u8, method: &str, receiver: u8, args: Args) -> Self {
        let index = templates::all_methods()
            .iter()
            .position(|m| *m == method)
            .expect("a known method");
        Message {
            caller,
            method: index as u8,
            receiver,
            payload: Payload::Template(args),
        }
    }

    /// Sends the message; returns whether it was accepted.
    pub fn deliver(&self, replica: &mut Replica) -> bool {
        let methods = templates::all_methods();
        let method = methods[usize::from(self.method) % methods.len()];
        let receiver = if templates::is_management(method)
            || (method == "no_such_method" && self.receiver & 1 == 0)
        {
            Principal::management_canister()
        } else {
            templates::pick_canister(&replica.state, self.receiver)
        };
        let payload = self.payload.bytes(&replica.state, method);
        replica
            .deliver(replica::caller(self.caller), receiver, method, payload)
            .is_ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    pub messages: Vec<Message>,
}

impl<'a> Arbitrary<'a> for Sequence {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Sequence {
            messages: input::list(u, MAX_MESSAGES, Message::arbitrary)?,
        })
    }
}

impl Encode for Sequence {
    fn encode(&self, w: &mut Writer) {
        w.list(&self.messages, |w, m| m.encode(w));
    }
}

pub fn check(sequence: &Sequence) {
    let mut replica = Replica::new();
    for message in &sequence.messages {
        message.deliver(&mut replica);
    }
}

pub fn run(data: &[u8]) {
    if let Ok(sequence) = input::decode::<Sequence>(data) {
        check(&sequence);
    }
}

/// Callers by index in [`replica::callers`].
pub const CONTROLLER: u8 = 0;
pub const STRANGER: u8 = 1;
pub const ANONYMOUS: u8 = 2;
pub const OTHER_CONTROLLER: u8 = 3;

/// Canisters by `pick_canister` index in the pristine state.
pub const CANISTER: u8 = 0;
pub const OTHER: u8 = 1;

/// Snapshot picks in the pristine state: the fixture's snapshot, then the next one taken or
/// uploaded (ids are ordered by canister, then counter).
pub const FIXTURE_SNAPSHOT: u8 = 0;
pub const NEXT_SNAPSHOT: u8 = 1;

pub fn sequences() -> Vec<(&'static str, Sequence)> {
    let m = Message::new;
    let upload_module = |offset: u64| {
        m(
            CONTROLLER,
            "upload_canister_snapshot_data",
            0,
            Args::new([CANISTER, 0, NEXT_SNAPSHOT, 0], [offset, 0], b""),
        )
    };
    let load = |snapshot: u8| {
        m(
            CONTROLLER,
            "load_canister_snapshot",
            0,
            Args::new([CANISTER, 0, snapshot, 0], [0, 0], b""),
        )
    };
    let call = |method: &str, args: Args| m(CONTROLLER, method, CANISTER, args);
    vec![
        (
            // Upload a snapshot whose globals do not match the module (none, where the test
            // canister exports two), load it, then set a global.
            "upload-mismatched-globals-load-set-global",
            Sequence {
                messages: vec![
                    m(
                        CONTROLLER,
                        "upload_canister_snapshot_metadata",
                        0,
                        Args::new([CANISTER, 0, 0, 1], [0, 0], b""),
                    ),
                    upload_module(0),
                    load(NEXT_SNAPSHOT),
                    call("set_global", Args::new([0, 0, 0, 0], [7, 0], b"")),
                    call("get_global", Args::new([0, 1, 0, 0], [0, 0], b"")),
                ],
            },
        ),
        (
            "upload-in-two-slices-load-read",
            Sequence {
                messages: vec![
                    m(
                        CONTROLLER,
                        "upload_canister_snapshot_metadata",
                        0,
                        Args::new([CANISTER, 0, 0, 12], [0, 5], b""),
                    ),
                    upload_module(4),
                    m(
                        CONTROLLER,
                        "upload_canister_snapshot_data",
                        0,
                        Args::new([CANISTER, 1, NEXT_SNAPSHOT, 0], [4090, 0], b"page boundary"),
                    ),
                    upload_module(0),
                    load(NEXT_SNAPSHOT),
                    call("read_heap", Args::new([0; 4], [4090, 13], b"")),
                    call("get_global", Args::new([0; 4], [0, 0], b"")),
                ],
            },
        ),
        (
            "take-write-load-delete",
            Sequence {
                messages: vec![
                    m(
                        CONTROLLER,
                        "take_canister_snapshot",
                        0,
                        Args::new([CANISTER, 4, 0, 0], [0, 0], b"label"),
                    ),
                    call("write_heap", Args::new([0; 4], [100, 0], b"after")),
                    load(NEXT_SNAPSHOT),
                    call("read_heap", Args::new([0; 4], [100, 5], b"")),
                    m(
                        CONTROLLER,
                        "delete_canister_snapshot",
                        0,
                        Args::new([CANISTER, 0, NEXT_SNAPSHOT, 0], [0, 0], b""),
                    ),
                    m(
                        CONTROLLER,
                        "list_canister_snapshots",
                        0,
                        Args::new([CANISTER, 0, 0, 0], [0, 0], b""),
                    ),
                ],
            },
        ),
        (
            "take-replacing-then-quota",
            Sequence {
                messages: vec![
                    m(
                        CONTROLLER,
                        "take_canister_snapshot",
                        0,
                        Args::new([CANISTER, 0, 0, 0], [0, 0], b""),
                    ),
                    m(
                        CONTROLLER,
                        "take_canister_snapshot",
                        0,
                        Args::new([CANISTER, 0, 0, 0], [0, 0], b""),
                    ),
                    m(
                        CONTROLLER,
                        "take_canister_snapshot",
                        0,
                        Args::new([CANISTER, 1, FIXTURE_SNAPSHOT, 0], [0, 0], b""),
                    ),
                    m(
                        CONTROLLER,
                        "take_canister_snapshot",
                        0,
                        Args::new([CANISTER, 2, 0, 0], [0, 0], b""),
                    ),
                ],
            },
        ),
        (
            "strangers-and-other-controllers",
            Sequence {
                messages: vec![
                    m(
                        STRANGER,
                        "load_canister_snapshot",
                        0,
                        Args::new([CANISTER, 0, FIXTURE_SNAPSHOT, 0], [0, 0], b""),
                    ),
                    m(
                        ANONYMOUS,
                        "read_canister_snapshot_metadata",
                        0,
                        Args::new([CANISTER, 0, FIXTURE_SNAPSHOT, 0], [0, 0], b""),
                    ),
                    m(
                        OTHER_CONTROLLER,
                        "load_canister_snapshot",
                        0,
                        Args::new([OTHER, 0, FIXTURE_SNAPSHOT, 0], [0, 0], b""),
                    ),
                    m(
                        OTHER_CONTROLLER,
                        "upload_canister_snapshot_metadata",
                        0,
                        Args::new([OTHER, 0, 0, 0], [0, 0], b""),
                    ),
                    m(
                        STRANGER,
                        "update_settings",
                        0,
                        Args::new([CANISTER, 1, STRANGER, 1], [0, 0], b""),
                    ),
                ],
            },
        ),
        (
            "stop-uninstall-load-start",
            Sequence {
                messages: vec![
                    m(
                        CONTROLLER,
                        "stop_canister",
                        0,
                        Args::new([CANISTER, 0, 0, 0], [0, 0], b""),
                    ),
                    m(
                        CONTROLLER,
                        "uninstall_code",
                        0,
                        Args::new([CANISTER, 0, 0, 0], [0, 0], b""),
                    ),
                    call("read_heap", Args::new([0; 4], [0, 4], b"")),
                    load(FIXTURE_SNAPSHOT),
                    m(
                        CONTROLLER,
                        "start_canister",
                        0,
                        Args::new([CANISTER, 0, 0, 0], [0, 0], b""),
                    ),
                    call("read_heap", Args::new([0; 4], [0, 4], b"")),
                    m(
                        CONTROLLER,
                        "canister_status",
                        0,
                        Args::new([CANISTER, 0, 0, 0], [0, 0], b""),
                    ),
                ],
            },
        ),
        (
            "read-snapshot-data-every-kind",
            Sequence {
                messages: (0..4)
                    .map(|kind| {
                        m(
                            ANONYMOUS,
                            "read_canister_snapshot_data",
                            0,
                            Args::new([CANISTER, kind, FIXTURE_SNAPSHOT, 0], [0, 8], b""),
                        )
                    })
                    .chain([m(
                        CONTROLLER,
                        "read_canister_snapshot_data",
                        0,
                        Args::new([CANISTER, 1, FIXTURE_SNAPSHOT, 0], [65_536, 65_536], b""),
                    )])
                    .collect(),
            },
        ),
        (
            "create-install-snapshot-delete-canister",
            Sequence {
                messages: vec![
                    m(
                        STRANGER,
                        "provisional_create_canister_with_cycles",
                        0,
                        Args::new([0, 3, STRANGER, 1], [1_000_000_000_000, 0], b""),
                    ),
                    m(
                        STRANGER,
                        "install_code",
                        0,
                        Args::new([2, 0, 0, 1], [0, 0], b"v2"),
                    ),
                    m(
                        STRANGER,
                        "take_canister_snapshot",
                        0,
                        Args::new([2, 0, 0, 0], [0, 0], b""),
                    ),
                    m(
                        STRANGER,
                        "stop_canister",
                        0,
                        Args::new([2, 0, 0, 0], [0, 0], b""),
                    ),
                    m(
                        STRANGER,
                        "delete_canister",
                        0,
                        Args::new([2, 0, 0, 0], [0, 0], b""),
                    ),
                    m(
                        STRANGER,
                        "list_canister_snapshots",
                        0,
                        Args::new([2, 0, 0, 0], [0, 0], b""),
                    ),
                    m(
                        ANONYMOUS,
                        "canister_info",
                        0,
                        Args::new([2, 1, 0, 0], [5, 0], b""),
                    ),
                ],
            },
        ),
    ]
}

pub fn seeds() -> Vec<(String, Vec<u8>)> {
    sequences()
        .into_iter()
        .map(|(name, sequence)| (name.to_string(), sequence.to_bytes()))
        .collect()
}
