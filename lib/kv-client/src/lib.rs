//! A small etcd v3 client: the KV, Lease and Watch calls corelite's components need, over tonic
//! and the wire types of `etcd-api`. It speaks to etcd-lite or to a real etcd alike.
//!
//! Several endpoints may be given; requests are balanced over them and a failed member is
//! skipped by the channel.

use std::path::PathBuf;
use std::time::Duration;

use etcd_api::etcdserverpb::{
    compare, kv_client::KvClient, lease_client::LeaseClient, request_op, watch_client::WatchClient,
    watch_request, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest,
    WatchRequest,
};
use etcd_api::mvccpb;
use futures::StreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// What can go wrong talking to the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An endpoint that is not a URL.
    #[error("invalid endpoint {0:?}: {1}")]
    Endpoint(String, String),
    /// No endpoint given.
    #[error("no etcd endpoints given")]
    NoEndpoints,
    /// The store answered with an error, or could not be reached.
    #[error("etcd: {}", .0.message())]
    Status(Box<tonic::Status>),
    /// A watch ended (the store went away or compacted past the watch's revision).
    #[error("watch ended: {0}")]
    WatchEnded(String),
    /// TLS files that cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
}

/// TLS for https:// endpoints: the CA the store's certificate must chain to, and the client
/// certificate to present (for stores started with --client-cert-auth).
#[derive(Debug, Clone, Default)]
pub struct Tls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Tls {
    fn config(&self) -> Result<ClientTlsConfig> {
        let read =
            |p: &PathBuf| std::fs::read(p).map_err(|e| Error::Tls(format!("{}: {e}", p.display())));
        let ca = self.ca_file.as_ref().ok_or_else(|| {
            Error::Tls("an https:// endpoint needs a CA file (fleetd --etcd-cafile)".into())
        })?;
        let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => cfg = cfg.identity(Identity::from_pem(read(c)?, read(k)?)),
            (None, None) => {}
            _ => {
                return Err(Error::Tls(
                    "a client certificate needs both its certificate and key files".into(),
                ))
            }
        }
        Ok(cfg)
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::Status(Box::new(s))
    }
}

/// Result of this crate's calls.
pub type Result<T> = std::result::Result<T, Error>;

/// A key-value pair as stored, with its revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Revision of the key's last modification.
    pub mod_revision: i64,
    /// Revision of the key's creation.
    pub create_revision: i64,
    /// Lease the key is attached to (0 for none).
    pub lease: i64,
}

impl From<mvccpb::KeyValue> for KeyValue {
    fn from(kv: mvccpb::KeyValue) -> Self {
        KeyValue {
            key: kv.key,
            value: kv.value,
            mod_revision: kv.mod_revision,
            create_revision: kv.create_revision,
            lease: kv.lease,
        }
    }
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The key was created or changed.
    Put(KeyValue),
    /// The key was deleted (or its lease expired); `mod_revision` is the deletion's.
    Delete(KeyValue),
}

/// The most operations one transaction carries (etcd's default `--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

/// The end of the range of keys that start with `prefix` (etcd's `--prefix`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A connection to an etcd (or etcd-lite) cluster.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    timeout: Duration,
    requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Client {
    /// A client for `endpoints` (`http://host:port` or `host:port`). Connects lazily: a store that
    /// is not up yet only fails the requests made while it is down.
    pub fn new(endpoints: &[String], timeout: Duration) -> Result<Self> {
        Self::with_tls(endpoints, timeout, &Tls::default())
    }

    /// A client whose https:// endpoints use `tls`.
    pub fn with_tls(endpoints: &[String], timeout: Duration, tls: &Tls) -> Result<Self> {
        if endpoints.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let mut eps = Vec::new();
        for e in endpoints {
            let url = if e.contains("://") {
                e.clone()
            } else {
                format!("http://{e}")
            };
            let mut ep = Endpoint::from_shared(url.clone())
                .map_err(|err| Error::Endpoint(e.clone(), err.to_string()))?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true);
            if url.starts_with("https://") {
                ep = ep
                    .tls_config(tls.config()?)
                    .map_err(|err| Error::Tls(format!("{e}: {err}")))?;
            }
            eps.push(ep);
        }
        let channel = if eps.len() == 1 {
            eps.remove(0).connect_lazy()
        } else {
            Channel::balance_list(eps.into_iter())
        };
        Ok(Client {
            channel,
            timeout,
            requests: Default::default(),
        })
    }

    /// How many requests this client (and its clones) sent; a watch counts once.
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.timeout);
        r
    }

    /// The value of `key`, if present.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp = KvClient::new(self.channel.clone())
            .range(self.req(RangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            }))
            .await?
            .into_inner();
        Ok(resp.kvs.into_iter().next().map(KeyValue::from))
    }

    /// Every key under `prefix`, sorted by key, and the store's revision they were read at.
    pub async fn get_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        let resp = KvClient::new(self.channel.clone())
            .range(self.req(RangeRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: prefix_end(prefix.as_bytes()),
                ..Default::default()
            }))
            .await?
            .into_inner();
        let rev = resp.header.map(|h| h.revision).unwrap_or_default();
        Ok((resp.kvs.into_iter().map(KeyValue::from).collect(), rev))
    }

    /// Sets `key`, attached to `lease` when non-zero. Returns the write's revision.
    pub async fn put(&self, key: &str, value: impl Into<Vec<u8>>, lease: i64) -> Result<i64> {
        let resp = KvClient::new(self.channel.clone())
            .put(self.req(PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.into(),
                lease,
                ..Default::default()
            }))
            .await?
            .into_inner();
        Ok(resp.header.map(|h| h.revision).unwrap_or_default())
    }

    /// Sets many keys (`key`, `value`, `lease`), in transactions of at most [`MAX_TXN_OPS`]
    /// puts sent concurrently. Returns the highest revision written. Each transaction is atomic;
    /// the whole batch is not.
    pub async fn put_many(&self, items: Vec<(String, Vec<u8>, i64)>) -> Result<i64> {
        let chunks: Vec<Vec<RequestOp>> = items
            .chunks(MAX_TXN_OPS)
            .map(|chunk| {
                chunk
                    .iter()
                    .map(|(k, v, lease)| RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: k.as_bytes().to_vec(),
                            value: v.clone(),
                            lease: *lease,
                            ..Default::default()
                        })),
                    })
                    .collect()
            })
            .collect();
        let results = futures::stream::iter(chunks)
            .map(|success| async move {
                let txn = TxnRequest {
                    compare: vec![],
                    success,
                    failure: vec![],
                };
                let resp = KvClient::new(self.channel.clone())
                    .txn(self.req(txn))
                    .await?
                    .into_inner();
                Ok::<i64, Error>(resp.header.map(|h| h.revision).unwrap_or_default())
            })
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await;
        let mut rev = 0;
        for r in results {
            rev = rev.max(r?);
        }
        Ok(rev)
    }

    /// Sets `key` only if it does not exist yet. Returns whether it was created.
    pub async fn create(&self, key: &str, value: impl Into<Vec<u8>>, lease: i64) -> Result<bool> {
        self.put_if_mod_revision(key, value, lease, 0).await
    }

    /// Sets `key` only if its mod revision is `rev` (0: only if absent). Returns whether it was set.
    pub async fn put_if_mod_revision(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        lease: i64,
        rev: i64,
    ) -> Result<bool> {
        let k = key.as_bytes().to_vec();
        let txn = TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Mod as i32,
                key: k.clone(),
                target_union: Some(compare::TargetUnion::ModRevision(rev)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: k,
                    value: value.into(),
                    lease,
                    ..Default::default()
                })),
            }],
            failure: vec![],
        };
        let resp = KvClient::new(self.channel.clone())
            .txn(self.req(txn))
            .await?
            .into_inner();
        Ok(resp.succeeded)
    }

    /// Deletes `key`; returns how many keys went.
    pub async fn delete(&self, key: &str) -> Result<i64> {
        let resp = KvClient::new(self.channel.clone())
            .delete_range(self.req(DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            }))
            .await?
            .into_inner();
        Ok(resp.deleted)
    }

    /// Deletes `key` only if its value is still `value` (nobody took it over).
    pub async fn delete_if_value(&self, key: &str, value: &[u8]) -> Result<bool> {
        let k = key.as_bytes().to_vec();
        let txn = TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Value as i32,
                key: k.clone(),
                target_union: Some(compare::TargetUnion::Value(value.to_vec())),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: k,
                        ..Default::default()
                    },
                )),
            }],
            failure: vec![],
        };
        let resp = KvClient::new(self.channel.clone())
            .txn(self.req(txn))
            .await?
            .into_inner();
        Ok(resp.succeeded)
    }

    /// Deletes every key under `prefix`.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<i64> {
        let resp = KvClient::new(self.channel.clone())
            .delete_range(self.req(DeleteRangeRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: prefix_end(prefix.as_bytes()),
                ..Default::default()
            }))
            .await?
            .into_inner();
        Ok(resp.deleted)
    }

    /// Grants a lease of `ttl` seconds; returns its id.
    pub async fn lease_grant(&self, ttl: i64) -> Result<i64> {
        let resp = LeaseClient::new(self.channel.clone())
            .lease_grant(self.req(LeaseGrantRequest { ttl, id: 0 }))
            .await?
            .into_inner();
        if !resp.error.is_empty() {
            return Err(tonic::Status::unknown(resp.error).into());
        }
        Ok(resp.id)
    }

    /// Renews lease `id` once; returns the TTL left, 0 when the lease is gone.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64> {
        let req = tokio_stream::once(LeaseKeepAliveRequest { id });
        let mut stream = LeaseClient::new(self.channel.clone())
            .lease_keep_alive(self.req(req))
            .await?
            .into_inner();
        match stream.message().await? {
            Some(resp) => Ok(resp.ttl),
            None => Ok(0),
        }
    }

    /// Revokes lease `id`, deleting its keys.
    pub async fn lease_revoke(&self, id: i64) -> Result<()> {
        LeaseClient::new(self.channel.clone())
            .lease_revoke(self.req(LeaseRevokeRequest { id }))
            .await?;
        Ok(())
    }

    /// Watches every key under `prefix` from revision `start` (0: from now). The receiver yields
    /// batches of events in revision order; it ends with an error when the watch breaks.
    pub async fn watch_prefix(&self, prefix: &str, start: i64) -> Result<Watch> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: prefix.as_bytes().to_vec(),
                    range_end: prefix_end(prefix.as_bytes()),
                    start_revision: start,
                    ..Default::default()
                },
            )),
        };
        tx.send(create)
            .await
            .map_err(|_| Error::WatchEnded("request stream closed".into()))?;
        let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
        // No deadline: a watch lives as long as its owner wants it.
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stream = WatchClient::new(self.channel.clone())
            .watch(requests)
            .await?
            .into_inner();
        Ok(Watch {
            stream,
            _requests: tx,
        })
    }
}

/// A running watch: call [`Watch::next`] for each batch of events.
pub struct Watch {
    stream: tonic::Streaming<etcd_api::etcdserverpb::WatchResponse>,
    _requests: tokio::sync::mpsc::Sender<WatchRequest>,
}

impl Watch {
    /// The next batch of events (never empty). Errors when the watch was cancelled, compacted
    /// away or the connection broke; the caller re-lists and watches again.
    pub async fn next(&mut self) -> Result<Vec<Event>> {
        loop {
            let resp = match self.stream.next().await {
                Some(r) => r?,
                None => return Err(Error::WatchEnded("stream closed".into())),
            };
            if resp.canceled {
                let why = if resp.compact_revision > 0 {
                    format!("compacted at revision {}", resp.compact_revision)
                } else {
                    resp.cancel_reason
                };
                return Err(Error::WatchEnded(why));
            }
            if resp.events.is_empty() {
                continue;
            }
            let events = resp
                .events
                .into_iter()
                .filter_map(|e| {
                    let kv = KeyValue::from(e.kv?);
                    Some(if e.r#type == mvccpb::event::EventType::Delete as i32 {
                        Event::Delete(kv)
                    } else {
                        Event::Put(kv)
                    })
                })
                .collect();
            return Ok(events);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn no_endpoints_is_an_error() {
        assert!(matches!(
            Client::new(&[], Duration::from_secs(1)),
            Err(Error::NoEndpoints)
        ));
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;

    #[test]
    fn https_endpoints_need_a_ca_and_whole_client_certificates() {
        let eps = ["https://127.0.0.1:2379".to_string()];
        let e = Client::with_tls(&eps, Duration::from_secs(1), &Tls::default()).expect_err("no CA");
        assert!(e.to_string().contains("--etcd-cafile"), "{e}");
        let ca = std::env::temp_dir().join(format!("kv-client-ca-{}.pem", std::process::id()));
        std::fs::write(&ca, "not checked until a handshake").expect("writing");
        let half = Tls {
            ca_file: Some(ca.clone()),
            cert_file: Some(ca.clone()),
            key_file: None,
        };
        let e = half.config().expect_err("a certificate without its key");
        assert!(e.to_string().contains("both"), "{e}");
        let missing = Tls {
            ca_file: Some(ca.with_extension("missing")),
            ..Tls::default()
        };
        let e = missing.config().expect_err("a missing CA file");
        assert!(e.to_string().contains("missing"), "{e}");
        let _ = std::fs::remove_file(&ca);
    }
}
