//! The single writer: applies write commands in order on one thread, commits them in groups with
//! one fsync per group, then publishes the new revision, notifies watchers and answers.
//!
//! Invariant: nothing is acknowledged, published or sent to a watcher before the flush that makes
//! it durable has returned. A failed commit or flush is fatal: the process exits rather than
//! carry on with a store whose durability it can no longer vouch for.

use std::sync::Arc;
use std::time::Instant;

use etcd_api::etcdserverpb::{TxnRequest, TxnResponse};
use etcd_api::mvccpb::{event::EventType, Event};
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::error::{EtcdError, Result};
use crate::lease::LeaseTable;
use crate::mvcc::{txn, KeyRange, MvccStore, WriteTxn};
use crate::v2store;

/// Most commands committed by one fsync.
pub const MAX_GROUP: usize = 512;
/// Commands waiting for the writer before submitters are back-pressured.
pub const QUEUE_DEPTH: usize = 8192;

/// A write request, in a form that could be logged and replayed.
#[derive(Debug, Clone)]
pub enum Command {
    Txn(TxnRequest),
    Compact(i64),
    LeaseGrant { id: i64, ttl: i64 },
    LeaseRevoke { id: i64 },
    V2(v2store::V2Command),
}

/// The result of one command.
#[derive(Debug)]
pub enum Outcome {
    Txn(Box<TxnResponse>),
    Compacted,
    LeaseGranted { id: i64, ttl: i64 },
    LeaseRevoked,
    V2(Box<v2store::V2Outcome>),
}

/// An outcome and the store revision right after it.
#[derive(Debug)]
pub struct Applied {
    pub outcome: Outcome,
    pub rev: i64,
}

/// The events of one revision, as watchers receive them (prev_kv always filled when known).
#[derive(Debug)]
pub struct RevEvents {
    pub rev: i64,
    pub events: Vec<Event>,
}

type Reply = oneshot::Sender<Result<Applied>>;

/// Handle for submitting commands to the writer thread.
#[derive(Clone)]
pub struct Applier {
    tx: mpsc::Sender<(Command, Reply)>,
}

impl Applier {
    /// Starts the writer thread.
    pub fn start(
        store: Arc<MvccStore>,
        leases: Arc<Mutex<LeaseTable>>,
        events: broadcast::Sender<Arc<RevEvents>>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        std::thread::Builder::new()
            .name("etcd-applier".into())
            .spawn(move || run(store, leases, events, rx))
            .expect("spawning the applier thread succeeds at start-up");
        Applier { tx }
    }

    /// Submits a command and waits until it is durable.
    pub async fn submit(&self, cmd: Command) -> Result<Applied> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((cmd, reply))
            .await
            .map_err(|_| EtcdError::Stopped)?;
        rx.await.map_err(|_| EtcdError::Stopped)?
    }
}

fn run(
    store: Arc<MvccStore>,
    leases: Arc<Mutex<LeaseTable>>,
    events: broadcast::Sender<Arc<RevEvents>>,
    mut rx: mpsc::Receiver<(Command, Reply)>,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(c) => group.push(c),
                Err(_) => break,
            }
        }
        let mut replies = Vec::with_capacity(group.len());
        let mut committed = Vec::new();
        for (cmd, reply) in group.drain(..) {
            let res = apply(&store, &leases, cmd, &mut committed);
            replies.push((reply, res));
        }
        if let Err(e) = store.flush() {
            tracing::error!(error = %e, "flushing the store failed; stopping to protect acknowledged data");
            std::process::exit(70);
        }
        if let Some(last) = committed.last() {
            store.publish(last.rev);
        }
        for c in committed {
            // No receivers is fine: nobody watches.
            let _ = events.send(Arc::new(c));
        }
        for (reply, res) in replies {
            let _ = reply.send(res);
        }
    }
    tracing::info!("applier stopped");
}

/// Applies one command; storage failures are fatal, request errors are returned.
fn apply(
    store: &MvccStore,
    leases: &Mutex<LeaseTable>,
    cmd: Command,
    committed: &mut Vec<RevEvents>,
) -> Result<Applied> {
    if let Command::Compact(rev) = cmd {
        // Compaction takes the store's lock itself and never bumps the revision.
        return match store.compact(rev) {
            Ok(()) => Ok(Applied {
                outcome: Outcome::Compacted,
                rev: store.read_current(),
            }),
            Err(EtcdError::Storage(e)) => fatal(EtcdError::Storage(e)),
            Err(e) => Err(e),
        };
    }
    let mut w = store.write();
    let before = w.current();
    match apply_in(&mut w, leases, cmd) {
        Ok(outcome) => {
            let done = w.commit().unwrap_or_else(|e| fatal(e));
            track_leases(&mut leases.lock(), &done.events);
            let rev = match done.rev {
                Some(rev) => {
                    committed.push(RevEvents {
                        rev,
                        events: done.events,
                    });
                    rev
                }
                None => before,
            };
            Ok(Applied { outcome, rev })
        }
        Err(EtcdError::Storage(e)) => fatal(EtcdError::Storage(e)),
        Err(e) => Err(e),
    }
}

fn fatal(e: EtcdError) -> ! {
    tracing::error!(error = %e, "storage failure while applying; stopping to protect acknowledged data");
    std::process::exit(70);
}

/// Keeps each lease's key set in step with the key changes of a committed transaction.
fn track_leases(table: &mut LeaseTable, events: &[Event]) {
    for ev in events {
        let Some(kv) = &ev.kv else { continue };
        if let Some(prev) = &ev.prev_kv {
            if prev.lease != 0 {
                table.detach(prev.lease, &prev.key);
            }
        }
        if ev.r#type == EventType::Put as i32 && kv.lease != 0 {
            table.attach(kv.lease, &kv.key);
        }
    }
}

fn apply_in(w: &mut WriteTxn<'_>, leases: &Mutex<LeaseTable>, cmd: Command) -> Result<Outcome> {
    match cmd {
        Command::Txn(req) => {
            let table = leases.lock();
            let exists = |id: i64| table.contains(id);
            let resp = txn::txn(w, &req, &exists)?;
            Ok(Outcome::Txn(Box::new(resp)))
        }
        Command::Compact(_) => {
            unreachable!("compaction is handled before a write transaction opens")
        }
        Command::LeaseGrant { id, ttl } => {
            let mut table = leases.lock();
            if table.contains(id) {
                return Err(EtcdError::LeaseExist);
            }
            w.save_lease(id, ttl);
            table.insert(id, ttl, Instant::now());
            Ok(Outcome::LeaseGranted { id, ttl })
        }
        Command::LeaseRevoke { id } => {
            let keys = {
                let table = leases.lock();
                let lease = table.get(id).ok_or(EtcdError::LeaseNotFound)?;
                lease.keys.iter().cloned().collect::<Vec<_>>()
            };
            revoke_keys(w, &keys)?;
            w.remove_lease(id);
            leases.lock().remove(id);
            Ok(Outcome::LeaseRevoked)
        }
        Command::V2(c) => {
            let out = v2store::apply(w, leases, c, Instant::now())?;
            Ok(Outcome::V2(Box::new(out)))
        }
    }
}

/// Deletes a revoked lease's keys. A key ending in `/` is a v2 directory marker: its whole
/// subtree goes with it, as a v2 directory's TTL expiry removes its children.
pub fn revoke_keys(w: &mut WriteTxn<'_>, keys: &[Vec<u8>]) -> Result<()> {
    for k in keys {
        if k.ends_with(b"/") {
            let end = crate::v2store::prefix_end(k);
            w.delete_range(&KeyRange::new(k, &end))?;
        } else {
            w.delete_range(&KeyRange::new(k, b""))?;
        }
    }
    Ok(())
}
