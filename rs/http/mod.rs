//! The IC's HTTP interface over a [`Replica`] (`canister-snapshots serve`).
//!
//! The replica runs on a thread of its own and owns the state directory; the endpoints run on
//! a tokio runtime and reach it through a bounded channel ([`Command`]) and a watch of its last
//! certified state. Endpoints (interface spec, "HTTPS interface"):
//!
//! - `GET /api/v2/status`: CBOR (tag 55799) with the root key.
//! - `POST /api/v2/canister/<id>/call`: 202 once the message is in the pool;
//!   `/api/v3|v4/canister/<id>/call`: the certificate of its `request_status` once its round is
//!   durable and certified, or 202 after `Limits::sync_call_timeout`.
//! - `POST /api/v2|v3/canister/<id>/read_state`, `/api/v2|v3/subnet/<id>/read_state`: a
//!   certificate of the state tree pruned to the paths asked for.
//! - `POST /api/v2|v3/canister/<id>/query`: the reply signed by the node's Ed25519 key.
//!
//! Limits ([`Limits`]): a request body is at most 4 MiB (the IC's 2 MiB ingress limit plus the
//! envelope, with room; an announced larger one is refused before it is read) and a call's
//! method name and argument at most `Config::max_ingress_bytes_per_message` (413, as the IC's
//! call endpoint); the headers of each request must arrive within the header timeout, a
//! connection that sends nothing is closed after it, and a body must arrive within the body
//! timeout (408); at most `max_connections` connections are served at once, and one more is
//! answered 503 with `Retry-After` and closed. The pool refuses messages when full (503).
//!
//! Every request is decoded and checked before anything reaches the replica
//! ([`decode_request`], a pure function of the request: the fuzz target `http_request` drives
//! it): a malformed one gets a 4xx with a message that says what to fix, and never reaches
//! the state. No input panics the server.

#![forbid(unsafe_code)]

pub mod auth;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use candid::Principal;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use ic_transport_types::{
    EnvelopeContent, NodeSignature, QueryResponse, RejectCode, RejectResponse, ReplyResponse,
    RequestId as AgentRequestId,
};
use serde::Serialize;
use tokio::sync::{oneshot, watch};

use crate::config::Config;
use crate::embedders::ReplicaEngine;
use crate::replica::{Certified, Origin, Replica, ReplicaError, SignedIngress, SubmitError};
use crate::replica::{RequestId, hex, self_describing_cbor};

/// The server's limits; [`Limits::default`] is what `serve` uses.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest request body.
    pub max_request_body_bytes: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// Time a client has to send each request's headers (and an idle connection's lifetime).
    pub header_timeout: Duration,
    /// Time a client has to send a request's body.
    pub body_timeout: Duration,
    /// How long a synchronous call waits for its certificate before answering 202.
    pub sync_call_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_body_bytes: 4 << 20,
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            sync_call_timeout: Duration::from_secs(10),
        }
    }
}

/// Connections beyond the limit that are being told so (503) at once; more are closed unread.
const MAX_REFUSING_CONNECTIONS: usize = 64;
/// Rounds run at least this often, so the certified time follows the clock.
pub const ROUND_INTERVAL: Duration = Duration::from_millis(500);
/// Commands that may wait for the replica thread.
const COMMAND_QUEUE: usize = 4_096;
/// Paths one `read_state` may ask for.
const MAX_READ_STATE_PATHS: usize = 1_000;

/// What the endpoints ask of the replica thread.
enum Command {
    Submit(SignedIngress, oneshot::Sender<Result<(), SubmitError>>),
    /// A query; answered with the CBOR response, signed.
    Query {
        request_id: RequestId,
        sender: Principal,
        canister_id: Principal,
        method: String,
        arg: Vec<u8>,
        ingress_expiry: u64,
        reply: oneshot::Sender<Result<Vec<u8>, String>>,
    },
    /// Checks a read_state: its expiry against the replica's clock, and that its sender may
    /// read the statuses it asks for.
    ReadState {
        ingress_expiry: u64,
        origin: Origin,
        checks: PathChecks,
        reply: oneshot::Sender<Result<(), HttpError>>,
    },
}

/// A running server: its address and root key, and what stops it.
pub struct Server {
    pub addr: SocketAddr,
    pub root_key_der: Vec<u8>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Server {
    /// Opens the replica on `state_dir` (WebAssembly canisters on wasmtime, the native test
    /// canister for its module) and serves it on `bind` (port 0: any free port).
    pub fn start(state_dir: &Path, config: Config, bind: SocketAddr) -> Result<Server, String> {
        let replica = Replica::open_with_engine(state_dir, config, Box::new(ReplicaEngine::new()))
            .map_err(|e: ReplicaError| e.to_string())?;
        Self::serve(replica, bind, Limits::default())
    }

    /// Serves `replica` on `bind` within `limits`.
    pub fn serve(mut replica: Replica, bind: SocketAddr, limits: Limits) -> Result<Server, String> {
        // A first (empty) round before anything is served, so that the first certificate
        // carries the wall clock's time, not the state's (a fresh state's is genesis, and
        // agents refuse a certificate older than their ingress expiry window).
        replica
            .execute_round()
            .map_err(|e| format!("the first round's checkpoint failed: {e}"))?;
        let root_key_der = replica.keys().root_key_der().to_vec();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("http")
            .build()
            .map_err(|e| format!("cannot start the HTTP runtime: {e}"))?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(bind))
            .map_err(|e| format!("cannot listen on {bind}: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?;
        let (commands, receiver) = std::sync::mpsc::sync_channel(COMMAND_QUEUE);
        let (published, certified) = watch::channel(replica.certified());
        let context = Arc::new(Context {
            commands,
            certified,
            root_key_der: root_key_der.clone(),
            limits,
            max_ingress_bytes: replica.config().max_ingress_bytes_per_message,
        });
        let (shutdown, stop) = oneshot::channel::<()>();
        let replica_thread = std::thread::Builder::new()
            .name("replica".into())
            .spawn(move || run_replica(replica, receiver, published))
            .map_err(|e| format!("cannot start the replica thread: {e}"))?;
        let thread = std::thread::Builder::new()
            .name("http-server".into())
            .spawn(move || {
                runtime.block_on(accept_loop(listener, context, stop));
                // Dropping the runtime drops the endpoints' channel ends; the replica thread
                // then sees its commands disconnected, checkpoints and stops.
                drop(runtime);
                replica_thread
                    .join()
                    .map_err(|_| "the replica thread panicked".to_string())?
            })
            .map_err(|e| format!("cannot start the server thread: {e}"))?;
        Ok(Server {
            addr,
            root_key_der,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// Stops accepting, lets the replica checkpoint, and waits for it.
    pub fn stop(mut self) -> Result<(), String> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), String> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| "the server thread panicked".to_string())?,
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// The replica thread: rounds whenever messages wait (they share a round) and at least every
/// [`ROUND_INTERVAL`]; a checkpoint when the endpoints are gone.
fn run_replica(
    mut replica: Replica,
    commands: Receiver<Command>,
    published: watch::Sender<Arc<Certified>>,
) -> Result<(), String> {
    let mut last_round = Instant::now();
    loop {
        let wait = ROUND_INTERVAL.saturating_sub(last_round.elapsed());
        let mut disconnected = false;
        match commands.recv_timeout(wait) {
            Ok(command) => handle(&mut replica, command),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => disconnected = true,
        }
        while let Ok(command) = commands.try_recv() {
            handle(&mut replica, command);
        }
        if disconnected {
            return replica
                .checkpoint()
                .map_err(|e| format!("the final checkpoint failed: {e}"));
        }
        if replica.pool_len() > 0 || last_round.elapsed() >= ROUND_INTERVAL {
            last_round = Instant::now();
            match replica.execute_round() {
                Ok(()) => {
                    let _ = published.send(replica.certified());
                }
                // Nothing about the round was certified; the next round's checkpoint retries.
                Err(err) => eprintln!("checkpoint failed (retried next round): {err}"),
            }
        }
    }
}

fn handle(replica: &mut Replica, command: Command) {
    match command {
        Command::Submit(message, reply) => {
            let _ = reply.send(replica.submit(message));
        }
        Command::ReadState {
            ingress_expiry,
            origin,
            checks,
            reply,
        } => {
            let _ = reply.send(check_read_state(replica, ingress_expiry, origin, &checks));
        }
        Command::Query {
            request_id,
            sender,
            canister_id,
            method,
            arg,
            ingress_expiry,
            reply,
        } => {
            let answer = replica
                .check_expiry(ingress_expiry)
                .map_err(|e| e.to_string())
                .map(|()| {
                    let response = match replica.query(sender, canister_id, &method, &arg) {
                        Ok(arg) => QueryResponse::Replied {
                            reply: ReplyResponse { arg },
                            signatures: Vec::new(),
                        },
                        Err(err) => QueryResponse::Rejected {
                            reject: reject_response(&err),
                            signatures: Vec::new(),
                        },
                    };
                    let timestamp = replica.batch_time();
                    let signable = response.signable(AgentRequestId::new(&request_id), timestamp);
                    let signature = NodeSignature {
                        timestamp,
                        signature: replica.keys().sign_as_node(&signable),
                        identity: replica.keys().node_id(),
                    };
                    let signed = match response {
                        QueryResponse::Replied { reply, .. } => QueryResponse::Replied {
                            reply,
                            signatures: vec![signature],
                        },
                        QueryResponse::Rejected { reject, .. } => QueryResponse::Rejected {
                            reject,
                            signatures: vec![signature],
                        },
                    };
                    self_describing_cbor(&signed)
                });
            let _ = reply.send(answer);
        }
    }
}

/// The checks of a `read_state` that need the state: its expiry, that its sender may read the
/// status it asks for and the metadata sections it names.
fn check_read_state(
    replica: &Replica,
    ingress_expiry: u64,
    origin: Origin,
    checks: &PathChecks,
) -> Result<(), HttpError> {
    replica
        .check_expiry(ingress_expiry)
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    if let Some(id) = &checks.request_id
        && !replica.may_read_status(id, origin)
    {
        return Err(HttpError::new(
            StatusCode::FORBIDDEN,
            format!(
                "request_status/{} belongs to another sender or effective canister id; only \
                 its sender may read it, at the canister it was sent to",
                crate::replica::hex(id)
            ),
        ));
    }
    for name in &checks.metadata {
        replica
            .may_read_metadata(origin.sender, origin.effective_canister_id, name)
            .map_err(|message| HttpError::new(StatusCode::FORBIDDEN, message))?;
    }
    Ok(())
}

fn reject_response(err: &ic_error_types::UserError) -> RejectResponse {
    RejectResponse {
        reject_code: RejectCode::try_from(err.reject_code() as u64)
            .unwrap_or(RejectCode::CanisterError),
        reject_message: err.description().to_string(),
        error_code: Some(err.code().to_string()),
    }
}

struct Context {
    commands: SyncSender<Command>,
    certified: watch::Receiver<Arc<Certified>>,
    root_key_der: Vec<u8>,
    limits: Limits,
    max_ingress_bytes: u64,
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    context: Arc<Context>,
    mut stop: oneshot::Receiver<()>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(context.limits.max_connections));
    let refusals = Arc::new(tokio::sync::Semaphore::new(MAX_REFUSING_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            // Over the limit: say so and close, rather than leave the client waiting in the
            // backlog; past the refusals' own bound, close unread.
            if let Ok(refusal) = Arc::clone(&refusals).try_acquire_owned() {
                let limit = context.limits.max_connections;
                tokio::spawn(async move {
                    refuse_connection(stream, limit).await;
                    drop(refusal);
                });
            }
            continue;
        };
        let context = Arc::clone(&context);
        tokio::spawn(async move {
            let limits = context.limits;
            let service = hyper::service::service_fn(move |request| {
                let context = Arc::clone(&context);
                async move { Ok::<_, Infallible>(route(request, &context).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

/// Answers a connection over the limit with 503 and closes it, within a second.
async fn refuse_connection(mut stream: tokio::net::TcpStream, limit: usize) {
    use tokio::io::AsyncWriteExt;
    let message =
        format!("the replica serves {limit} connections at once and all are in use; retry shortly");
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{message}",
        message.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

type HttpResponse = Response<Full<Bytes>>;

fn response(status: StatusCode, content_type: &str, body: Vec<u8>) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

fn cbor(value: &impl Serialize) -> HttpResponse {
    response(
        StatusCode::OK,
        "application/cbor",
        self_describing_cbor(value),
    )
}

/// A refused request: the status and a message that says what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: StatusCode,
    pub message: String,
}

impl HttpError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        HttpError {
            status,
            message: message.into(),
        }
    }

    fn into_response(self) -> HttpResponse {
        response(self.status, "text/plain", self.message.into_bytes())
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpError::new(status, message).into_response()
}

/// The endpoint a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Status,
    Call { synchronous: bool },
    Query,
    ReadState { subnet: bool },
}

/// The endpoint of `method` and `path`, and the effective canister (or subnet) id the path
/// names (none for the status).
pub fn endpoint(method: &Method, path: &str) -> Result<(Endpoint, Principal), HttpError> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if segments == ["api", "v2", "status"] {
        if method != Method::GET {
            return Err(HttpError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{path} takes GET"),
            ));
        }
        return Ok((Endpoint::Status, Principal::management_canister()));
    }
    let not_found = || {
        HttpError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no endpoint at {path:.200}: the interface has GET /api/v2/status and POST \
                 /api/v2|v3/canister/<id>/{{call,query,read_state}} (call also v4) and \
                 /api/v2|v3/subnet/<id>/read_state"
            ),
        )
    };
    let ["api", version, scope, id, name] = segments.as_slice() else {
        return Err(not_found());
    };
    let endpoint = match (*version, *scope, *name) {
        ("v2", "canister", "call") => Endpoint::Call { synchronous: false },
        ("v3" | "v4", "canister", "call") => Endpoint::Call { synchronous: true },
        ("v2" | "v3", "canister", "query") => Endpoint::Query,
        ("v2" | "v3", "canister", "read_state") => Endpoint::ReadState { subnet: false },
        ("v2" | "v3", "subnet", "read_state") => Endpoint::ReadState { subnet: true },
        _ => return Err(not_found()),
    };
    if method != Method::POST {
        return Err(HttpError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path:.200} takes POST with a CBOR envelope"),
        ));
    }
    let effective_id = Principal::from_text(id).map_err(|e| {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            format!("{id:.100?} in the path is not a principal: {e}"),
        )
    })?;
    Ok((endpoint, effective_id))
}

/// Requests are `application/cbor` (parameters, if any, ignored).
pub fn check_content_type(content_type: Option<&str>) -> Result<(), HttpError> {
    let media_type = content_type
        .and_then(|value| value.split(';').next())
        .map(str::trim);
    match media_type {
        Some(media_type) if media_type.eq_ignore_ascii_case("application/cbor") => Ok(()),
        _ => Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "Content-Type is {:.100?}; requests are application/cbor",
                content_type.unwrap_or("missing")
            ),
        )),
    }
}

/// A call or query, authenticated, its effective canister id checked.
#[derive(Debug)]
pub struct CanisterMessage {
    pub request_id: RequestId,
    pub ingress_expiry: u64,
    pub sender: Principal,
    pub canister_id: Principal,
    pub method: String,
    pub arg: Vec<u8>,
}

/// What a `read_state` asks for, checked against the endpoint's path table.
#[derive(Debug)]
pub struct ReadState {
    pub ingress_expiry: u64,
    pub sender: Principal,
    pub paths: Vec<Vec<Vec<u8>>>,
    pub checks: PathChecks,
}

/// What the replica checks of a `read_state`'s paths against the state.
#[derive(Debug, Default)]
pub struct PathChecks {
    /// The request id it reads the status of (at most one).
    pub request_id: Option<RequestId>,
    /// The metadata sections of the effective canister it reads.
    pub metadata: Vec<String>,
}

/// A decoded and authenticated request.
#[derive(Debug)]
pub enum Decoded {
    Call(CanisterMessage),
    Query(CanisterMessage),
    ReadState(ReadState),
}

/// Decodes and checks the body of a request to `endpoint` at the replica's time `now`:
/// envelope, signature, request type, the effective canister id rule, the message size, and
/// the paths a `read_state` may read. Pure: nothing here touches the replica.
pub fn decode_request(
    endpoint: Endpoint,
    effective_id: Principal,
    body: &[u8],
    now: u64,
    max_ingress_bytes: u64,
) -> Result<Decoded, HttpError> {
    let authenticated =
        auth::authenticate(body, now).map_err(|m| HttpError::new(StatusCode::BAD_REQUEST, m))?;
    let request_id = authenticated.request_id;
    let wrong_type = |expected: &str| {
        Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            format!("this endpoint takes request_type \"{expected}\""),
        ))
    };
    match (endpoint, authenticated.content) {
        (
            Endpoint::Call { .. },
            EnvelopeContent::Call {
                ingress_expiry,
                sender,
                canister_id,
                method_name,
                arg,
                ..
            },
        )
        | (
            Endpoint::Query,
            EnvelopeContent::Query {
                ingress_expiry,
                sender,
                canister_id,
                method_name,
                arg,
                ..
            },
        ) => {
            check_effective_id(effective_id, canister_id, &method_name, &arg)
                .map_err(|m| HttpError::new(StatusCode::BAD_REQUEST, m))?;
            let message = CanisterMessage {
                request_id,
                ingress_expiry,
                sender,
                canister_id,
                method: method_name,
                arg,
            };
            if matches!(endpoint, Endpoint::Query) {
                return Ok(Decoded::Query(message));
            }
            let size = (message.method.len() as u64).saturating_add(message.arg.len() as u64);
            if size > max_ingress_bytes {
                return Err(HttpError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "Request {} is too large: its method name and argument are {size} bytes, \
                         above the limit of {max_ingress_bytes}; send the data in several \
                         messages",
                        crate::replica::hex(&request_id)
                    ),
                ));
            }
            Ok(Decoded::Call(message))
        }
        (
            Endpoint::ReadState { subnet },
            EnvelopeContent::ReadState {
                ingress_expiry,
                paths,
                sender,
            },
        ) => {
            if paths.len() > MAX_READ_STATE_PATHS {
                return Err(HttpError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "{} paths asked for; at most {MAX_READ_STATE_PATHS}",
                        paths.len()
                    ),
                ));
            }
            let paths: Vec<Vec<Vec<u8>>> = paths
                .into_iter()
                .map(|path| path.into_iter().map(|l| l.as_bytes().to_vec()).collect())
                .collect();
            let checks = verify_paths(&paths, subnet, effective_id)?;
            Ok(Decoded::ReadState(ReadState {
                ingress_expiry,
                sender,
                paths,
                checks,
            }))
        }
        (Endpoint::Call { .. }, _) => wrong_type("call"),
        (Endpoint::Query, _) => wrong_type("query"),
        (Endpoint::ReadState { .. }, _) => wrong_type("read_state"),
        (Endpoint::Status, _) => Err(HttpError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "/api/v2/status takes GET and no body",
        )),
    }
}

/// The paths a `read_state` may ask for, as the replica's `verify_paths` allows them (a
/// canister's: `time`, `canister/<effective id>/{controllers,module_hash,
/// last_install_timestamp,metadata/<name>}`,
/// `subnet/…`, `canister_ranges/<subnet>`, `request_status/<one request id>/…`; a subnet's:
/// `time`, `subnet/…`, `canister_ranges/<subnet>`). Anything else: 404.
fn verify_paths(
    paths: &[Vec<Vec<u8>>],
    subnet_scope: bool,
    effective_id: Principal,
) -> Result<PathChecks, HttpError> {
    let mut checks = PathChecks::default();
    let same_canister = |id: &[u8]| {
        if id == effective_id.as_slice() {
            Ok(())
        } else {
            Err(HttpError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "Effective principal id in URL {effective_id} does not match requested \
                     principal id {}: read a canister's state at its own read_state",
                    Principal::try_from_slice(id).map_or_else(|_| hex(id), |p| p.to_text())
                ),
            ))
        }
    };
    for path in paths {
        let labels: Vec<&[u8]> = path.iter().map(Vec::as_slice).collect();
        let allowed = match labels.as_slice() {
            [b"time"]
            | [b"subnet"]
            | [b"subnet", _]
            | [
                b"subnet",
                _,
                b"public_key" | b"canister_ranges" | b"node" | b"type",
            ]
            | [b"subnet", _, b"node", _]
            | [b"subnet", _, b"node", _, b"public_key"]
            | [b"canister_ranges", _]
            | [b"api_boundary_nodes"]
            | [b"api_boundary_nodes", _]
            | [
                b"api_boundary_nodes",
                _,
                b"domain" | b"ipv4_address" | b"ipv6_address",
            ] => true,
            [
                b"canister",
                id,
                b"controllers" | b"module_hash" | b"last_install_timestamp",
            ] if !subnet_scope => {
                same_canister(id)?;
                true
            }
            [b"canister", id, b"metadata", name] if !subnet_scope => {
                same_canister(id)?;
                let name = String::from_utf8(name.to_vec()).map_err(|e| {
                    HttpError::new(
                        StatusCode::BAD_REQUEST,
                        format!("Could not parse the custom section name: {e}."),
                    )
                })?;
                checks.metadata.push(name);
                true
            }
            [b"request_status", id]
            | [
                b"request_status",
                id,
                b"status" | b"reply" | b"reject_code" | b"reject_message" | b"error_code",
            ] if !subnet_scope => {
                let id = RequestId::try_from(*id).map_err(|_| {
                    HttpError::new(
                        StatusCode::BAD_REQUEST,
                        format!("request id {} in a path is not 32 bytes", hex(id)),
                    )
                })?;
                if let Some(earlier) = checks.request_id
                    && earlier != id
                {
                    return Err(HttpError::new(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "More than one request id in the request_status paths: {} and {}; \
                             read one request's status at a time",
                            hex(&earlier),
                            hex(&id)
                        ),
                    ));
                }
                checks.request_id = Some(id);
                true
            }
            _ => false,
        };
        if !allowed {
            let shown: Vec<String> = path
                .iter()
                .take(6)
                .map(|l| match std::str::from_utf8(l) {
                    Ok(text) if text.len() <= 64 => text.to_string(),
                    _ => hex(l.get(..32).unwrap_or(l)),
                })
                .collect();
            return Err(HttpError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "Invalid path requested: /{}. A canister's read_state reads time, subnet/…, \
                     canister_ranges/<subnet>, request_status/<id>/… and \
                     canister/<the effective canister id>/{{controllers,module_hash,\
                     last_install_timestamp,metadata/<name>}}; a subnet's reads time, subnet/… and \
                     canister_ranges/<subnet>",
                    shown.join("/")
                ),
            ));
        }
    }
    Ok(checks)
}

async fn route(request: Request<Incoming>, context: &Context) -> HttpResponse {
    match handle_request(request, context).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn handle_request(
    request: Request<Incoming>,
    context: &Context,
) -> Result<HttpResponse, HttpError> {
    let (endpoint, effective_id) = endpoint(request.method(), request.uri().path())?;
    if endpoint == Endpoint::Status {
        return Ok(status(context));
    }
    check_content_type(
        request
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    )?;
    let limit = context.limits.max_request_body_bytes;
    let announced = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|len| len > limit as u64) {
        return Err(too_large(limit));
    }
    let body_timeout = context.limits.body_timeout;
    let body = match tokio::time::timeout(
        body_timeout,
        Limited::new(request.into_body(), limit).collect(),
    )
    .await
    {
        Err(_) => {
            return Err(HttpError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} s; send it at once",
                    body_timeout.as_secs_f64()
                ),
            ));
        }
        Ok(Err(err)) => {
            return Err(if err.is::<http_body_util::LengthLimitError>() {
                too_large(limit)
            } else {
                HttpError::new(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {err}"),
                )
            });
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let now = context.certified.borrow().time;
    Ok(
        match decode_request(
            endpoint,
            effective_id,
            &body,
            now,
            context.max_ingress_bytes,
        )? {
            Decoded::Call(message) => {
                let synchronous = matches!(endpoint, Endpoint::Call { synchronous: true });
                call(context, effective_id, message, synchronous).await
            }
            Decoded::Query(message) => query(context, message).await,
            Decoded::ReadState(read) => read_state(context, effective_id, read).await,
        },
    )
}

fn too_large(limit: usize) -> HttpError {
    HttpError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the request body is larger than {limit} bytes; messages are at most 2 MiB: send \
             the data in several messages"
        ),
    )
}

fn status(context: &Context) -> HttpResponse {
    #[derive(Serialize)]
    struct Status<'a> {
        ic_api_version: &'a str,
        impl_version: &'a str,
        #[serde(with = "serde_bytes")]
        root_key: &'a [u8],
        replica_health_status: &'a str,
        certified_height: u64,
    }
    let certified_height = context.certified.borrow().round;
    cbor(&Status {
        ic_api_version: "0.18.0",
        impl_version: env!("CARGO_PKG_VERSION"),
        root_key: &context.root_key_der,
        replica_health_status: "healthy",
        certified_height,
    })
}

/// Sends a command and waits for its answer; 503 if the replica is gone or busy.
async fn ask<T>(
    context: &Context,
    command: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, HttpResponse> {
    let (sender, receiver) = oneshot::channel();
    match context.commands.try_send(command(sender)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the replica is busy (its command queue is full); retry shortly",
            ));
        }
        Err(TrySendError::Disconnected(_)) => {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the replica is shutting down",
            ));
        }
    }
    receiver.await.map_err(|_| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the replica is shutting down",
        )
    })
}

/// The management canister's methods whose effective canister id may be any id (they create
/// the canister they act on).
const CREATE_METHODS: &[&str] = &["provisional_create_canister_with_cycles", "create_canister"];

/// Decoding quota for the `canister_id` of a management call's argument, before what skipping
/// its other fields costs.
const TARGET_DECODING_QUOTA: usize = 1_000_000;
/// What Candid charges the decoding quota per unit of skipping (each skipped byte of a blob).
const CANDID_SKIPPED_BYTE_COST: usize = 50;
/// Characters of a Candid decoding error quoted back to the client.
const MAX_CANDID_ERROR_CHARS: usize = 1_000;

/// The effective canister id rule: a message to a canister names it; a message to the
/// management canister names the canister its argument's `canister_id` field names (any id
/// for the methods that create one).
fn check_effective_id(
    effective_id: Principal,
    canister_id: Principal,
    method: &str,
    arg: &[u8],
) -> Result<(), String> {
    if canister_id != Principal::management_canister() {
        if canister_id != effective_id {
            return Err(format!(
                "the effective canister id {effective_id} in the path is not the request's \
                 canister {canister_id}"
            ));
        }
        return Ok(());
    }
    if CREATE_METHODS.contains(&method) {
        return Ok(());
    }
    #[derive(candid::Deserialize, candid::CandidType)]
    struct Target {
        canister_id: Principal,
    }
    // Only `canister_id` is decoded; Candid skips the other fields, at 50 units of decoding
    // quota per skipped byte (a 2 MB `upload_canister_snapshot_data` chunk: 100 million). The
    // quotas follow the argument's size, which the body limit bounds: every argument a client
    // may send is checked, and the work stays linear in its size.
    let skipping_quota = TARGET_DECODING_QUOTA.saturating_add(arg.len());
    let mut config = candid::DecoderConfig::new();
    config.set_decoding_quota(skipping_quota.saturating_mul(CANDID_SKIPPED_BYTE_COST));
    config.set_skipping_quota(skipping_quota);
    let target = candid::utils::decode_args_with_config::<(Target,)>(arg, &config)
        .map(|(target,)| target.canister_id)
        .map_err(|e| {
            // Candid's message ends with the whole input in hex: up to 8 MB for a 4 MB body.
            let mut reason = e.to_string();
            if let Some((cut, _)) = reason.char_indices().nth(MAX_CANDID_ERROR_CHARS) {
                reason.truncate(cut);
                reason.push('…');
            }
            format!(
                "a call to the management canister's {method:.100} must have an argument with \
                 a canister_id field (the effective canister id): {reason}"
            )
        })?;
    if target != effective_id {
        return Err(format!(
            "the effective canister id {effective_id} in the path is not the canister_id \
             {target} of the {method:.100} argument"
        ));
    }
    Ok(())
}

async fn call(
    context: &Context,
    effective_id: Principal,
    message: CanisterMessage,
    synchronous: bool,
) -> HttpResponse {
    let request_id = message.request_id;
    let message = SignedIngress {
        request_id,
        ingress_expiry: message.ingress_expiry,
        effective_canister_id: effective_id,
        sender: message.sender,
        receiver: message.canister_id,
        method: message.method,
        payload: message.arg,
    };
    match ask(context, |reply| Command::Submit(message, reply)).await {
        Err(response) => return response,
        // Already received: it will not execute again; answer as for the first time.
        Ok(Ok(()) | Err(SubmitError::Duplicate(_))) => {}
        Ok(Err(err @ SubmitError::Expiry(_))) => {
            return error(StatusCode::BAD_REQUEST, err.to_string());
        }
        Ok(Err(err @ SubmitError::Full(_))) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, err.to_string());
        }
    }
    if !synchronous {
        return response(StatusCode::ACCEPTED, "text/plain", Vec::new());
    }
    let mut certified = context.certified.clone();
    let wait = tokio::time::timeout(
        context.limits.sync_call_timeout,
        certified.wait_for(|c| c.has_request_status(&request_id)),
    )
    .await;
    // The `Arc`, not the watch's guard: building the witness must not hold up the replica's
    // next publication.
    let wait = wait.map(|found| found.map(|guard| Arc::clone(&*guard)));
    match wait {
        Ok(Ok(certified)) => {
            let paths = [
                vec![b"time".to_vec()],
                vec![b"request_status".to_vec(), request_id.to_vec()],
            ];
            let refs: Vec<&[Vec<u8>]> = paths.iter().map(Vec::as_slice).collect();
            #[derive(Serialize)]
            struct Replied {
                status: &'static str,
                #[serde(with = "serde_bytes")]
                certificate: Vec<u8>,
            }
            cbor(&Replied {
                status: "replied",
                certificate: certified.certificate(&refs),
            })
        }
        _ => response(StatusCode::ACCEPTED, "text/plain", Vec::new()),
    }
}

async fn query(context: &Context, message: CanisterMessage) -> HttpResponse {
    let answer = ask(context, |reply| Command::Query {
        request_id: message.request_id,
        sender: message.sender,
        canister_id: message.canister_id,
        method: message.method,
        arg: message.arg,
        ingress_expiry: message.ingress_expiry,
        reply,
    })
    .await;
    match answer {
        Err(response) => response,
        Ok(Err(message)) => error(StatusCode::BAD_REQUEST, message),
        Ok(Ok(body)) => response(StatusCode::OK, "application/cbor", body),
    }
}

async fn read_state(context: &Context, effective_id: Principal, read: ReadState) -> HttpResponse {
    let origin = Origin {
        sender: read.sender,
        effective_canister_id: effective_id,
    };
    let ingress_expiry = read.ingress_expiry;
    let checked = ask(context, |reply| Command::ReadState {
        ingress_expiry,
        origin,
        checks: read.checks,
        reply,
    })
    .await;
    match checked {
        Err(response) => return response,
        Ok(Err(err)) => return err.into_response(),
        Ok(Ok(())) => {}
    }
    let certified = context.certified.borrow().clone();
    let mut refs: Vec<&[Vec<u8>]> = read.paths.iter().map(Vec::as_slice).collect();
    let time = [b"time".to_vec()];
    refs.push(&time);
    #[derive(Serialize)]
    struct ReadStateResponse {
        #[serde(with = "serde_bytes")]
        certificate: Vec<u8>,
    }
    cbor(&ReadStateResponse {
        certificate: certified.certificate(&refs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(list: &[&[&[u8]]]) -> Vec<Vec<Vec<u8>>> {
        list.iter()
            .map(|path| path.iter().map(|l| l.to_vec()).collect())
            .collect()
    }

    #[test]
    fn read_state_paths_follow_the_replicas_table() {
        let canister = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 1, 1]);
        let other = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 2, 1, 1]);
        let ok = paths(&[
            &[b"time"],
            &[b"subnet"],
            &[b"canister", canister.as_slice(), b"module_hash"],
            &[
                b"canister",
                canister.as_slice(),
                b"metadata",
                b"candid:service",
            ],
            &[b"request_status", &[3; 32], b"status"],
            &[b"request_status", &[3; 32], b"reply"],
        ]);
        let checks = verify_paths(&ok, false, canister).unwrap();
        assert_eq!(checks.request_id, Some([3; 32]));
        assert_eq!(checks.metadata, ["candid:service"]);

        let refused = |list: &[&[&[u8]]], subnet: bool| {
            verify_paths(&paths(list), subnet, canister)
                .unwrap_err()
                .status
        };
        // Another canister's state, or everything under `canister`.
        assert_eq!(
            refused(&[&[b"canister", other.as_slice(), b"controllers"]], false),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(refused(&[&[b"canister"]], false), StatusCode::NOT_FOUND);
        assert_eq!(
            refused(&[&[b"canister", canister.as_slice()]], false),
            StatusCode::NOT_FOUND
        );
        // Certified data is not readable by users.
        assert_eq!(
            refused(
                &[&[b"canister", canister.as_slice(), b"certified_data"]],
                false
            ),
            StatusCode::NOT_FOUND
        );
        // Two request ids; a request id of the wrong length.
        assert_eq!(
            refused(
                &[
                    &[b"request_status", &[1; 32]],
                    &[b"request_status", &[2; 32]]
                ],
                false
            ),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            refused(&[&[b"request_status", &[1; 3]]], false),
            StatusCode::BAD_REQUEST
        );
        // A subnet's read_state reads no canister and no request.
        assert_eq!(
            refused(&[&[b"request_status", &[1; 32]]], true),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            refused(&[&[b"canister", canister.as_slice(), b"module_hash"]], true),
            StatusCode::NOT_FOUND
        );
        assert!(verify_paths(&paths(&[&[b"canister_ranges", &[9; 29]]]), true, canister).is_ok());
        // A metadata name that is not UTF-8.
        assert_eq!(
            refused(
                &[&[b"canister", canister.as_slice(), b"metadata", &[0xff]]],
                false
            ),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn endpoints_and_content_types() {
        let post = Method::POST;
        let id = "rwlgt-iiaaa-aaaaa-aaaaa-cai";
        assert_eq!(
            endpoint(&post, &format!("/api/v3/canister/{id}/call"))
                .unwrap()
                .0,
            Endpoint::Call { synchronous: true }
        );
        assert_eq!(
            endpoint(&post, &format!("/api/v3/subnet/{id}/read_state"))
                .unwrap()
                .0,
            Endpoint::ReadState { subnet: true }
        );
        for (method, path, status) in [
            (&post, "/api/v2/status", StatusCode::METHOD_NOT_ALLOWED),
            (
                &Method::GET,
                "/api/v3/canister/aaaaa-aa/call",
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (&post, "/api/v2/subnet/aaaaa-aa/call", StatusCode::NOT_FOUND),
            (
                &post,
                "/api/v9/canister/aaaaa-aa/call",
                StatusCode::NOT_FOUND,
            ),
            (&post, "/", StatusCode::NOT_FOUND),
            (
                &post,
                "/api/v2/canister/not-a-principal/call",
                StatusCode::BAD_REQUEST,
            ),
        ] {
            assert_eq!(endpoint(method, path).unwrap_err().status, status, "{path}");
        }
        assert!(check_content_type(Some("application/cbor")).is_ok());
        assert!(check_content_type(Some("Application/CBOR; charset=binary")).is_ok());
        for wrong in [None, Some("application/json"), Some("")] {
            assert_eq!(
                check_content_type(wrong).unwrap_err().status,
                StatusCode::BAD_REQUEST
            );
        }
    }

    /// The effective canister id is read from arguments as large as a client sends, encoded
    /// with the IC's Rust types as icp and ic-agent encode them: an
    /// `upload_canister_snapshot_data` with a full 2 MB chunk (icp 1.5.0's first upload call
    /// was refused here, "Decoding cost exceeds the limit", while skipping the chunk).
    #[test]
    fn the_effective_id_is_read_past_a_full_upload_chunk() {
        use ic_management_canister_types::{SnapshotDataOffset, UploadCanisterSnapshotDataArgs};
        let canister = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 1, 1]);
        let other = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 2, 1, 1]);
        let upload = |kind| {
            candid::encode_one(UploadCanisterSnapshotDataArgs {
                canister_id: canister,
                snapshot_id: vec![1; 18],
                kind,
                chunk: vec![0xA5; crate::management::types::MAX_SLICE_BYTES as usize],
            })
            .unwrap()
        };
        let method = "upload_canister_snapshot_data";
        let management = Principal::management_canister();
        for kind in [
            SnapshotDataOffset::WasmModule { offset: 0 },
            SnapshotDataOffset::WasmMemory { offset: 2_000_000 },
            SnapshotDataOffset::StableMemory { offset: 4_000_000 },
            SnapshotDataOffset::WasmChunk,
        ] {
            let arg = upload(kind);
            assert_eq!(
                check_effective_id(canister, management, method, &arg),
                Ok(())
            );
            let refused = check_effective_id(other, management, method, &arg).unwrap_err();
            assert!(refused.contains("is not the canister_id"), "{refused}");
        }
        // An argument without a canister_id: refused with a message of bounded size (Candid's
        // error quotes the whole input).
        let chunk = serde_bytes::ByteBuf::from(vec![0xA5; 2_000_000]);
        let refused = check_effective_id(
            canister,
            management,
            method,
            &candid::encode_one(chunk).unwrap(),
        )
        .unwrap_err();
        assert!(refused.contains("canister_id field"), "{refused:.300}");
        assert!(refused.len() < 2_000, "{} bytes", refused.len());
    }
}
