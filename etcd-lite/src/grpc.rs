//! The etcd v3 gRPC services (KV, Watch, Lease, Cluster, Maintenance, Auth, and the Lock and
//! Election services of [`crate::concurrency`]) over [`EtcdServer`].

// tonic::Status is large by design and is what every handler returns.
#![allow(clippy::result_large_err)]

use std::pin::Pin;
use std::sync::Arc;

use etcd_api::etcdserverpb::{
    auth_server::{Auth, AuthServer},
    cluster_server::{Cluster, ClusterServer},
    kv_server::{Kv, KvServer},
    lease_server::{Lease, LeaseServer},
    maintenance_server::{Maintenance, MaintenanceServer},
    watch_server::{Watch, WatchServer},
    *,
};
use etcd_api::v3electionpb::{
    election_server::{Election, ElectionServer},
    CampaignRequest, CampaignResponse, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use etcd_api::v3lockpb::{
    lock_server::{Lock, LockServer},
    LockRequest, LockResponse, UnlockRequest, UnlockResponse,
};
use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::EtcdError;
use crate::server::{Caller, EtcdServer, API_VERSION, GRPC_OVERHEAD_BYTES};

/// Bytes of snapshot per streamed message (etcd sends 32 KiB chunks).
const SNAPSHOT_CHUNK: usize = 32 * 1024;

/// Handle implementing every service.
#[derive(Clone)]
pub struct Services(pub Arc<EtcdServer>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl Services {
    /// Who makes request `r`: its `token` metadata (what etcdctl and clientv3 send after
    /// Authenticate), else its client certificate's CN.
    fn who<T>(&self, r: &Request<T>) -> Result<Caller, Status> {
        let token = r.metadata().get("token").and_then(|v| v.to_str().ok());
        Ok(caller_of(&self.0, token, r.extensions())?)
    }

    /// [`Self::who`], and it must be allowed to administer the cluster.
    fn admin<T>(&self, r: &Request<T>) -> Result<(), Status> {
        let who = self.who(r)?;
        Ok(self.0.may_admin(&who)?)
    }

    /// The tonic router with every service (etcd's six, Lock and Election), limits applied.
    pub fn routes(server: Arc<EtcdServer>) -> tonic::service::Routes {
        let max = server.limits.max_request_bytes + GRPC_OVERHEAD_BYTES;
        let s = Services(server);
        tonic::service::Routes::new(KvServer::new(s.clone()).max_decoding_message_size(max))
            .add_service(WatchServer::new(s.clone()).max_decoding_message_size(max))
            .add_service(LeaseServer::new(s.clone()).max_decoding_message_size(max))
            .add_service(ClusterServer::new(s.clone()).max_decoding_message_size(max))
            .add_service(AuthServer::new(s.clone()).max_decoding_message_size(max))
            .add_service(LockServer::new(s.clone()).max_decoding_message_size(max))
            .add_service(ElectionServer::new(s.clone()).max_decoding_message_size(max))
            .add_service(
                MaintenanceServer::new(s)
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(usize::MAX),
            )
    }
}

#[tonic::async_trait]
impl Kv for Services {
    async fn range(&self, r: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        self.0.admit(r.get_ref())?;
        let who = self.who(&r)?;
        Ok(Response::new(self.0.range(r.get_ref(), &who).await?))
    }
    async fn put(&self, r: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        Ok(Response::new(self.0.put(r.into_inner(), &who).await?))
    }
    async fn delete_range(
        &self,
        r: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        Ok(Response::new(
            self.0.delete_range(r.into_inner(), &who).await?,
        ))
    }
    async fn txn(&self, r: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        Ok(Response::new(self.0.txn(r.into_inner(), &who).await?))
    }
    async fn compact(
        &self,
        r: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        self.0.refuse_on_learner()?;
        self.admin(&r)?;
        let rev = self.0.compact(r.get_ref().revision).await?;
        Ok(Response::new(CompactionResponse {
            header: self.0.header(rev),
        }))
    }
}

#[tonic::async_trait]
impl Watch for Services {
    type WatchStream = BoxStream<WatchResponse>;
    async fn watch(
        &self,
        r: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(crate::watch::serve(self.0.clone(), r.into_inner(), tx, who));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl Lock for Services {
    async fn lock(&self, r: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        let LockRequest { name, lease } = r.into_inner();
        let (header, key) = crate::concurrency::lock(&self.0, &who, &name, lease).await?;
        Ok(Response::new(LockResponse {
            header: Some(header),
            key,
        }))
    }
    async fn unlock(&self, r: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        let header = crate::concurrency::unlock(&self.0, &who, r.into_inner().key).await?;
        Ok(Response::new(UnlockResponse {
            header: Some(header),
        }))
    }
}

#[tonic::async_trait]
impl Election for Services {
    async fn campaign(
        &self,
        r: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        let CampaignRequest { name, lease, value } = r.into_inner();
        let (header, leader) =
            crate::concurrency::campaign(&self.0, &who, &name, lease, value).await?;
        Ok(Response::new(CampaignResponse {
            header: Some(header),
            leader: Some(leader),
        }))
    }
    async fn proclaim(
        &self,
        r: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        let ProclaimRequest { leader, value } = r.into_inner();
        let leader = leader.ok_or(EtcdError::MissingLeaderKey)?;
        let header = crate::concurrency::proclaim(&self.0, &who, &leader, value).await?;
        Ok(Response::new(ProclaimResponse {
            header: Some(header),
        }))
    }
    async fn leader(&self, r: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        let name = r.into_inner().name;
        Ok(Response::new(
            crate::concurrency::leader(&self.0, &who, &name).await?,
        ))
    }
    type ObserveStream = BoxStream<LeaderResponse>;
    async fn observe(
        &self,
        r: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        let rx = crate::concurrency::observe(self.0.clone(), who, r.into_inner().name)?;
        let stream = ReceiverStream::new(rx).map(|r| r.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }
    async fn resign(&self, r: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        let leader = r.into_inner().leader.ok_or(EtcdError::MissingLeaderKey)?;
        let header = crate::concurrency::resign(&self.0, &who, &leader).await?;
        Ok(Response::new(ResignResponse {
            header: Some(header),
        }))
    }
}

#[tonic::async_trait]
impl Lease for Services {
    async fn lease_grant(
        &self,
        r: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        self.0.refuse_on_learner()?;
        self.who(&r)?;
        let (id, ttl, rev) = self.0.lease_grant(r.get_ref().ttl, r.get_ref().id).await?;
        Ok(Response::new(LeaseGrantResponse {
            header: self.0.header(rev),
            id,
            ttl,
            error: String::new(),
        }))
    }
    async fn lease_revoke(
        &self,
        r: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        let rev = self.0.lease_revoke(r.get_ref().id, &who).await?;
        Ok(Response::new(LeaseRevokeResponse {
            header: self.0.header(rev),
        }))
    }
    type LeaseKeepAliveStream = BoxStream<LeaseKeepAliveResponse>;
    async fn lease_keep_alive(
        &self,
        r: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.0.refuse_on_learner()?;
        self.who(&r)?;
        let server = self.0.clone();
        let out = r.into_inner().then(move |req| {
            let server = server.clone();
            async move {
                let req = req?;
                let ttl = server.lease_keepalive(req.id).await?;
                Ok(LeaseKeepAliveResponse {
                    header: server.header(server.store.published()),
                    id: req.id,
                    ttl,
                })
            }
        });
        Ok(Response::new(Box::pin(out)))
    }
    async fn lease_time_to_live(
        &self,
        r: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        let (ttl, granted, keys) = self.0.lease_ttl(r.get_ref().id, r.get_ref().keys, &who)?;
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: self.0.header(self.0.store.published()),
            id: r.get_ref().id,
            ttl,
            granted_ttl: granted,
            keys,
        }))
    }
    async fn lease_leases(
        &self,
        r: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.0.refuse_on_learner()?;
        self.who(&r)?;
        Ok(Response::new(LeaseLeasesResponse {
            header: self.0.header(self.0.store.published()),
            leases: self
                .0
                .lease_ids()
                .into_iter()
                .map(|id| LeaseStatus { id })
                .collect(),
        }))
    }
}

#[tonic::async_trait]
impl Cluster for Services {
    async fn member_add(
        &self,
        r: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.0.refuse_on_learner()?;
        self.admin(&r)?;
        let req = r.into_inner();
        let id = self
            .0
            .member_add(req.peer_ur_ls.clone(), req.is_learner)
            .await?;
        let members = self.0.members().await?;
        let member = members.iter().find(|m| m.id == id).cloned();
        Ok(Response::new(MemberAddResponse {
            header: self.0.header(self.0.store.published()),
            member,
            members,
        }))
    }
    async fn member_remove(
        &self,
        r: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.0.refuse_on_learner()?;
        self.admin(&r)?;
        self.0.member_remove(r.get_ref().id).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.0.header(self.0.store.published()),
            members: self.0.members().await?,
        }))
    }
    async fn member_update(
        &self,
        r: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.0.refuse_on_learner()?;
        self.admin(&r)?;
        let req = r.into_inner();
        self.0.member_update(req.id, req.peer_ur_ls).await?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.0.header(self.0.store.published()),
            members: self.0.members().await?,
        }))
    }
    async fn member_list(
        &self,
        _r: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        self.0.refuse_on_learner()?;
        Ok(Response::new(MemberListResponse {
            header: self.0.header(self.0.store.published()),
            members: self.0.members().await?,
        }))
    }
    async fn member_promote(
        &self,
        r: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.0.refuse_on_learner()?;
        self.admin(&r)?;
        self.0.member_promote(r.get_ref().id).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.0.header(self.0.store.published()),
            members: self.0.members().await?,
        }))
    }
}

#[tonic::async_trait]
impl Auth for Services {
    async fn auth_enable(
        &self,
        _r: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        self.0.refuse_on_learner()?;
        Ok(Response::new(self.0.auth_enable().await?))
    }
    async fn auth_disable(
        &self,
        r: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        Ok(Response::new(self.0.auth_disable(&who).await?))
    }
    async fn auth_status(
        &self,
        _r: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        Ok(Response::new(self.0.auth_status()))
    }
    async fn authenticate(
        &self,
        r: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        self.0.refuse_on_learner()?;
        Ok(Response::new(self.0.authenticate(r.into_inner()).await?))
    }
    async fn user_add(
        &self,
        r: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        Ok(Response::new(self.0.user_add(&who, r.into_inner()).await?))
    }
    async fn user_get(
        &self,
        r: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        Ok(Response::new(self.0.user_get(&who, r.get_ref())?))
    }
    async fn user_list(
        &self,
        r: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        Ok(Response::new(self.0.user_list(&who)?))
    }
    async fn user_delete(
        &self,
        r: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        Ok(Response::new(
            self.0.user_delete(&who, r.into_inner()).await?,
        ))
    }
    async fn user_change_password(
        &self,
        r: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        Ok(Response::new(
            self.0.user_change_password(&who, r.into_inner()).await?,
        ))
    }
    async fn user_grant_role(
        &self,
        r: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        Ok(Response::new(
            self.0.user_grant_role(&who, r.into_inner()).await?,
        ))
    }
    async fn user_revoke_role(
        &self,
        r: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        Ok(Response::new(
            self.0.user_revoke_role(&who, r.into_inner()).await?,
        ))
    }
    async fn role_add(
        &self,
        r: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        Ok(Response::new(self.0.role_add(&who, r.into_inner()).await?))
    }
    async fn role_get(
        &self,
        r: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        Ok(Response::new(self.0.role_get(&who, r.get_ref())?))
    }
    async fn role_list(
        &self,
        r: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        Ok(Response::new(self.0.role_list(&who)?))
    }
    async fn role_delete(
        &self,
        r: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        Ok(Response::new(
            self.0.role_delete(&who, r.into_inner()).await?,
        ))
    }
    async fn role_grant_permission(
        &self,
        r: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        Ok(Response::new(
            self.0.role_grant_permission(&who, r.into_inner()).await?,
        ))
    }
    async fn role_revoke_permission(
        &self,
        r: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        self.0.refuse_on_learner()?;
        let who = self.who(&r)?;
        Ok(Response::new(
            self.0.role_revoke_permission(&who, r.into_inner()).await?,
        ))
    }
}

impl Services {
    /// Status of this member (shared with the JSON gateway).
    pub async fn status(&self) -> Result<StatusResponse, EtcdError> {
        let s = &self.0;
        let rev = s.store.published();
        let st = s.status().await?;
        let mut header = s.header(rev);
        if let Some(h) = header.as_mut() {
            h.raft_term = st.term;
        }
        Ok(StatusResponse {
            header,
            version: API_VERSION.into(),
            db_size: s.store.size_on_disk(),
            leader: st.leader,
            raft_index: st.commit,
            raft_term: st.term,
            raft_applied_index: st.applied,
            errors: s
                .alarms
                .read()
                .iter()
                .map(|(id, a)| {
                    let name = etcd_api::etcdserverpb::AlarmType::try_from(*a)
                        .map(|t| t.as_str_name())
                        .unwrap_or("UNKNOWN");
                    format!("memberID:{id} alarm:{name} ")
                })
                .collect(),
            db_size_in_use: s.store.size_on_disk(),
            is_learner: st.learners.contains(&s.member.id),
        })
    }
}

#[tonic::async_trait]
impl Maintenance for Services {
    async fn alarm(&self, r: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        self.0.refuse_on_learner()?;
        self.admin(&r)?;
        use etcd_api::etcdserverpb::{alarm_request::AlarmAction, AlarmMember};
        let r = r.into_inner();
        let member = |(id, alarm): (u64, i32)| AlarmMember {
            member_id: id,
            alarm,
        };
        let alarms: Vec<AlarmMember> = match AlarmAction::try_from(r.action) {
            Ok(AlarmAction::Get) => {
                let list: Vec<(u64, i32)> = self.0.alarms.read().iter().copied().collect();
                list.into_iter()
                    .filter(|(id, a)| {
                        (r.member_id == 0 || *id == r.member_id) && (r.alarm == 0 || *a == r.alarm)
                    })
                    .map(member)
                    .collect()
            }
            Ok(AlarmAction::Activate) => {
                if r.alarm == 0 {
                    return Err(EtcdError::InvalidArgument("no alarm given".into()).into());
                }
                self.0.alarm(true, r.member_id, r.alarm).await?;
                vec![member((r.member_id, r.alarm))]
            }
            Ok(AlarmAction::Deactivate) => {
                // Answers with the alarm it cleared, nothing when it was not raised (as etcd).
                let raised = self.0.alarms.read().contains(&(r.member_id, r.alarm));
                if raised {
                    self.0.alarm(false, r.member_id, r.alarm).await?;
                    vec![member((r.member_id, r.alarm))]
                } else {
                    vec![]
                }
            }
            Err(_) => return Err(EtcdError::InvalidArgument("unknown alarm action".into()).into()),
        };
        Ok(Response::new(AlarmResponse {
            header: self.0.header(self.0.store.published()),
            alarms,
        }))
    }
    async fn status(&self, _r: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(Services::status(self).await?))
    }
    async fn defragment(
        &self,
        r: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.0.refuse_on_learner()?;
        self.admin(&r)?;
        // The store's files are rewritten with what it holds now while reads and writes go on
        // (etcd stops the member instead); then the raft thread (the store's one writer)
        // makes everything durable and restarts the store's log. etcd leaves the header unset.
        let server = self.0.clone();
        let done = tokio::task::spawn_blocking(move || server.store.defragment())
            .await
            .map_err(|e| Status::internal(format!("defragment: {e}")))??;
        tracing::info!(
            before = done.before,
            after = done.after,
            took_ms = done.took.as_millis() as u64,
            "defragmented"
        );
        self.0.node.make_durable().await.map_err(EtcdError::from)?;
        Ok(Response::new(DefragmentResponse { header: None }))
    }
    async fn hash(&self, r: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.0.refuse_on_learner()?;
        self.admin(&r)?;
        let view = self.0.store.read();
        let hash = view.hash(view.rev)?;
        Ok(Response::new(HashResponse {
            header: self.0.header(view.rev),
            hash,
        }))
    }
    async fn hash_kv(&self, r: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        self.0.refuse_on_learner()?;
        self.admin(&r)?;
        let view = self.0.store.read();
        let at = if r.get_ref().revision <= 0 {
            view.rev
        } else {
            r.get_ref().revision
        };
        if at > view.rev {
            return Err(EtcdError::FutureRev.into());
        }
        if at < view.compacted() {
            return Err(EtcdError::Compacted.into());
        }
        let hash = view.hash(at)?;
        Ok(Response::new(HashKvResponse {
            header: self.0.header(view.rev),
            hash,
            compact_revision: view.compacted(),
            hash_revision: at,
        }))
    }
    type SnapshotStream = BoxStream<SnapshotResponse>;
    async fn snapshot(
        &self,
        r: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.0.refuse_on_learner()?;
        self.admin(&r)?;
        // etcd's backend format (a bbolt file and its SHA-256), built in a temporary file so
        // the answer streams from disk whatever the store's size.
        let server = self.0.clone();
        let (file, total, rev) = tokio::task::spawn_blocking(move || {
            let view = server.store.backup_view()?;
            let rev = view.rev();
            crate::backup::snapshot_file(&view, None).map(|(f, len)| (f, len, rev))
        })
        .await
        .map_err(|e| Status::internal(format!("snapshot: {e}")))?
        .map_err(|e| Status::internal(format!("snapshot: {e}")))?;
        let header = self.0.header(rev);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut file = std::io::BufReader::new(file);
            let mut sent = 0u64;
            while sent < total {
                let mut blob = vec![0u8; SNAPSHOT_CHUNK.min((total - sent) as usize)];
                if let Err(e) = file.read_exact(&mut blob) {
                    let _ = tx.blocking_send(Err(Status::internal(format!("snapshot: {e}"))));
                    return;
                }
                sent += blob.len() as u64;
                let msg = SnapshotResponse {
                    header,
                    remaining_bytes: total - sent,
                    blob,
                    version: API_VERSION.into(),
                };
                if tx.blocking_send(Ok(msg)).is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
    async fn move_leader(
        &self,
        r: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.0.refuse_on_learner()?;
        self.admin(&r)?;
        self.0.move_leader(r.get_ref().target_id).await?;
        // etcd leaves the header unset here (as for Defragment); clients check it.
        Ok(Response::new(MoveLeaderResponse { header: None }))
    }
}

/// Bytes of a Range answer handed to HTTP/2 at a time: the answer is sent in slices of its one
/// buffer, so the connection's flow control paces it and nothing is copied.
const ANSWER_SLICE: usize = 1 << 20;
/// A gRPC message's frame header: compression flag and big-endian length.
const FRAME_HEADER: usize = 5;

/// `/etcdserverpb.KV/Range`, served before tonic's codec sees it: the answer is encoded once,
/// at its exact size, straight from the stored records (see [`crate::mvcc::answer`]) and sent
/// from that buffer, which holds its share of the read budget until it is sent. The rules are
/// the other methods' (learners, deadlines, etcd's errors).
pub async fn range_route(
    axum::extract::State(s): axum::extract::State<Arc<EtcdServer>>,
    req: axum::extract::Request,
) -> axum::response::Response {
    match range_call(&s, req).await {
        Ok(resp) => resp,
        Err(status) => status.into_http().map(axum::body::Body::new),
    }
}

async fn range_call(
    s: &EtcdServer,
    req: axum::extract::Request,
) -> Result<axum::response::Response, Status> {
    if let Some(enc) = req.headers().get("grpc-encoding") {
        if enc.as_bytes() != b"identity" {
            return Err(Status::unimplemented(format!(
                "Content is compressed with `{}` which isn't supported",
                String::from_utf8_lossy(enc.as_bytes())
            )));
        }
    }
    let who = caller_of(s, token_of(req.headers()), req.extensions())?;
    let max = s.limits.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let body = axum::body::to_bytes(req.into_body(), max + FRAME_HEADER)
        .await
        .map_err(|e| Status::out_of_range(format!("reading the request: {e}")))?;
    let request = RangeRequest::decode(unary_message(&body)?)
        .map_err(|e| Status::internal(format!("failed to decode Protobuf message: {e}")))?;
    s.admit(&request)?;
    let answer = s.range_encoded(&request, FRAME_HEADER, &who).await?;
    let mut bytes = answer.bytes;
    let len = u32::try_from(bytes.len() - FRAME_HEADER).map_err(|_| {
        Status::resource_exhausted("etcdserver: range answer is larger than gRPC can send (4 GiB)")
    })?;
    bytes[1..FRAME_HEADER].copy_from_slice(&len.to_be_bytes());
    let mut trailers = axum::http::HeaderMap::new();
    trailers.insert("grpc-status", axum::http::HeaderValue::from_static("0"));
    let body = Answer {
        data: bytes.into(),
        sent: 0,
        trailers: Some(trailers),
        _permit: answer.permit,
    };
    axum::response::Response::builder()
        .header("content-type", "application/grpc")
        .body(axum::body::Body::new(body))
        .map_err(|e| Status::internal(e.to_string()))
}

/// The one message of a unary call's body.
fn unary_message(body: &[u8]) -> Result<&[u8], Status> {
    let Some((head, msg)) = body.split_first_chunk::<FRAME_HEADER>() else {
        return Err(Status::internal("Missing request message."));
    };
    match head[0] {
        0 => {}
        1 => {
            return Err(Status::internal(
                "protocol error: received a compressed message without grpc-encoding",
            ))
        }
        f => {
            return Err(Status::internal(format!(
                "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1)"
            )))
        }
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if msg.len() != len {
        return Err(Status::internal(format!(
            "protocol error: a unary request must be one message of {len} bytes, got {} bytes",
            msg.len()
        )));
    }
    Ok(msg)
}

/// A unary gRPC answer: the message in slices, then `grpc-status: 0`.
struct Answer {
    data: axum::body::Bytes,
    sent: usize,
    trailers: Option<axum::http::HeaderMap>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl hyper::body::Body for Answer {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if this.sent < this.data.len() {
            let end = (this.sent + ANSWER_SLICE).min(this.data.len());
            let slice = this.data.slice(this.sent..end);
            this.sent = end;
            if end == this.data.len() {
                // HTTP/2 holds the slices until they are written; let go of ours.
                this.data = axum::body::Bytes::new();
                this.sent = 0;
            }
            return std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(slice))));
        }
        std::task::Poll::Ready(
            this.trailers
                .take()
                .map(|t| Ok(hyper::body::Frame::trailers(t))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.data.len() && self.trailers.is_none()
    }
}

/// The token a request carries: gRPC metadata `token`, or the JSON gateway's `Authorization`
/// header.
pub fn token_of(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get("token")
        .or_else(|| headers.get(axum::http::header::AUTHORIZATION))
        .and_then(|v| v.to_str().ok())
}

/// Who sends a request with `token` over a connection whose client certificate may name a
/// user (see [`EtcdServer::caller`]).
pub fn caller_of(
    s: &EtcdServer,
    token: Option<&str>,
    extensions: &axum::http::Extensions,
) -> Result<Caller, EtcdError> {
    let cn = extensions
        .get::<crate::tls::ClientCn>()
        .map(|c| c.0.as_str());
    s.caller(token, cn)
}
