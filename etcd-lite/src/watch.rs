//! Watch streams: many watchers per stream, each with a key range, a start revision, filters and
//! prev_kv. Transport-agnostic: gRPC and the JSON gateway both feed requests in and take
//! responses out.
//!
//! Catch-up and live delivery meet without gaps or duplicates: the stream subscribes to committed
//! revisions first, then reads history up to the published revision P from the store, then takes
//! live revisions > P from the subscription. A subscriber that falls behind catches up from the
//! store again.

use std::collections::BTreeMap;
use std::sync::Arc;

use etcd_api::etcdserverpb::{
    watch_create_request::FilterType, watch_request::RequestUnion, WatchCreateRequest,
    WatchRequest, WatchResponse,
};
use etcd_api::mvccpb::{event::EventType, Event};
use futures::{Stream, StreamExt};
use tokio::sync::{broadcast, mpsc};

use crate::applier::RevEvents;
use crate::error::EtcdError;
use crate::mvcc::KeyRange;
use crate::server::{Caller, EtcdServer};

/// Most events put in one response while catching up.
const MAX_EVENTS_PER_RESPONSE: usize = 1000;
/// Most watchers on one stream (bounded like everything else).
const MAX_WATCHERS_PER_STREAM: usize = 10_000;

struct Watcher {
    key: Vec<u8>,
    end: Vec<u8>,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    /// The first revision not yet delivered.
    next_rev: i64,
    /// The auth revision its permission was last checked at.
    auth_rev: u64,
}

impl Watcher {
    fn wants(&self, ev: &Event) -> bool {
        let Some(kv) = &ev.kv else { return false };
        let put = ev.r#type == EventType::Put as i32;
        if (put && self.no_put) || (!put && self.no_delete) {
            return false;
        }
        KeyRange::new(&self.key, &self.end).contains(&kv.key)
    }

    fn shape(&self, ev: &Event) -> Event {
        let mut ev = ev.clone();
        if !self.prev_kv {
            ev.prev_kv = None;
        }
        ev
    }
}

/// One watch stream's state.
struct WatchStream {
    server: Arc<EtcdServer>,
    out: mpsc::Sender<Result<WatchResponse, tonic::Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    /// Who opened the stream (see [`crate::server::Caller`]).
    who: Caller,
}

/// Outcome of sending: `Err` means the client is gone.
type Sent = Result<(), ()>;

impl WatchStream {
    async fn send(&self, resp: WatchResponse) -> Sent {
        self.out.send(Ok(resp)).await.map_err(|_| ())
    }

    fn response(&self, watch_id: i64, rev: i64) -> WatchResponse {
        WatchResponse {
            header: self.server.header(rev),
            watch_id,
            ..Default::default()
        }
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Sent {
        let published = self.server.store.published();
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            self.next_id
        };
        if self.watchers.contains_key(&id) || self.watchers.len() >= MAX_WATCHERS_PER_STREAM {
            let reason = if self.watchers.contains_key(&id) {
                "mvcc: duplicate watch ID provided on the WatchStream"
            } else {
                "mvcc: too many watchers on this stream"
            };
            let mut r = self.response(id, published);
            r.created = true;
            r.canceled = true;
            r.cancel_reason = reason.into();
            return self.send(r).await;
        }
        if c.watch_id == 0 {
            self.next_id += 1;
        } else {
            self.next_id = self.next_id.max(c.watch_id + 1);
        }
        if let Err(e) = self.may_read(&c.key, &c.range_end) {
            let mut r = self.response(id, published);
            r.created = true;
            r.canceled = true;
            r.cancel_reason = e.to_string();
            return self.send(r).await;
        }
        let filters: Vec<i32> = c.filters.clone();
        let w = Watcher {
            key: c.key,
            end: c.range_end,
            prev_kv: c.prev_kv,
            no_put: filters.contains(&(FilterType::Noput as i32)),
            no_delete: filters.contains(&(FilterType::Nodelete as i32)),
            progress_notify: c.progress_notify,
            next_rev: if c.start_revision > 0 {
                c.start_revision
            } else {
                published + 1
            },
            auth_rev: self.server.auth.state().revision,
        };
        let mut r = self.response(id, published);
        r.created = true;
        self.send(r).await?;
        self.watchers.insert(id, w);
        self.server.metrics.watchers.inc();
        self.catch_up(id).await
    }

    /// Whether the stream's user may read the range (with auth off: anyone).
    fn may_read(&self, key: &[u8], end: &[u8]) -> Result<(), EtcdError> {
        let state = self.server.auth.state();
        match &self.who {
            _ if !state.enabled => Ok(()),
            None => Err(EtcdError::UserEmpty),
            Some(u) if state.permits(u, key, end, crate::auth::Access::Read) => Ok(()),
            Some(_) => Err(EtcdError::PermissionDenied),
        }
    }

    /// Cancels the watchers whose user may no longer read their range (users, roles or the
    /// enabled flag changed since they were checked): nothing more reaches them.
    async fn recheck(&mut self) -> Sent {
        let now = self.server.auth.state().revision;
        let stale: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.auth_rev != now)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            let (key, end) = {
                let w = &self.watchers[&id];
                (w.key.clone(), w.end.clone())
            };
            match self.may_read(&key, &end) {
                Ok(()) => {
                    if let Some(w) = self.watchers.get_mut(&id) {
                        w.auth_rev = now;
                    }
                }
                Err(e) => {
                    tracing::info!(watch_id = id, reason = %e, "watcher cancelled: its user may no longer read its keys");
                    self.watchers.remove(&id);
                    self.server.metrics.watchers.dec();
                    let mut r = self.response(id, self.server.store.published());
                    r.canceled = true;
                    r.cancel_reason = e.to_string();
                    self.send(r).await?;
                }
            }
        }
        Ok(())
    }

    /// Delivers history from the watcher's next revision to the published revision.
    async fn catch_up(&mut self, id: i64) -> Sent {
        self.recheck().await?;
        let Some(w) = self.watchers.get(&id) else {
            return Ok(());
        };
        let events = {
            let view = self.server.store.read();
            if w.next_rev > view.rev {
                return Ok(());
            }
            let kr = KeyRange::new(&w.key, &w.end);
            match view.events(&kr, w.next_rev, view.rev, true) {
                Ok(evs) => Ok((evs, view.rev)),
                Err(EtcdError::Compacted) => Err(view.compacted()),
                Err(e) => {
                    tracing::error!(error = %e, "reading watch history");
                    Err(0)
                }
            }
        };
        match events {
            Ok((evs, upto)) => {
                let w = &self.watchers[&id];
                let evs: Vec<Event> = evs
                    .iter()
                    .filter(|e| w.wants(e))
                    .map(|e| w.shape(e))
                    .collect();
                for chunk in evs.chunks(MAX_EVENTS_PER_RESPONSE) {
                    let mut r = self.response(id, upto);
                    r.events = chunk.to_vec();
                    self.send(r).await?;
                }
                if let Some(w) = self.watchers.get_mut(&id) {
                    w.next_rev = upto + 1;
                }
                Ok(())
            }
            Err(compacted) => {
                // etcd: a watcher whose start is compacted gets the compact revision and is
                // cancelled.
                self.watchers.remove(&id);
                self.server.metrics.watchers.dec();
                let mut r = self.response(id, self.server.store.published());
                r.canceled = true;
                r.compact_revision = compacted;
                r.cancel_reason = EtcdError::Compacted.to_string();
                self.send(r).await
            }
        }
    }

    async fn deliver(&mut self, rev: &RevEvents) -> Sent {
        self.recheck().await?;
        let mut sends = Vec::new();
        // A put's previous value is read only if a watcher asks for it, and once for all.
        let mut filled: Option<Vec<Event>> = None;
        for (id, w) in self.watchers.iter_mut() {
            if w.next_rev > rev.rev {
                continue;
            }
            w.next_rev = rev.rev + 1;
            let source = if w.prev_kv {
                filled.get_or_insert_with(|| {
                    let view = self.server.store.read();
                    let mut evs = rev.events.clone();
                    for ev in &mut evs {
                        if let Err(e) = view.fill_prev(ev) {
                            tracing::error!(error = %e, "reading a watch event's previous value");
                        }
                    }
                    evs
                })
            } else {
                &rev.events
            };
            let evs: Vec<Event> = source
                .iter()
                .filter(|e| w.wants(e))
                .map(|e| w.shape(e))
                .collect();
            if !evs.is_empty() {
                sends.push((*id, evs));
            }
        }
        for (id, evs) in sends {
            let mut r = self.response(id, rev.rev);
            r.events = evs;
            self.send(r).await?;
        }
        Ok(())
    }

    async fn cancel(&mut self, id: i64) -> Sent {
        if self.watchers.remove(&id).is_some() {
            self.server.metrics.watchers.dec();
            let mut r = self.response(id, self.server.store.published());
            r.canceled = true;
            return self.send(r).await;
        }
        Ok(())
    }

    async fn handle(&mut self, req: WatchRequest) -> Sent {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => self.cancel(c.watch_id).await,
            Some(RequestUnion::ProgressRequest(_)) => {
                let r = self.response(-1, self.server.store.published());
                self.send(r).await
            }
            None => Ok(()),
        }
    }
}

/// Serves one watch stream until the client goes away.
pub async fn serve<S>(
    server: Arc<EtcdServer>,
    mut requests: S,
    out: mpsc::Sender<Result<WatchResponse, tonic::Status>>,
    who: Caller,
) where
    S: Stream<Item = Result<WatchRequest, tonic::Status>> + Unpin + Send,
{
    let mut sub = server.events.subscribe();
    let interval = server.limits.progress_interval;
    let mut ws = WatchStream {
        server: server.clone(),
        out,
        watchers: BTreeMap::new(),
        next_id: 0,
        who,
    };
    server.metrics.watch_streams.inc();
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        let sent = tokio::select! {
            req = requests.next() => match req {
                Some(Ok(req)) => ws.handle(req).await,
                Some(Err(e)) => { tracing::debug!(error = %e, "watch stream ended"); break }
                None => break,
            },
            ev = sub.recv() => match ev {
                Ok(rev) => ws.deliver(&rev).await,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(skipped = n, "watch stream lagged; catching up from the store");
                    let ids: Vec<i64> = ws.watchers.keys().copied().collect();
                    let mut r = Ok(());
                    for id in ids {
                        r = r.and(ws.catch_up(id).await);
                    }
                    r
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = progress.tick() => {
                let rev = server.store.published();
                let ids: Vec<i64> = ws.watchers.iter().filter(|(_, w)| w.progress_notify).map(|(id, _)| *id).collect();
                let mut r = Ok(());
                for id in ids {
                    r = r.and(ws.send(ws.response(id, rev)).await);
                }
                r
            }
            _ = ws.out.closed() => break,
        };
        if sent.is_err() {
            break;
        }
    }
    server.metrics.watchers.sub(ws.watchers.len() as i64);
    server.metrics.watch_streams.dec();
}
