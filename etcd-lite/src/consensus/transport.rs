//! Raft messages between members over gRPC (`raftpeer.Peer/Send`, corelite's own protocol).
//!
//! Outgoing: one queue and one sending task per peer, writing batches into one long-lived
//! `Stream` call (no request/response round per batch); whatever queued up while the stream
//! was busy goes in the next batch (pipelining without reordering). A full queue or an
//! unreachable peer drops messages: raft retries on its own. A broken stream is reopened.
//! Incoming: [`PeerService`] checks the cluster id and the addressee, decodes each message and
//! hands it to the node; anything else is refused with an error and changes nothing.

use std::collections::HashMap;
use std::time::Duration;

use etcd_api::raftpeer::peer_client::PeerClient;
use etcd_api::raftpeer::peer_server::{Peer, PeerServer};
use etcd_api::raftpeer::{HelloRequest, HelloResponse, MessageBatch, PeerMember, SendAck};
use parking_lot::{Mutex, RwLock};
use protobuf::Message as _;
use raft::prelude::Message;
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::transport::{ClientTlsConfig, Endpoint};

use super::node::{Node, Transport};

/// Groups of messages (one per Ready) waiting for one peer before new ones are dropped.
const PEER_QUEUE: usize = 1024;
/// A batch takes no more queued groups once it holds this many messages.
const MAX_BATCH: usize = 256;
/// Batches handed to a stream before the sender waits for it (its own flow control).
const STREAM_QUEUE: usize = 16;
/// Pause before reopening a stream that failed (the peer is down or refused us).
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// Sends to peers by member id; peers come and go with membership changes. Cheap to clone.
#[derive(Clone)]
pub struct PeerTransport {
    queues: Arc<Mutex<HashMap<u64, mpsc::Sender<Vec<Message>>>>>,
    cluster_id: u64,
    me: u64,
    runtime: tokio::runtime::Handle,
    tls: Option<ClientTlsConfig>,
    down: PeerDownHook,
}

/// Told the id of a peer whose port refuses connections (see [`PeerTransport::on_peer_down`]).
type PeerDownHook = Arc<std::sync::OnceLock<Box<dyn Fn(u64) + Send + Sync>>>;

/// Whether nothing listens at `url`'s host and port: the connection is refused (not timed
/// out, as when the network is cut).
async fn refused(url: &str) -> bool {
    let Some((host, port)) = url::Url::parse(url)
        .ok()
        .and_then(|u| Some((u.host_str()?.to_string(), u.port_or_known_default()?)))
    else {
        return false;
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let probe = tokio::net::TcpStream::connect((host.as_str(), port));
    matches!(
        tokio::time::timeout(Duration::from_millis(500), probe).await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// Linux's `TCP_RTO_MAX_MS` (6.15 and later; `libc` does not name it yet).
const TCP_RTO_MAX_MS: libc::c_int = 44;
/// The longest a peer connection waits between retransmissions (the kernel's floor).
const PEER_RTO_MAX_MS: libc::c_int = 1000;

/// Opens peer connections whose retransmission back-off stops at one second. By default it
/// doubles up to two minutes, so after a partition of two or three seconds heals, the kernel
/// may wait that long again before it resends what the leader wrote meanwhile, and nothing
/// commits until it does. Kernels without the option keep their default back-off.
#[derive(Clone, Copy)]
struct PeerConnector;

impl tower_service::Service<tonic::codegen::http::Uri> for PeerConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Self::Response>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::codegen::http::Uri) -> Self::Future {
        Box::pin(async move {
            let bad =
                || std::io::Error::new(std::io::ErrorKind::InvalidInput, "peer URL has no host");
            let host = uri.host().ok_or_else(bad)?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri
                .port_u16()
                .unwrap_or(if uri.scheme_str() == Some("https") {
                    443
                } else {
                    80
                });
            let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            cap_retransmit_backoff(&stream);
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

/// Sets `TCP_RTO_MAX_MS` on `stream` (see [`PeerConnector`]; the peer listener sets it on the
/// connections it accepts, which carry acknowledgements and window updates back). An older
/// kernel's refusal is logged once and ignored.
#[allow(unsafe_code)] // setsockopt(2) with an option neither nix nor socket2 names
pub fn cap_retransmit_backoff(stream: &tokio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let value = PEER_RTO_MAX_MS;
    // SAFETY: the descriptor is a live socket owned by `stream` for the whole call, and the
    // option value is a c_int read by the kernel through a pointer of the length given.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            TCP_RTO_MAX_MS,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        static WARNED: std::sync::Once = std::sync::Once::new();
        let error = std::io::Error::last_os_error();
        WARNED.call_once(|| {
            tracing::info!(%error, "this kernel cannot cap TCP retransmission back-off (TCP_RTO_MAX_MS, Linux 6.15+); peer links may take longer to recover after a partition heals")
        });
    }
}

/// A channel to a peer URL: TLS (with `tls`) for https://, plain for http://.
fn endpoint(url: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, String> {
    let ep = Endpoint::from_shared(url.to_string()).map_err(|e| e.to_string())?;
    if !url.starts_with("https://") {
        return Ok(ep);
    }
    let tls = tls.ok_or(
        "an https:// peer URL needs --peer-cert-file, --peer-key-file and --peer-trusted-ca-file",
    )?;
    ep.tls_config(tls.clone()).map_err(|e| e.to_string())
}

impl PeerTransport {
    /// Starts a sending task per peer on the current tokio runtime; `tls` is used for
    /// https:// peers.
    pub fn start(
        cluster_id: u64,
        me: u64,
        peers: &HashMap<u64, String>,
        tls: Option<ClientTlsConfig>,
    ) -> Self {
        let t = PeerTransport {
            queues: Arc::default(),
            cluster_id,
            me,
            runtime: tokio::runtime::Handle::current(),
            tls,
            down: Arc::default(),
        };
        for (id, url) in peers {
            t.add_peer(*id, url);
        }
        t
    }

    /// Starts sending to a (new) member; replaces its URL if it was known.
    pub fn add_peer(&self, id: u64, url: &str) {
        if id == self.me {
            return;
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        // The old queue's task ends when its sender is dropped here.
        self.queues.lock().insert(id, tx);
        self.runtime.spawn(send_loop(
            self.cluster_id,
            self.me,
            id,
            url.to_string(),
            self.tls.clone(),
            rx,
            self.down.clone(),
        ));
    }

    /// Stops sending to a removed member.
    pub fn remove_peer(&self, id: u64) {
        self.queues.lock().remove(&id);
    }

    /// Calls `hook` with a peer's id when a stream to it breaks and its port then refuses
    /// connections: its process is gone (the node then need not wait out an election timeout
    /// to replace a dead leader). Set once; later calls are ignored.
    pub fn on_peer_down(&self, hook: impl Fn(u64) + Send + Sync + 'static) {
        let _ = self.down.set(Box::new(hook));
    }
}

/// Asks the members at `urls` which cluster they form (for a member joining it).
pub async fn hello(urls: &[String], tls: Option<&ClientTlsConfig>) -> Option<HelloResponse> {
    for url in urls {
        let ep = match endpoint(url, tls) {
            Ok(ep) => ep,
            Err(e) => {
                tracing::warn!(%url, error = %e, "cannot ask this member");
                continue;
            }
        };
        let Ok(ch) = ep.connect_timeout(Duration::from_secs(2)).connect().await else {
            continue;
        };
        if let Ok(r) = PeerClient::new(ch).hello(HelloRequest {}).await {
            return Some(r.into_inner());
        }
    }
    None
}

async fn send_loop(
    cluster_id: u64,
    me: u64,
    to: u64,
    url: String,
    tls: Option<ClientTlsConfig>,
    mut rx: mpsc::Receiver<Vec<Message>>,
    down: PeerDownHook,
) {
    let channel = match endpoint(&url, tls.as_ref()) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(1))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(3))
            .connect_with_connector_lazy(PeerConnector),
        Err(e) => {
            tracing::error!(peer = %format!("{to:x}"), %url, error = %e, "bad peer URL");
            return;
        }
    };
    let client = PeerClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let peer = format!("{to:x}");
    loop {
        let (batches, stream) = mpsc::channel::<MessageBatch>(STREAM_QUEUE);
        let mut call = {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .stream(tokio_stream::wrappers::ReceiverStream::new(stream))
                    .await
            })
        };
        let ended = loop {
            tokio::select! {
                first = rx.recv() => {
                    let Some(first) = first else {
                        // The peer was removed (its queue dropped): end the stream cleanly.
                        drop(batches);
                        let _ = call.await;
                        return;
                    };
                    let mut batch = first;
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(mut more) => batch.append(&mut more),
                            Err(_) => break,
                        }
                    }
                    let req = MessageBatch {
                        cluster_id,
                        from: me,
                        to,
                        messages: batch.iter().filter_map(|m| m.write_to_bytes().ok()).collect(),
                    };
                    if batches.send(req).await.is_err() {
                        break (&mut call).await;
                    }
                }
                r = &mut call => break r,
            }
        };
        match ended {
            Ok(Ok(_)) => tracing::debug!(peer = %peer, "peer closed the stream"),
            Ok(Err(status)) => {
                tracing::debug!(peer = %peer, error = %status.message(), "stream to peer failed")
            }
            Err(e) => tracing::warn!(peer = %peer, error = %e, "stream task failed"),
        }
        if let Some(hook) = down.get() {
            if refused(&url).await {
                hook(to);
            }
        }
        // Messages that arrive meanwhile wait in the queue (or are dropped when it is full).
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

impl Transport for PeerTransport {
    fn send(&self, msgs: Vec<Message>) {
        // One hand-off per peer: a Ready's messages to each peer go together.
        let mut by_peer: Vec<(u64, Vec<Message>)> = Vec::new();
        for m in msgs {
            match by_peer.iter_mut().find(|(to, _)| *to == m.to) {
                Some((_, group)) => group.push(m),
                None => by_peer.push((m.to, vec![m])),
            }
        }
        let queues = self.queues.lock();
        for (to, group) in by_peer {
            match queues.get(&to) {
                // Full: the peer is behind or down; raft will resend what matters.
                Some(q) => {
                    let _ = q.try_send(group);
                }
                None => tracing::debug!(to, "message for an unknown member dropped"),
            }
        }
    }
}

/// Who is in the cluster: id -> (name, peer URLs). Shared by the server, the state machine
/// (which changes it as membership changes apply) and the peer service.
pub type Registry =
    Arc<parking_lot::RwLock<std::collections::BTreeMap<u64, (String, Vec<String>)>>>;

/// The receiving side, served on the peer URLs.
pub struct PeerService<O> {
    cluster_id: u64,
    me: u64,
    node: Node<O>,
    registry: Registry,
    /// The client URLs each member published, by member id.
    clients: Arc<RwLock<std::collections::BTreeMap<u64, Vec<String>>>>,
}

/// The largest message the peer port decodes when the backend quota is small (etcd's rafthttp
/// refuses messages over 512 MiB the same way).
pub const MIN_PEER_MESSAGE: usize = 512 << 20;

/// The largest message the peer port decodes for a member whose backend may hold
/// `quota_bytes`: a whole-state snapshot arrives in one message and must fit.
pub fn max_peer_message(quota_bytes: u64) -> usize {
    let snapshot = quota_bytes.saturating_add(64 << 20);
    usize::try_from(snapshot)
        .unwrap_or(usize::MAX)
        .max(MIN_PEER_MESSAGE)
}

impl<O: Send + 'static> PeerService<O> {
    /// The service; a message over `max_message` bytes is refused before it is decoded (see
    /// [`max_peer_message`]), so anyone reaching the port cannot make the member allocate
    /// without bound.
    pub fn server(
        cluster_id: u64,
        me: u64,
        node: Node<O>,
        registry: Registry,
        clients: Arc<RwLock<std::collections::BTreeMap<u64, Vec<String>>>>,
        max_message: usize,
    ) -> PeerServer<Self> {
        PeerServer::new(PeerService {
            cluster_id,
            me,
            node,
            registry,
            clients,
        })
        .max_decoding_message_size(max_message)
    }
}

#[tonic::async_trait]
impl<O: Send + 'static> Peer for PeerService<O> {
    async fn send(
        &self,
        req: tonic::Request<MessageBatch>,
    ) -> Result<tonic::Response<SendAck>, tonic::Status> {
        let accepted = self.deliver(req.into_inner())?;
        Ok(tonic::Response::new(SendAck { accepted }))
    }

    async fn stream(
        &self,
        req: tonic::Request<tonic::Streaming<MessageBatch>>,
    ) -> Result<tonic::Response<SendAck>, tonic::Status> {
        let mut batches = req.into_inner();
        let mut accepted = 0;
        while let Some(b) = batches.message().await? {
            accepted += self.deliver(b)?;
        }
        Ok(tonic::Response::new(SendAck { accepted }))
    }

    async fn hello(
        &self,
        _req: tonic::Request<HelloRequest>,
    ) -> Result<tonic::Response<HelloResponse>, tonic::Status> {
        let clients = self.clients.read();
        let members = self
            .registry
            .read()
            .iter()
            .map(|(id, (name, urls))| PeerMember {
                id: *id,
                name: name.clone(),
                peer_urls: urls.clone(),
                client_urls: clients.get(id).cloned().unwrap_or_default(),
            })
            .collect();
        Ok(tonic::Response::new(HelloResponse {
            cluster_id: self.cluster_id,
            members,
        }))
    }
}

impl<O: Send + 'static> PeerService<O> {
    /// Checks a batch (cluster, sender, addressee, every message decodes and is addressed as
    /// the batch) and hands its messages to the node; a bad batch changes nothing.
    #[allow(clippy::result_large_err)] // the handlers' own error type, returned as is
    fn deliver(&self, b: MessageBatch) -> Result<u64, tonic::Status> {
        if b.cluster_id != self.cluster_id {
            return Err(tonic::Status::permission_denied(format!(
                "cluster ID mismatch: local {:x}, remote {:x}",
                self.cluster_id, b.cluster_id
            )));
        }
        if !self.registry.read().contains_key(&b.from) {
            return Err(tonic::Status::permission_denied(format!(
                "member {:x} is not in this cluster",
                b.from
            )));
        }
        if b.to != self.me {
            return Err(tonic::Status::invalid_argument(format!(
                "member {:x} is not {:x}",
                self.me, b.to
            )));
        }
        // Decode everything first: a batch with a bad message changes nothing.
        let mut msgs = Vec::with_capacity(b.messages.len());
        for raw in &b.messages {
            let m = Message::parse_from_bytes(raw).map_err(|e| {
                tonic::Status::invalid_argument(format!("undecodable raft message: {e}"))
            })?;
            if m.from != b.from || m.to != self.me {
                return Err(tonic::Status::invalid_argument(
                    "raft message addressed inconsistently with its batch",
                ));
            }
            msgs.push(m);
        }
        let n = msgs.len() as u64;
        self.node.step_all(msgs);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// The option's value on a connected socket (`None` where the kernel lacks it).
    #[allow(unsafe_code)]
    fn rto_max(fd: &impl AsRawFd) -> Option<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the descriptor is open, and value/len describe a c_int the kernel may fill.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                TCP_RTO_MAX_MS,
                std::ptr::from_mut(&mut value).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(value)
    }

    #[tokio::test]
    async fn peer_connections_stop_backing_off_at_one_second() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let uri: tonic::codegen::http::Uri = format!("http://{addr}").parse().unwrap();
        let io = tower_service::Service::call(&mut PeerConnector, uri)
            .await
            .expect("connects");
        let (accepted, _) = listener.accept().await.unwrap();
        let stream = io.into_inner();
        assert!(stream.nodelay().unwrap());
        // A kernel without TCP_RTO_MAX_MS (before 6.15) refuses to read it as well as to set it:
        // then the connection must still work, with the default back-off.
        match rto_max(&accepted) {
            Some(_) => {
                assert_eq!(rto_max(&stream), Some(PEER_RTO_MAX_MS));
                cap_retransmit_backoff(&accepted);
                assert_eq!(rto_max(&accepted), Some(PEER_RTO_MAX_MS));
            }
            None => assert_eq!(rto_max(&stream), None),
        }
    }

    #[tokio::test]
    async fn a_peer_url_without_a_host_is_an_error_not_a_panic() {
        let uri: tonic::codegen::http::Uri = "/no/authority".parse().unwrap();
        let err = tower_service::Service::call(&mut PeerConnector, uri)
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }
}
