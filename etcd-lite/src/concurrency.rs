//! etcd's server-side Lock and Election services (`v3lockpb`, `v3electionpb`) as recipes over
//! [`EtcdServer`]'s checked KV methods, with the semantics of etcd's `concurrency` package:
//!
//! - a lock or an election `name` keeps its candidates under `name/`, one key per lease
//!   (`name/<lease in hex>`), bound to that lease;
//! - the candidate whose key has the lowest create revision holds the lock or leads; the
//!   others wait, each for the deletion of the last key created before its own;
//! - while a call waits, the lease it named is kept alive (etcd's session does the same); a
//!   caller that goes away while waiting has its key deleted;
//! - a lease of 0 gets a fresh lease of 60 s, as etcd's session grants one.
//!
//! Every read and write goes through [`EtcdServer`] as the caller, so auth applies exactly as
//! to the KV calls the recipe is made of.

use std::sync::Arc;
use std::time::Duration;

use etcd_api::etcdserverpb::{
    compare, request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest,
    RequestOp, ResponseHeader, TxnRequest, TxnResponse,
};
use etcd_api::mvccpb::{event::EventType, KeyValue};
use etcd_api::v3electionpb::{LeaderKey, LeaderResponse};
use tokio::sync::{broadcast, mpsc};

use crate::auth::Access;
use crate::error::{EtcdError, Result};
use crate::mvcc::KvRead;
use crate::server::{Caller, EtcdServer};
use crate::v2store::prefix_end;

/// The TTL of the lease a call without one gets (etcd's session default).
const SESSION_TTL: i64 = 60;

/// The key prefix of a lock or an election.
fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

/// A candidate's key: the prefix and its lease in lower-case hex.
fn candidate_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(format!("{lease:x}").as_bytes());
    k
}

fn op(request: request_op::Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

fn get(key: &[u8]) -> RequestOp {
    op(request_op::Request::RequestRange(RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    }))
}

/// The key under `prefix` created first (`first`) or last, optionally among those created at
/// or before `max_create`.
fn by_create(prefix: &[u8], first: bool, max_create: i64) -> RangeRequest {
    use etcd_api::etcdserverpb::range_request::{SortOrder, SortTarget};
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: if first {
            SortOrder::Ascend
        } else {
            SortOrder::Descend
        } as i32,
        sort_target: SortTarget::Create as i32,
        max_create_revision: max_create,
        // This member has applied the caller's own write already; anything newer that matters
        // arrives as an event.
        serializable: true,
        ..Default::default()
    }
}

fn create_revision_is(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

fn range_kvs(resp: &TxnResponse, i: usize) -> &[KeyValue] {
    match resp.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseRange(r)) => &r.kvs,
        _ => &[],
    }
}

/// A lease kept alive while a call waits, as etcd's session keeps its lease alive for the
/// duration of the request; stops when dropped.
struct Session {
    lease: i64,
    keeper: tokio::task::JoinHandle<()>,
}

impl Session {
    async fn open(server: &Arc<EtcdServer>, lease: i64) -> Result<Session> {
        let lease = if lease == 0 {
            server.lease_grant(SESSION_TTL, 0).await?.0
        } else {
            lease
        };
        let ttl = server.leases.lock().get(lease).map(|l| l.ttl);
        let keeper = match ttl {
            Some(ttl) => {
                let server = server.clone();
                let every = Duration::from_millis((ttl.max(1) as u64 * 1000 / 3).max(500));
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(every).await;
                        match server.lease_keepalive(lease).await {
                            Ok(0) => return,
                            Ok(_) => {}
                            Err(e) => tracing::debug!(lease, error = %e, "session keep-alive"),
                        }
                    }
                })
            }
            // An unknown lease: the write that names it fails with etcd's error.
            None => tokio::spawn(async {}),
        };
        Ok(Session { lease, keeper })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Deletes a candidate's key if the call that made it goes away before it finished (a client
/// that cancels a Lock or a Campaign), as etcd's recipes clean up on a cancelled context.
struct Cleanup {
    server: Arc<EtcdServer>,
    who: Caller,
    key: Vec<u8>,
    rev: i64,
    armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (server, who, key, rev) = (
            self.server.clone(),
            self.who.clone(),
            std::mem::take(&mut self.key),
            self.rev,
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = delete_if_created_at(&server, &who, &key, rev).await {
                    tracing::info!(error = %e, "removing the key of a cancelled lock or campaign");
                }
            });
        }
    }
}

/// Deletes `key` if it is still the one created at `rev`; the header of that transaction.
async fn delete_if_created_at(
    server: &EtcdServer,
    who: &Caller,
    key: &[u8],
    rev: i64,
) -> Result<ResponseHeader> {
    let resp = server
        .txn(
            TxnRequest {
                compare: vec![create_revision_is(key, rev)],
                success: vec![op(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: key.to_vec(),
                        ..Default::default()
                    },
                ))],
                failure: vec![],
            },
            who,
        )
        .await?;
    Ok(resp.header.unwrap_or_default())
}

/// Waits until `key`, as created at `create_rev`, is deleted (a key created again since is a
/// different key: the one waited for is gone).
async fn wait_deleted(server: &EtcdServer, key: &[u8], create_rev: i64) -> Result<()> {
    let mut events = server.events.subscribe();
    loop {
        let present = {
            let view = server.store.read();
            view.get(key)?
                .is_some_and(|kv| kv.create_revision == create_rev)
        };
        if !present {
            return Ok(());
        }
        match events.recv().await {
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return Err(EtcdError::Stopped),
        }
    }
}

/// etcd's `waitDeletes`: waits until no key under `prefix` created at or before `max_create`
/// is left; the header of the read that found none.
async fn wait_deletes(
    server: &EtcdServer,
    who: &Caller,
    prefix: &[u8],
    max_create: i64,
) -> Result<ResponseHeader> {
    loop {
        let resp = server
            .range(&by_create(prefix, false, max_create), who)
            .await?;
        match resp.kvs.first() {
            None => return Ok(resp.header.unwrap_or_default()),
            Some(last) => wait_deleted(server, &last.key, last.create_revision).await?,
        }
    }
}

/// Lock: the key that holds lock `name` for `lease`, once it does; the response header.
pub async fn lock(
    server: &Arc<EtcdServer>,
    who: &Caller,
    name: &[u8],
    lease: i64,
) -> Result<(ResponseHeader, Vec<u8>)> {
    let session = Session::open(server, lease).await?;
    let prefix = prefix_of(name);
    let key = candidate_key(&prefix, session.lease);
    let owner = op(request_op::Request::RequestRange(by_create(
        &prefix, true, 0,
    )));
    let resp = server
        .txn(
            TxnRequest {
                compare: vec![create_revision_is(&key, 0)],
                success: vec![
                    op(request_op::Request::RequestPut(PutRequest {
                        key: key.clone(),
                        lease: session.lease,
                        ..Default::default()
                    })),
                    owner.clone(),
                ],
                failure: vec![get(&key), owner],
            },
            who,
        )
        .await?;
    let header = resp.header.unwrap_or_default();
    let my_rev = if resp.succeeded {
        header.revision
    } else {
        range_kvs(&resp, 0)
            .first()
            .map(|kv| kv.create_revision)
            .ok_or(EtcdError::SessionExpired)?
    };
    let owner = range_kvs(&resp, 1).first().map(|kv| kv.create_revision);
    if owner.is_none_or(|rev| rev == my_rev) {
        return Ok((header, key));
    }
    let mut cleanup = Cleanup {
        server: server.clone(),
        who: who.clone(),
        key: key.clone(),
        rev: my_rev,
        armed: true,
    };
    let header = wait_deletes(server, who, &prefix, my_rev - 1).await?;
    cleanup.armed = false;
    // The session's key must still be there: a lease that expired while waiting lost it.
    let held = server
        .range(
            &RangeRequest {
                key: key.clone(),
                ..Default::default()
            },
            who,
        )
        .await?;
    if held.kvs.is_empty() {
        return Err(EtcdError::SessionExpired);
    }
    drop(session);
    Ok((header, key))
}

/// Unlock: deletes the key a Lock answered.
pub async fn unlock(server: &EtcdServer, who: &Caller, key: Vec<u8>) -> Result<ResponseHeader> {
    let resp = server
        .delete_range(
            DeleteRangeRequest {
                key,
                ..Default::default()
            },
            who,
        )
        .await?;
    Ok(resp.header.unwrap_or_default())
}

/// Campaign: waits until the caller leads election `name` with `value`; its leader key.
pub async fn campaign(
    server: &Arc<EtcdServer>,
    who: &Caller,
    name: &[u8],
    lease: i64,
    value: Vec<u8>,
) -> Result<(ResponseHeader, LeaderKey)> {
    let session = Session::open(server, lease).await?;
    let prefix = prefix_of(name);
    let key = candidate_key(&prefix, session.lease);
    let resp = server
        .txn(
            TxnRequest {
                compare: vec![create_revision_is(&key, 0)],
                success: vec![op(request_op::Request::RequestPut(PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                    lease: session.lease,
                    ..Default::default()
                }))],
                failure: vec![get(&key)],
            },
            who,
        )
        .await?;
    let header = resp.header.unwrap_or_default();
    let leader = LeaderKey {
        name: name.to_vec(),
        key: key.clone(),
        rev: header.revision,
        lease: session.lease,
    };
    let leader = if resp.succeeded {
        leader
    } else {
        // Campaigning again with the same lease: the same candidacy, its value updated.
        let kv = range_kvs(&resp, 0)
            .first()
            .cloned()
            .ok_or(EtcdError::SessionExpired)?;
        let leader = LeaderKey {
            rev: kv.create_revision,
            ..leader
        };
        if kv.value != value {
            if let Err(e) = proclaim(server, who, &leader, value).await {
                let _ = resign(server, who, &leader).await;
                return Err(e);
            }
        }
        leader
    };
    let mut cleanup = Cleanup {
        server: server.clone(),
        who: who.clone(),
        key,
        rev: leader.rev,
        armed: true,
    };
    wait_deletes(server, who, &prefix, leader.rev - 1).await?;
    cleanup.armed = false;
    drop(session);
    Ok((header, leader))
}

/// Proclaim: sets the leader's value, if `leader` still leads (its key has the same create
/// revision); [`EtcdError::ElectionNotLeader`] otherwise.
pub async fn proclaim(
    server: &EtcdServer,
    who: &Caller,
    leader: &LeaderKey,
    value: Vec<u8>,
) -> Result<ResponseHeader> {
    let resp = server
        .txn(
            TxnRequest {
                compare: vec![create_revision_is(&leader.key, leader.rev)],
                success: vec![op(request_op::Request::RequestPut(PutRequest {
                    key: leader.key.clone(),
                    value,
                    lease: leader.lease,
                    ..Default::default()
                }))],
                failure: vec![],
            },
            who,
        )
        .await?;
    if !resp.succeeded {
        return Err(EtcdError::ElectionNotLeader);
    }
    Ok(resp.header.unwrap_or_default())
}

/// Resign: deletes the leader key if it still leads (nothing otherwise, as etcd).
pub async fn resign(
    server: &EtcdServer,
    who: &Caller,
    leader: &LeaderKey,
) -> Result<ResponseHeader> {
    delete_if_created_at(server, who, &leader.key, leader.rev).await
}

/// Leader: the key-value of election `name`'s leader; [`EtcdError::ElectionNoLeader`] when
/// nobody campaigns.
pub async fn leader(server: &EtcdServer, who: &Caller, name: &[u8]) -> Result<LeaderResponse> {
    let prefix = prefix_of(name);
    let req = RangeRequest {
        serializable: false,
        ..by_create(&prefix, true, 0)
    };
    let resp = server.range(&req, who).await?;
    let kv = resp
        .kvs
        .into_iter()
        .next()
        .ok_or(EtcdError::ElectionNoLeader)?;
    Ok(LeaderResponse {
        header: resp.header,
        kv: Some(kv),
    })
}

/// Observe: streams election `name`'s leader, first as it is (or as the first candidate
/// appears), then each new value it proclaims, then its successor once it is gone. Ends when
/// the receiver is dropped, or with etcd's permission error once the caller may no longer read
/// the election's keys.
pub fn observe(
    server: Arc<EtcdServer>,
    who: Caller,
    name: Vec<u8>,
) -> Result<mpsc::Receiver<Result<LeaderResponse>>> {
    let prefix = prefix_of(&name);
    let end = prefix_end(&prefix);
    server.may(&who, &prefix, &end, Access::Read)?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        if let Err(e) = follow(&server, &who, &prefix, &end, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    Ok(rx)
}

/// What a follower of the store's revisions gets next.
enum Next {
    Revision(Arc<crate::applier::RevEvents>),
    /// It fell behind: some revisions were not seen.
    Behind,
    /// The observer went away.
    Gone,
}

async fn next_revision(
    events: &mut broadcast::Receiver<Arc<crate::applier::RevEvents>>,
    tx: &mpsc::Sender<Result<LeaderResponse>>,
) -> Result<Next> {
    tokio::select! {
        got = events.recv() => match got {
            Ok(rev) => Ok(Next::Revision(rev)),
            Err(broadcast::error::RecvError::Lagged(_)) => Ok(Next::Behind),
            Err(broadcast::error::RecvError::Closed) => Err(EtcdError::Stopped),
        },
        () = tx.closed() => Ok(Next::Gone),
    }
}

/// What [`observe`] runs until the receiver goes.
async fn follow(
    server: &EtcdServer,
    who: &Caller,
    prefix: &[u8],
    end: &[u8],
    tx: &mpsc::Sender<Result<LeaderResponse>>,
) -> Result<()> {
    let in_prefix = |k: &[u8]| k >= prefix && k < end;
    'term: loop {
        let mut events = server.events.subscribe();
        // The leader as the store has it now, or else the first candidate's put.
        let (mut seen, current) = {
            let view = server.store.read();
            let first = crate::mvcc::txn::range(&view, &by_create(prefix, true, 0))?;
            (view.rev, first.kvs.into_iter().next())
        };
        let mut leader = match current {
            Some(kv) => kv,
            None => loop {
                let got = match next_revision(&mut events, tx).await? {
                    Next::Revision(got) => got,
                    Next::Behind => continue 'term,
                    Next::Gone => return Ok(()),
                };
                if got.rev <= seen {
                    continue;
                }
                seen = got.rev;
                let put = got.events.iter().find_map(|e| {
                    let kv = e.kv.as_ref()?;
                    (e.r#type == EventType::Put as i32 && in_prefix(&kv.key)).then(|| kv.clone())
                });
                if let Some(kv) = put {
                    break kv;
                }
            },
        };
        loop {
            // Like a watch, an observer whose user lost the permission gets nothing more.
            server.may(who, prefix, end, Access::Read)?;
            let header = server.header(seen.max(leader.mod_revision));
            let resp = LeaderResponse {
                header,
                kv: Some(leader.clone()),
            };
            if tx.send(Ok(resp)).await.is_err() {
                return Ok(());
            }
            // Follow the leader's key: each new value is sent; its deletion ends the term.
            leader = loop {
                let got = match next_revision(&mut events, tx).await? {
                    Next::Revision(got) => got,
                    Next::Behind => {
                        // Take the key as the store has it now.
                        let view = server.store.read();
                        seen = view.rev;
                        match view.get(&leader.key)? {
                            Some(now) if now.create_revision == leader.create_revision => {
                                if now.mod_revision != leader.mod_revision {
                                    break now;
                                }
                                continue;
                            }
                            _ => continue 'term,
                        }
                    }
                    Next::Gone => return Ok(()),
                };
                if got.rev <= seen {
                    continue;
                }
                seen = got.rev;
                let mine = got
                    .events
                    .iter()
                    .rfind(|e| e.kv.as_ref().is_some_and(|k| k.key == leader.key));
                match mine {
                    Some(e) if e.r#type == EventType::Delete as i32 => continue 'term,
                    Some(e) => break e.kv.clone().unwrap_or_default(),
                    None => {}
                }
            };
            seen = leader.mod_revision;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_keys_are_etcds() {
        let p = prefix_of(b"my-lock");
        assert_eq!(p, b"my-lock/");
        assert_eq!(candidate_key(&p, 0x694d_7a1b_2c3d), b"my-lock/694d7a1b2c3d");
        let r = by_create(&p, false, 41);
        assert_eq!(r.range_end, b"my-lock0");
        assert_eq!((r.limit, r.max_create_revision), (1, 41));
    }
}
