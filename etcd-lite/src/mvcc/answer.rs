//! Range answers encoded straight from the stored records. A record is an encoded
//! `mvccpb.KeyValue`, which is exactly what a `RangeResponse` carries for each key, so the answer
//! is one buffer of the exact size, filled by copying records: nothing is decoded and nothing is
//! held twice. A read of everything then needs its answer's size in memory and no more.

use etcd_api::etcdserverpb::ResponseHeader;
use etcd_api::mvccpb::KeyValue;
use prost::bytes::BufMut;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message;

use super::store::ReadView;
use super::txn::RangePlan;
use crate::error::Result;

/// `RangeResponse` field numbers.
const HEADER: u32 = 1;
const KVS: u32 = 2;
const MORE: u32 = 3;
const COUNT: u32 = 4;

/// The encoded `RangeResponse` of `plan`, read from `view`, after `prefix` zero bytes (room for
/// a gRPC frame header, so the answer is never copied to add one). `admit` is told the size
/// before anything is allocated and may refuse it. Returns the buffer, whose capacity is its
/// length.
pub fn encode_range(
    view: &ReadView<'_>,
    plan: &RangePlan,
    header: Option<&ResponseHeader>,
    prefix: usize,
    admit: impl FnOnce(usize) -> Result<()>,
) -> Result<Vec<u8>> {
    // Pass one: sizes. Records are only looked at, not kept.
    let mut len = prefix;
    if let Some(h) = header {
        len += field_len(HEADER, h.encoded_len());
    }
    for rev in &plan.revs {
        let kv_len = if plan.keys_only {
            view.with_record(*rev, |rec| without_value(rec).map(|kv| kv.encoded_len()))??
        } else {
            view.with_record(*rev, <[u8]>::len)?
        };
        len += field_len(KVS, kv_len);
    }
    if plan.more {
        len += key_len(MORE) + 1;
    }
    if plan.count != 0 {
        len += key_len(COUNT) + encoded_len_varint(plan.count as u64);
    }

    admit(len)?;
    // Pass two: the bytes, into a buffer that never grows.
    let mut buf = Vec::with_capacity(len);
    buf.resize(prefix, 0);
    if let Some(h) = header {
        encode_key(HEADER, WireType::LengthDelimited, &mut buf);
        encode_varint(h.encoded_len() as u64, &mut buf);
        h.encode_raw(&mut buf);
    }
    for rev in &plan.revs {
        encode_key(KVS, WireType::LengthDelimited, &mut buf);
        if plan.keys_only {
            let kv = view.with_record(*rev, without_value)??;
            encode_varint(kv.encoded_len() as u64, &mut buf);
            kv.encode_raw(&mut buf);
        } else {
            view.with_record(*rev, |rec| {
                encode_varint(rec.len() as u64, &mut buf);
                buf.put_slice(rec);
            })?;
        }
    }
    if plan.more {
        encode_key(MORE, WireType::Varint, &mut buf);
        encode_varint(1, &mut buf);
    }
    if plan.count != 0 {
        encode_key(COUNT, WireType::Varint, &mut buf);
        encode_varint(plan.count as u64, &mut buf);
    }
    debug_assert_eq!(
        buf.len(),
        len,
        "a range answer's size changed between passes"
    );
    Ok(buf)
}

fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn without_value(rec: &[u8]) -> Result<KeyValue> {
    let mut kv = KeyValue::decode(rec)?;
    kv.value = Vec::new();
    Ok(kv)
}

#[cfg(test)]
mod tests {
    use etcd_api::etcdserverpb::{
        range_request::{SortOrder, SortTarget},
        RangeRequest, RangeResponse,
    };

    use super::*;
    use crate::mvcc::txn::{plan_range, range};
    use crate::mvcc::MvccStore;

    /// Three rounds of puts with values of many sizes, then a deletion; the first rounds reach
    /// sled, the last ones stay in the overlay, so both places are read.
    fn store() -> MvccStore {
        let store = MvccStore::temporary().unwrap();
        for round in 0..4u32 {
            let mut w = store.write();
            if round < 3 {
                for i in 0..40u32 {
                    if (i + round) % 7 == 0 {
                        continue;
                    }
                    let key = format!("k{i:03}");
                    let value = vec![b'a' + (i % 26) as u8; (i * 37 % 300) as usize];
                    w.put(key.as_bytes(), value, 0, false).unwrap();
                }
            } else {
                w.delete_range(&crate::mvcc::KeyRange::new(b"k010", b"k015"))
                    .unwrap();
            }
            w.commit().unwrap();
            store.log_staged().unwrap();
            store.publish(i64::from(round) + 2);
            if round == 1 {
                store.apply_overlay().unwrap();
            }
        }
        store
    }

    #[test]
    fn encoded_answers_are_the_bytes_prost_would_send() {
        let store = store();
        let header = ResponseHeader {
            cluster_id: 7,
            member_id: 9,
            revision: 4,
            raft_term: 2,
        };
        let all = RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            ..Default::default()
        };
        let requests = [
            all.clone(),
            RangeRequest {
                limit: 5,
                ..all.clone()
            },
            RangeRequest {
                keys_only: true,
                ..all.clone()
            },
            RangeRequest {
                count_only: true,
                ..all.clone()
            },
            RangeRequest {
                sort_target: SortTarget::Value as i32,
                sort_order: SortOrder::Descend as i32,
                limit: 9,
                ..all.clone()
            },
            RangeRequest {
                min_mod_revision: 3,
                revision: 3,
                ..all.clone()
            },
            RangeRequest {
                key: b"k020".to_vec(),
                range_end: vec![],
                ..Default::default()
            },
            RangeRequest {
                key: b"absent".to_vec(),
                range_end: vec![],
                ..Default::default()
            },
        ];
        let view = store.read();
        for req in requests {
            let want = RangeResponse {
                header: Some(header),
                ..range(&view, &req).unwrap()
            };
            let plan = plan_range(&view, &req).unwrap();
            let got = encode_range(&view, &plan, Some(&header), 5, |_| Ok(())).unwrap();
            assert_eq!(&got[..5], &[0; 5]);
            assert_eq!(got[5..], want.encode_to_vec()[..], "{req:?}");
            assert_eq!(got.capacity(), got.len());
            assert_eq!(RangeResponse::decode(&got[5..]).unwrap(), want);
        }
    }
}
