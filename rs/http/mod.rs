//! The IC's HTTP interface over a [`Replica`] (`canister-snapshots serve`).
//!
//! The replica runs on a thread of its own and owns the state directory; the endpoints run on
//! a tokio runtime and reach it through a bounded channel ([`Command`]) and a watch of its last
//! certified state. Endpoints (interface spec, "HTTPS interface"):
//!
//! - `GET /api/v2/status`: CBOR (tag 55799) with the root key.
//! - `POST /api/v2/canister/<id>/call`: 202 once the message is in the pool;
//!   `/api/v3|v4/canister/<id>/call`: the certificate of its `request_status` once its round is
//!   durable and certified, or 202 after [`SYNC_CALL_TIMEOUT`].
//! - `POST /api/v2|v3/canister/<id>/read_state`, `/api/v2|v3/subnet/<id>/read_state`: a
//!   certificate of the state tree pruned to the paths asked for.
//! - `POST /api/v2|v3/canister/<id>/query`: the reply signed by the node's Ed25519 key.
//!
//! Limits: a request body is at most [`MAX_REQUEST_BODY_BYTES`] and must arrive within
//! [`BODY_TIMEOUT`], headers within [`HEADER_TIMEOUT`]; at most [`MAX_CONNECTIONS`] connections
//! are served at once (more wait in the listen backlog); the pool refuses messages when full
//! (503). Every malformed request gets a 4xx with a message and never reaches the state.

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
use crate::replica::{Certified, Origin, Replica, ReplicaError, SignedIngress, SubmitError};
use crate::replica::{RequestId, self_describing_cbor};

/// The largest request body (the IC's 2 MiB ingress limit plus the envelope, with room).
pub const MAX_REQUEST_BODY_BYTES: usize = 4 << 20;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Time a client has to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send its request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a synchronous call waits for its certificate before answering 202.
pub const SYNC_CALL_TIMEOUT: Duration = Duration::from_secs(10);
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
        request_ids: Vec<RequestId>,
        reply: oneshot::Sender<Result<(), (StatusCode, String)>>,
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
    /// Opens the replica on `state_dir` and starts serving on `bind` (port 0: any free port).
    pub fn start(state_dir: &Path, config: Config, bind: SocketAddr) -> Result<Server, String> {
        let replica = Replica::open(state_dir, config).map_err(|e: ReplicaError| e.to_string())?;
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
            request_ids,
            reply,
        } => {
            let answer = replica
                .check_expiry(ingress_expiry)
                .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))
                .and_then(|()| {
                    match request_ids
                        .iter()
                        .find(|id| !replica.may_read_status(id, origin))
                    {
                        Some(id) => Err((
                            StatusCode::FORBIDDEN,
                            format!(
                                "request_status/{} belongs to another sender or effective canister \
                             id; only its sender may read it, at the canister it was sent to",
                                crate::replica::hex(id)
                            ),
                        )),
                        None => Ok(()),
                    }
                });
            let _ = reply.send(answer);
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
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    context: Arc<Context>,
    mut stop: oneshot::Receiver<()>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let context = Arc::clone(&context);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let context = Arc::clone(&context);
                async move { Ok::<_, Infallible>(route(request, &context).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
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

fn error(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    response(status, "text/plain", message.into().into_bytes())
}

fn cbor(value: &impl Serialize) -> HttpResponse {
    response(
        StatusCode::OK,
        "application/cbor",
        self_describing_cbor(value),
    )
}

/// The endpoint a path names.
enum Endpoint {
    Call { synchronous: bool },
    Query,
    ReadState,
}

async fn route(request: Request<Incoming>, context: &Context) -> HttpResponse {
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if request.method() == Method::GET && segments == ["api", "v2", "status"] {
        return status(context);
    }
    let [
        "api",
        version @ ("v2" | "v3" | "v4"),
        scope @ ("canister" | "subnet"),
        id,
        endpoint,
    ] = segments.as_slice()
    else {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "no endpoint at {path}: the interface has /api/v2/status and \
                 /api/v2|v3/{{canister,subnet}}/<id>/{{call,query,read_state}} (call also v4)"
            ),
        );
    };
    let endpoint = match (*version, *scope, *endpoint) {
        ("v2", "canister", "call") => Endpoint::Call { synchronous: false },
        ("v3" | "v4", "canister", "call") => Endpoint::Call { synchronous: true },
        ("v2" | "v3", "canister", "query") => Endpoint::Query,
        ("v2" | "v3", _, "read_state") => Endpoint::ReadState,
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no endpoint at {path} (this replica has one subnet and no subnet calls)"),
            );
        }
    };
    if request.method() != Method::POST {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} takes POST with a CBOR envelope"),
        );
    }
    let Ok(effective_id) = Principal::from_text(id) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{id:?} in the path is not a principal"),
        );
    };
    let content_type = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type != "application/cbor" {
        return error(
            StatusCode::BAD_REQUEST,
            format!("Content-Type is {content_type:?}; requests are application/cbor"),
        );
    }
    let announced = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|len| len > MAX_REQUEST_BODY_BYTES as u64) {
        return too_large();
    }
    let body = match tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(request.into_body(), MAX_REQUEST_BODY_BYTES).collect(),
    )
    .await
    {
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            );
        }
        Ok(Err(err)) => {
            return if err.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {err}"),
                )
            };
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let certified = context.certified.borrow().clone();
    let authenticated = match auth::authenticate(&body, certified.time) {
        Ok(authenticated) => authenticated,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let subnet_scope = *scope == "subnet";
    match endpoint {
        Endpoint::Call { synchronous } => {
            call(context, effective_id, authenticated, synchronous).await
        }
        Endpoint::Query => query(context, effective_id, authenticated).await,
        Endpoint::ReadState => read_state(context, effective_id, subnet_scope, authenticated).await,
    }
}

fn too_large() -> HttpResponse {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the request body is larger than {MAX_REQUEST_BODY_BYTES} bytes; messages are at \
             most 2 MiB: send the data in several messages"
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

/// Sends a command and waits for its answer; `None` if the replica is gone or busy.
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

/// The effective canister id rule: a call to a canister names it; a call to the management
/// canister names the canister its argument's `canister_id` field names.
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
    let mut config = candid::DecoderConfig::new();
    config.set_decoding_quota(1_000_000);
    let target = candid::utils::decode_args_with_config::<(Target,)>(arg, &config)
        .map(|(target,)| target.canister_id)
        .map_err(|e| {
            format!(
                "a call to the management canister's {method} must have an argument with a \
                 canister_id field (the effective canister id): {e}"
            )
        })?;
    if target != effective_id {
        return Err(format!(
            "the effective canister id {effective_id} in the path is not the canister_id \
             {target} of the {method} argument"
        ));
    }
    Ok(())
}

async fn call(
    context: &Context,
    effective_id: Principal,
    request: auth::Authenticated,
    synchronous: bool,
) -> HttpResponse {
    let EnvelopeContent::Call {
        ingress_expiry,
        sender,
        canister_id,
        method_name,
        arg,
        ..
    } = request.content
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "the call endpoint takes request_type \"call\"",
        );
    };
    if let Err(message) = check_effective_id(effective_id, canister_id, &method_name, &arg) {
        return error(StatusCode::BAD_REQUEST, message);
    }
    let request_id = request.request_id;
    let message = SignedIngress {
        request_id,
        ingress_expiry,
        effective_canister_id: effective_id,
        sender,
        receiver: canister_id,
        method: method_name,
        payload: arg,
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
        SYNC_CALL_TIMEOUT,
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

async fn query(
    context: &Context,
    effective_id: Principal,
    request: auth::Authenticated,
) -> HttpResponse {
    let EnvelopeContent::Query {
        ingress_expiry,
        sender,
        canister_id,
        method_name,
        arg,
        ..
    } = request.content
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "the query endpoint takes request_type \"query\"",
        );
    };
    if canister_id != effective_id {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "the effective canister id {effective_id} in the path is not the query's \
                 canister {canister_id}"
            ),
        );
    }
    let answer = ask(context, |reply| Command::Query {
        request_id: request.request_id,
        sender,
        canister_id,
        method: method_name,
        arg,
        ingress_expiry,
        reply,
    })
    .await;
    match answer {
        Err(response) => response,
        Ok(Err(message)) => error(StatusCode::BAD_REQUEST, message),
        Ok(Ok(body)) => response(StatusCode::OK, "application/cbor", body),
    }
}

async fn read_state(
    context: &Context,
    effective_id: Principal,
    subnet_scope: bool,
    request: auth::Authenticated,
) -> HttpResponse {
    let EnvelopeContent::ReadState {
        ingress_expiry,
        paths,
        sender,
    } = request.content
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "the read_state endpoint takes request_type \"read_state\"",
        );
    };
    if paths.len() > MAX_READ_STATE_PATHS {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "{} paths asked for; at most {MAX_READ_STATE_PATHS}",
                paths.len()
            ),
        );
    }
    let paths: Vec<Vec<Vec<u8>>> = paths
        .into_iter()
        .map(|path| path.into_iter().map(|l| l.as_bytes().to_vec()).collect())
        .collect();
    for path in &paths {
        let first = path.first().map(Vec::as_slice);
        let allowed = match first {
            Some(b"time" | b"subnet" | b"canister_ranges" | b"api_boundary_nodes") => true,
            Some(b"canister") => {
                !subnet_scope
                    && path
                        .get(1)
                        .is_none_or(|id| id.as_slice() == effective_id.as_slice())
            }
            Some(b"request_status") => !subnet_scope,
            _ => false,
        };
        if !allowed {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "path {:?} cannot be read here: a canister's read_state reads time, \
                     subnet, canister_ranges, request_status and canister/<the effective \
                     canister id>; a subnet's reads time, subnet and canister_ranges",
                    path.iter()
                        .map(|l| String::from_utf8_lossy(l).into_owned())
                        .collect::<Vec<_>>()
                ),
            );
        }
    }
    let request_ids: Vec<RequestId> = paths
        .iter()
        .filter(|path| {
            path.first()
                .is_some_and(|l| l.as_slice() == b"request_status")
        })
        .filter_map(|path| {
            path.get(1)
                .and_then(|id| RequestId::try_from(id.as_slice()).ok())
        })
        .collect();
    let origin = Origin {
        sender,
        effective_canister_id: effective_id,
    };
    let checked = ask(context, |reply| Command::ReadState {
        ingress_expiry,
        origin,
        request_ids,
        reply,
    })
    .await;
    match checked {
        Err(response) => return response,
        Ok(Err((status, message))) => return error(status, message),
        Ok(Ok(())) => {}
    }
    let certified = context.certified.borrow().clone();
    let mut refs: Vec<&[Vec<u8>]> = paths.iter().map(Vec::as_slice).collect();
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
