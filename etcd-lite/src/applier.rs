//! Write commands: their encoding in the raft log, and how one is applied to the MVCC store
//! and the lease table. The consensus node ([`crate::consensus`]) decides the order; this
//! module only knows how to apply (see [`crate::machine`] for the state machine around it).
//!
//! A command's effect depends only on the store and the command, so every member applying the
//! same log reaches the same state (lease ids and TTLs are chosen before proposing).

use std::time::Instant;

use etcd_api::etcdserverpb::{TxnRequest, TxnResponse};
use etcd_api::mvccpb::Event;
use parking_lot::Mutex;
use prost::Message;

use crate::error::{EtcdError, Result};
use crate::lease::LeaseTable;
use crate::mvcc::{txn, KeyRange, LeaseMove, MvccStore, WriteTxn};
use crate::v2store;

/// A write request, as logged and replayed.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Txn(TxnRequest),
    Compact(i64),
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    LeaseRevoke {
        id: i64,
    },
    /// A keep-alive: every member restarts the lease's countdown.
    LeaseRenew {
        id: i64,
    },
    V2(v2store::V2Command),
    /// Raise (`activate`) or clear an alarm of a member (etcd's AlarmType numbers).
    Alarm {
        activate: bool,
        member: u64,
        alarm: i32,
    },
    /// A member's attributes, published by the member itself once it runs (as etcd's members
    /// publish theirs): its name and client URLs.
    Publish {
        member: u64,
        name: String,
        client_urls: Vec<String>,
    },
    /// A change to users, roles or the enabled flag, or a login's token.
    Auth(crate::auth::AuthCommand),
    /// A write made by an authenticated user: while auth is on, its permissions are checked
    /// again when it applies, against the auth state at that point of the log.
    AsUser {
        user: String,
        cmd: Box<Command>,
    },
}

impl Command {
    /// The log record: a tag byte, then the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Command::Txn(t) => {
                out.push(0);
                t.encode(&mut out).expect("a Vec grows as needed");
            }
            Command::Compact(rev) => {
                out.push(1);
                out.extend_from_slice(&rev.to_be_bytes());
            }
            Command::LeaseGrant { id, ttl } => {
                out.push(2);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&ttl.to_be_bytes());
            }
            Command::LeaseRevoke { id } => {
                out.push(3);
                out.extend_from_slice(&id.to_be_bytes());
            }
            Command::LeaseRenew { id } => {
                out.push(5);
                out.extend_from_slice(&id.to_be_bytes());
            }
            Command::Alarm {
                activate,
                member,
                alarm,
            } => {
                out.push(6);
                out.push(u8::from(*activate));
                out.extend_from_slice(&member.to_be_bytes());
                out.extend_from_slice(&alarm.to_be_bytes());
            }
            Command::Publish {
                member,
                name,
                client_urls,
            } => {
                out.push(7);
                let body = serde_json::to_vec(&(member, name, client_urls))
                    .expect("strings and numbers serialize");
                out.extend_from_slice(&body);
            }
            Command::V2(c) => {
                out.push(4);
                out.extend_from_slice(&serde_json::to_vec(c).expect("v2 commands serialize"));
            }
            Command::Auth(c) => {
                out.push(8);
                out.extend_from_slice(&serde_json::to_vec(c).expect("auth commands serialize"));
            }
            Command::AsUser { user, cmd } => {
                out.push(9);
                out.extend_from_slice(&(user.len() as u32).to_be_bytes());
                out.extend_from_slice(user.as_bytes());
                out.extend_from_slice(&cmd.encode());
            }
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self> {
        let bad = || EtcdError::Storage("malformed command in the raft log".into());
        let i64_at = |at: usize| -> Result<i64> {
            Ok(i64::from_be_bytes(
                b.get(at..at + 8)
                    .ok_or_else(bad)?
                    .try_into()
                    .map_err(|_| bad())?,
            ))
        };
        match b.first() {
            Some(0) => Ok(Command::Txn(
                TxnRequest::decode(&b[1..]).map_err(|_| bad())?,
            )),
            Some(1) => Ok(Command::Compact(i64_at(1)?)),
            Some(2) => Ok(Command::LeaseGrant {
                id: i64_at(1)?,
                ttl: i64_at(9)?,
            }),
            Some(3) => Ok(Command::LeaseRevoke { id: i64_at(1)? }),
            Some(5) => Ok(Command::LeaseRenew { id: i64_at(1)? }),
            Some(7) => {
                let (member, name, client_urls) =
                    serde_json::from_slice(&b[1..]).map_err(|_| bad())?;
                Ok(Command::Publish {
                    member,
                    name,
                    client_urls,
                })
            }
            Some(6) => Ok(Command::Alarm {
                activate: *b.get(1).ok_or_else(bad)? == 1,
                member: i64_at(2)? as u64,
                alarm: i32::from_be_bytes(
                    b.get(10..14)
                        .ok_or_else(bad)?
                        .try_into()
                        .map_err(|_| bad())?,
                ),
            }),
            Some(4) => Ok(Command::V2(
                serde_json::from_slice(&b[1..]).map_err(|_| bad())?,
            )),
            Some(8) => Ok(Command::Auth(
                serde_json::from_slice(&b[1..]).map_err(|_| bad())?,
            )),
            Some(9) => {
                let len =
                    u32::from_be_bytes(b.get(1..5).ok_or_else(bad)?.try_into().map_err(|_| bad())?)
                        as usize;
                let user = b.get(5..5 + len).ok_or_else(bad)?;
                let user = String::from_utf8(user.to_vec()).map_err(|_| bad())?;
                let inner = Command::decode(&b[5 + len..])?;
                if matches!(inner, Command::AsUser { .. }) {
                    return Err(bad());
                }
                Ok(Command::AsUser {
                    user,
                    cmd: Box::new(inner),
                })
            }
            _ => Err(bad()),
        }
    }
}

/// The result of one command.
#[derive(Debug)]
pub enum Outcome {
    Txn(Box<TxnResponse>),
    Compacted,
    LeaseGranted {
        id: i64,
        ttl: i64,
    },
    LeaseRevoked,
    LeaseRenewed {
        ttl: i64,
    },
    V2(Box<v2store::V2Outcome>),
    /// The alarms raised after an alarm command.
    Alarms(Vec<(u64, i32)>),
    /// A member's attributes were recorded.
    Published,
    /// An auth command applied.
    Auth,
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

/// Applies one command; storage failures are fatal, request errors are returned.
pub fn apply(
    store: &MvccStore,
    leases: &Mutex<LeaseTable>,
    cmd: Command,
    committed: &mut Vec<RevEvents>,
) -> Result<Applied> {
    if let Command::Alarm { .. }
    | Command::Publish { .. }
    | Command::Auth(_)
    | Command::AsUser { .. } = cmd
    {
        return Err(EtcdError::Storage(
            "alarms, member attributes and auth are applied by the state machine".into(),
        ));
    }
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
            track_leases(&mut leases.lock(), &done.lease_moves);
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

pub fn fatal(e: EtcdError) -> ! {
    tracing::error!(error = %e, "storage failure while applying; stopping to protect acknowledged data");
    std::process::exit(70);
}

/// Keeps each lease's key set in step with the key changes of a committed transaction.
fn track_leases(table: &mut LeaseTable, moves: &[LeaseMove]) {
    for m in moves {
        if m.from != 0 {
            table.detach(m.from, &m.key);
        }
        if m.to != 0 {
            table.attach(m.to, &m.key);
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
        Command::Compact(_)
        | Command::Alarm { .. }
        | Command::Publish { .. }
        | Command::Auth(_)
        | Command::AsUser { .. } => {
            unreachable!(
                "compaction, alarms, attributes and auth are handled before a write transaction opens"
            )
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
        Command::LeaseRenew { id } => {
            let ttl = leases.lock().renew(id, Instant::now())?;
            Ok(Outcome::LeaseRenewed { ttl })
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

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_api::etcdserverpb::{request_op::Request, PutRequest, RequestOp};

    #[test]
    fn commands_round_trip_through_their_encoding() {
        let put = TxnRequest {
            compare: vec![],
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })),
            }],
            failure: vec![],
        };
        for c in [
            Command::Txn(put),
            Command::Compact(42),
            Command::LeaseGrant { id: 7, ttl: 60 },
            Command::LeaseRevoke { id: 7 },
            Command::LeaseRenew { id: -3 },
            Command::Alarm {
                activate: true,
                member: u64::MAX - 1,
                alarm: 1,
            },
            Command::Publish {
                member: u64::MAX,
                name: "node1".into(),
                client_urls: vec!["http://10.0.0.1:2379".into()],
            },
            Command::V2(v2store::V2Command::CreateInOrder {
                dir: "/q".into(),
                value: "x".into(),
                ttl: Some(5),
            }),
            Command::Auth(crate::auth::AuthCommand::RoleGrantPermission {
                name: "r".into(),
                perm: crate::auth::Perm {
                    key: b"/a".to_vec(),
                    range_end: b"/b".to_vec(),
                    kind: 2,
                },
            }),
            Command::AsUser {
                user: "alice".into(),
                cmd: Box::new(Command::LeaseRevoke { id: 3 }),
            },
        ] {
            assert_eq!(Command::decode(&c.encode()).ok(), Some(c));
        }
        assert!(Command::decode(&[]).is_err());
        assert!(Command::decode(&[9, 1, 2]).is_err());
        assert!(Command::decode(&[2, 1, 2]).is_err(), "truncated");
        assert!(Command::decode(&[7, b'{']).is_err(), "malformed attributes");
        assert!(
            Command::decode(&[9, 0, 0, 0, 9, b'a']).is_err(),
            "truncated user"
        );
        let nested = Command::AsUser {
            user: "a".into(),
            cmd: Box::new(Command::AsUser {
                user: "b".into(),
                cmd: Box::new(Command::Compact(1)),
            }),
        };
        assert!(
            Command::decode(&nested.encode()).is_err(),
            "one user per write"
        );
    }
}
