//! Errors of the store and the server, with etcd's exact messages. The mapping to gRPC status
//! codes lives here and nowhere else.

/// Everything a client request can fail with. Messages are etcd's, so clients that match on them
/// (etcdctl, clientv3) behave as with etcd.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EtcdError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: {0}")]
    Unsupported(String),
    #[error("etcdserver: invalid argument: {0}")]
    InvalidArgument(String),
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: can only promote a learner member")]
    NotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: storage failure: {0}")]
    Storage(String),
    // The Lock and Election services' own errors (etcd's concurrency package; gRPC Unknown).
    #[error("election: no leader")]
    ElectionNoLeader,
    #[error("election: not leader")]
    ElectionNotLeader,
    #[error("mutex: session is expired")]
    SessionExpired,
    #[error("\"leader\" field must be provided")]
    MissingLeaderKey,
}

impl From<sled::Error> for EtcdError {
    fn from(e: sled::Error) -> Self {
        EtcdError::Storage(e.to_string())
    }
}

impl From<prost::DecodeError> for EtcdError {
    fn from(e: prost::DecodeError) -> Self {
        EtcdError::Storage(format!("corrupt record: {e}"))
    }
}

impl From<crate::consensus::node::ConsensusError> for EtcdError {
    fn from(e: crate::consensus::node::ConsensusError) -> Self {
        use crate::consensus::node::ConsensusError as C;
        match e {
            C::NoLeader => EtcdError::NoLeader,
            C::LeaderChanged => EtcdError::LeaderChanged,
            // A dropped proposal (leadership moving) is retried by clients like a timeout.
            C::Timeout | C::Dropped => EtcdError::Timeout,
            C::Stopped => EtcdError::Stopped,
            C::Raft(m) => EtcdError::Storage(format!("raft: {m}")),
        }
    }
}

impl EtcdError {
    /// The gRPC code etcd uses for this error.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            EtcdError::EmptyKey
            | EtcdError::KeyNotFound
            | EtcdError::ValueProvided
            | EtcdError::LeaseProvided
            | EtcdError::TooManyOps
            | EtcdError::DuplicateKey
            | EtcdError::RequestTooLarge
            | EtcdError::UserEmpty
            | EtcdError::RoleEmpty
            | EtcdError::AuthFailed
            | EtcdError::InvalidAuthMgmt
            | EtcdError::InvalidArgument(_) => Code::InvalidArgument,
            EtcdError::RootUserNotExist
            | EtcdError::RootRoleNotExist
            | EtcdError::UserAlreadyExist
            | EtcdError::UserNotFound
            | EtcdError::RoleAlreadyExist
            | EtcdError::RoleNotFound
            | EtcdError::RoleNotGranted
            | EtcdError::PermissionNotGranted
            | EtcdError::AuthNotEnabled => Code::FailedPrecondition,
            EtcdError::PermissionDenied => Code::PermissionDenied,
            EtcdError::InvalidAuthToken => Code::Unauthenticated,
            EtcdError::Compacted | EtcdError::FutureRev | EtcdError::LeaseTtlTooLarge => {
                Code::OutOfRange
            }
            EtcdError::LeaseNotFound | EtcdError::MemberNotFound => Code::NotFound,
            EtcdError::LeaseExist
            | EtcdError::NotLeader
            | EtcdError::BadLeaderTransferee
            | EtcdError::NotLearner
            | EtcdError::LearnerNotReady => Code::FailedPrecondition,
            EtcdError::LeaderTransferTimeout => Code::DeadlineExceeded,
            EtcdError::NoSpace | EtcdError::TooManyRequests => Code::ResourceExhausted,
            EtcdError::Unsupported(_) => Code::Unimplemented,
            EtcdError::Stopped
            | EtcdError::NoLeader
            | EtcdError::LeaderChanged
            | EtcdError::NotSupportedForLearner
            | EtcdError::Timeout => Code::Unavailable,
            EtcdError::Storage(_) => Code::Internal,
            EtcdError::ElectionNoLeader
            | EtcdError::ElectionNotLeader
            | EtcdError::SessionExpired
            | EtcdError::MissingLeaderKey => Code::Unknown,
        }
    }

    /// The HTTP status the JSON gateway answers with (grpc-gateway's mapping of the code).
    pub fn http_status(&self) -> u16 {
        grpc_code_to_http(self.code())
    }
}

/// grpc-gateway's mapping from gRPC codes to HTTP statuses.
pub fn grpc_code_to_http(code: tonic::Code) -> u16 {
    use tonic::Code;
    match code {
        Code::Ok => 200,
        Code::Cancelled => 408,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::Unauthenticated => 401,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        _ => 500,
    }
}

impl From<EtcdError> for tonic::Status {
    fn from(e: EtcdError) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}

pub type Result<T, E = EtcdError> = std::result::Result<T, E>;
