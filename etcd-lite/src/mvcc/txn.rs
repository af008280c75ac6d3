//! etcd's request semantics on top of the store: Range options, Txn compares and the execution
//! of Put/DeleteRange/Range/Txn operations. Validation happens before any change, so a request
//! that fails leaves the store untouched.

use std::cmp::Ordering;

use etcd_api::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response,
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseOp, TxnRequest, TxnResponse,
};
use etcd_api::mvccpb::KeyValue;

use super::index::KeyRange;
use super::revision::Revision;
use super::store::{KvRead, WriteTxn};
use crate::error::{EtcdError, Result};

/// Most operations one transaction may hold (etcd's `--max-txn-ops` default).
pub const MAX_TXN_OPS: usize = 128;

/// What a Range answers, chosen before any value is copied: the revisions of the keys it
/// returns, in answer order. [`range`] decodes them; [`super::answer`] copies their records
/// into an encoded answer.
#[derive(Debug, Default)]
pub struct RangePlan {
    pub revs: Vec<Revision>,
    pub count: i64,
    pub more: bool,
    /// Answer without values.
    pub keys_only: bool,
    /// Answer only `count` and `more`.
    pub count_only: bool,
}

/// Chooses the keys a Range request answers with, from any read access. `req.revision <= 0`
/// reads at `r.read_rev()`. Values are only read when the request sorts by them.
pub fn plan_range<R: KvRead + ?Sized>(r: &R, req: &RangeRequest) -> Result<RangePlan> {
    let st = r.state();
    let at = if req.revision <= 0 {
        r.read_rev()
    } else {
        req.revision
    };
    if at > r.read_rev() {
        return Err(EtcdError::FutureRev);
    }
    if at < st.compacted {
        return Err(EtcdError::Compacted);
    }
    let kr = KeyRange::new(&req.key, &req.range_end);
    let filtered = req.min_mod_revision > 0
        || req.max_mod_revision > 0
        || req.min_create_revision > 0
        || req.max_create_revision > 0;
    let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    if order == SortOrder::None && target != SortTarget::Key {
        order = SortOrder::Ascend;
    }
    let needs_sort = !(target == SortTarget::Key && order != SortOrder::Descend);
    let mut plan = RangePlan {
        count: st.index.count(&kr, at) as i64,
        keys_only: req.keys_only,
        count_only: req.count_only,
        ..Default::default()
    };
    if req.count_only && !filtered {
        return Ok(plan);
    }
    let limit = usize::try_from(req.limit.max(0)).unwrap_or(usize::MAX);
    let revs = st.index.range(&kr, at);
    let mut revs: Vec<Revision> = if !needs_sort && !filtered {
        // Index order is key order: one past the limit tells whether there is more.
        let take = if limit == 0 { usize::MAX } else { limit + 1 };
        revs.into_iter().take(take).map(|(_, rev)| rev).collect()
    } else {
        let by_value = target == SortTarget::Value;
        let mut metas = Vec::with_capacity(revs.len());
        for (_, rev) in revs {
            let mut kv = r.fetch(rev)?;
            let keep = (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision);
            if keep {
                if !by_value {
                    kv.value = Vec::new();
                }
                metas.push((rev, kv));
            }
        }
        if needs_sort {
            let key_of = |a: &KeyValue, b: &KeyValue| -> Ordering {
                match target {
                    SortTarget::Key => a.key.cmp(&b.key),
                    SortTarget::Version => a.version.cmp(&b.version),
                    SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                    SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                    SortTarget::Value => a.value.cmp(&b.value),
                }
            };
            // Stable, so equal targets stay in key order (then reversed, as etcd does).
            metas.sort_by(|a, b| key_of(&a.1, &b.1));
            if order == SortOrder::Descend {
                metas.reverse();
            }
        }
        if filtered {
            plan.count = metas.len() as i64;
        }
        metas.into_iter().map(|(rev, _)| rev).collect()
    };
    plan.more = limit > 0 && revs.len() > limit;
    if limit > 0 {
        revs.truncate(limit);
    }
    if filtered {
        plan.count = plan.count.min(revs.len() as i64);
    }
    if !req.count_only {
        plan.revs = revs;
    }
    Ok(plan)
}

/// Answers a Range request from any read access (see [`plan_range`]).
pub fn range<R: KvRead + ?Sized>(r: &R, req: &RangeRequest) -> Result<RangeResponse> {
    let plan = plan_range(r, req)?;
    let mut kvs = Vec::with_capacity(plan.revs.len());
    for rev in &plan.revs {
        let mut kv = r.fetch(*rev)?;
        if plan.keys_only {
            kv.value.clear();
        }
        kvs.push(kv);
    }
    Ok(RangeResponse {
        header: None,
        kvs,
        more: plan.more,
        count: plan.count,
    })
}

fn compare_one(c: &Compare, kv: &KeyValue) -> bool {
    let ord = match (CompareTarget::try_from(c.target), &c.target_union) {
        (Ok(CompareTarget::Value), Some(TargetUnion::Value(v))) => kv.value.as_slice().cmp(v),
        (Ok(CompareTarget::Value), None) => kv.value.as_slice().cmp(&[]),
        (Ok(CompareTarget::Version), u) => kv.version.cmp(&int_of(u)),
        (Ok(CompareTarget::Create), u) => kv.create_revision.cmp(&int_of(u)),
        (Ok(CompareTarget::Mod), u) => kv.mod_revision.cmp(&int_of(u)),
        (Ok(CompareTarget::Lease), u) => kv.lease.cmp(&int_of(u)),
        _ => return false,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        Err(_) => false,
    }
}

fn int_of(u: &Option<TargetUnion>) -> i64 {
    match u {
        Some(TargetUnion::Version(v))
        | Some(TargetUnion::CreateRevision(v))
        | Some(TargetUnion::ModRevision(v))
        | Some(TargetUnion::Lease(v)) => *v,
        _ => 0,
    }
}

/// Evaluates one compare as etcd does: every key in the range must match; a missing key compares
/// as a zero KeyValue, except that a value compare on a missing key always fails.
pub fn compare<R: KvRead + ?Sized>(r: &R, c: &Compare) -> Result<bool> {
    let kvs = r.values(&KeyRange::new(&c.key, &c.range_end), r.read_rev(), 0)?;
    if kvs.is_empty() {
        if c.target == CompareTarget::Value as i32 {
            return Ok(false);
        }
        return Ok(compare_one(c, &KeyValue::default()));
    }
    Ok(kvs.iter().all(|kv| compare_one(c, kv)))
}

/// Static checks of a Txn (no store access): non-empty keys, op count, no key written twice.
pub fn check_txn(req: &TxnRequest) -> Result<()> {
    if req.success.len() > MAX_TXN_OPS
        || req.failure.len() > MAX_TXN_OPS
        || req.compare.len() > MAX_TXN_OPS
    {
        return Err(EtcdError::TooManyOps);
    }
    for c in &req.compare {
        if c.key.is_empty() {
            return Err(EtcdError::EmptyKey);
        }
    }
    for branch in [&req.success, &req.failure] {
        let mut puts: Vec<&[u8]> = Vec::new();
        let mut dels: Vec<(&[u8], &[u8])> = Vec::new();
        for op in branch {
            match &op.request {
                Some(Request::RequestRange(r)) if r.key.is_empty() => {
                    return Err(EtcdError::EmptyKey)
                }
                Some(Request::RequestPut(p)) => {
                    if p.key.is_empty() {
                        return Err(EtcdError::EmptyKey);
                    }
                    if puts.contains(&p.key.as_slice()) {
                        return Err(EtcdError::DuplicateKey);
                    }
                    puts.push(&p.key);
                }
                Some(Request::RequestDeleteRange(d)) => {
                    if d.key.is_empty() {
                        return Err(EtcdError::EmptyKey);
                    }
                    dels.push((&d.key, &d.range_end));
                }
                Some(Request::RequestTxn(t)) => check_txn(t)?,
                _ => {}
            }
        }
        for (start, end) in &dels {
            let kr = KeyRange::new(start, end);
            if puts.iter().any(|k| kr.contains(k)) {
                return Err(EtcdError::DuplicateKey);
            }
        }
    }
    Ok(())
}

/// Which branch every (nested) transaction takes, decided before any change as etcd does.
fn decide<R: KvRead + ?Sized>(r: &R, req: &TxnRequest, path: &mut Vec<bool>) -> Result<()> {
    let mut ok = true;
    for c in &req.compare {
        if !compare(r, c)? {
            ok = false;
            break;
        }
    }
    path.push(ok);
    for op in if ok { &req.success } else { &req.failure } {
        if let Some(Request::RequestTxn(t)) = &op.request {
            decide(r, t, path)?;
        }
    }
    Ok(())
}

/// Checks the ops the decided path will run against the store and the lease table.
fn validate<R: KvRead + ?Sized>(
    r: &R,
    req: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
    lease_exists: &dyn Fn(i64) -> bool,
) -> Result<()> {
    let ok = path[*pos];
    *pos += 1;
    for op in if ok { &req.success } else { &req.failure } {
        match &op.request {
            Some(Request::RequestPut(p)) => validate_put(r, p, lease_exists)?,
            Some(Request::RequestTxn(t)) => validate(r, t, path, pos, lease_exists)?,
            _ => {}
        }
    }
    Ok(())
}

/// The checks etcd makes of a Put before applying it.
pub fn validate_put<R: KvRead + ?Sized>(
    r: &R,
    p: &PutRequest,
    lease_exists: &dyn Fn(i64) -> bool,
) -> Result<()> {
    if p.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    if (p.ignore_value || p.ignore_lease) && r.get(&p.key)?.is_none() {
        return Err(EtcdError::KeyNotFound);
    }
    if !p.ignore_lease && p.lease != 0 && !lease_exists(p.lease) {
        return Err(EtcdError::LeaseNotFound);
    }
    Ok(())
}

/// Runs a Txn inside a write transaction: decide, validate, then execute.
pub fn txn(
    w: &mut WriteTxn<'_>,
    req: &TxnRequest,
    lease_exists: &dyn Fn(i64) -> bool,
) -> Result<TxnResponse> {
    check_txn(req)?;
    let mut path = Vec::new();
    decide(w, req, &mut path)?;
    validate(w, req, &path, &mut 0, lease_exists)?;
    execute(w, req, &path, &mut 0)
}

fn execute(
    w: &mut WriteTxn<'_>,
    req: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
) -> Result<TxnResponse> {
    let ok = path[*pos];
    *pos += 1;
    let mut responses = Vec::new();
    for op in if ok { &req.success } else { &req.failure } {
        responses.push(ResponseOp {
            response: Some(execute_op(w, op, path, pos)?),
        });
    }
    Ok(TxnResponse {
        header: None,
        succeeded: ok,
        responses,
    })
}

fn execute_op(
    w: &mut WriteTxn<'_>,
    op: &RequestOp,
    path: &[bool],
    pos: &mut usize,
) -> Result<Response> {
    Ok(match &op.request {
        Some(Request::RequestRange(r)) => Response::ResponseRange(range(w, r)?),
        Some(Request::RequestPut(p)) => Response::ResponsePut(put(w, p)?),
        Some(Request::RequestDeleteRange(d)) => Response::ResponseDeleteRange(delete_range(w, d)?),
        Some(Request::RequestTxn(t)) => Response::ResponseTxn(execute(w, t, path, pos)?),
        None => Response::ResponseRange(RangeResponse::default()),
    })
}

/// Applies a validated Put.
pub fn put(w: &mut WriteTxn<'_>, p: &PutRequest) -> Result<PutResponse> {
    // The previous value is read only when the request needs it (as etcd, which otherwise
    // takes what it needs from its key index).
    let read = p.prev_kv || p.ignore_value;
    let lease = if p.ignore_lease {
        w.lease_of(&p.key)
    } else {
        p.lease
    };
    if !read {
        w.put(&p.key, p.value.clone(), lease, false)?;
        return Ok(PutResponse::default());
    }
    let prev = w.get(&p.key)?;
    let value = match (&prev, p.ignore_value) {
        (Some(prev), true) => prev.value.clone(),
        _ => p.value.clone(),
    };
    let prev = w.put(&p.key, value, lease, true)?;
    Ok(PutResponse {
        header: None,
        prev_kv: if p.prev_kv { prev } else { None },
    })
}

/// Applies a DeleteRange.
pub fn delete_range(w: &mut WriteTxn<'_>, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
    let prevs = w.delete_range(&KeyRange::new(&d.key, &d.range_end))?;
    Ok(DeleteRangeResponse {
        header: None,
        deleted: prevs.len() as i64,
        prev_kvs: if d.prev_kv { prevs } else { Vec::new() },
    })
}
