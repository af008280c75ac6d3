//! Users, roles and key permissions: etcd's Auth API.
//!
//! The auth state ([`AuthState`]: the enabled flag, users with their bcrypt hashes and roles,
//! roles with their permissions) changes only through the raft log ([`AuthCommand`], applied in
//! order by every member, so every member checks against the same state) and is kept in the
//! store's metadata, so it is in snapshots and survives restarts. Passwords are hashed before
//! proposing (bcrypt is slow on purpose and must not run on the raft thread), so applying a
//! command is a function of the command and the state.
//!
//! A simple token is chosen by the member that checked the password and registered on every
//! member through the log (etcd's simple tokens work the same way), so a client may use any
//! member. Tokens live in memory only: after a restart clients log in again (clientv3 and
//! etcdctl do so on `invalid auth token`).
//!
//! Permission checks follow etcd's: a request's key or range must be covered by the union of
//! the ranges its user's roles grant for the kind of access (read or write); the `root` role
//! may do anything, and administration (users, roles, compaction, membership, maintenance)
//! needs it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use etcd_api::authpb::{permission::Type as PermType, Permission};
use etcd_api::etcdserverpb::{request_op::Request, RequestOp, TxnRequest};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::error::{EtcdError, Result};

/// The role that may do anything.
pub const ROOT: &str = "root";

/// Everything auth keeps, replicated and persisted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    pub enabled: bool,
    /// Counts changes to the state (etcd's auth revision).
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The bcrypt hash of the password; none for a user that only a certificate logs in as.
    pub hash: Option<String>,
    pub roles: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Sorted by key, then range end; one grant per (key, range end).
    pub perms: Vec<Perm>,
}

/// A grant: read, write or both on one key (`range_end` empty), on `[key, range_end)`, or on
/// everything from `key` (`range_end` is `\0`).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Perm {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    /// etcd's numbers: 0 read, 1 write, 2 read and write.
    pub kind: i32,
}

impl Perm {
    pub fn from_proto(p: &Permission) -> Result<Self> {
        if PermType::try_from(p.perm_type).is_err() {
            return Err(EtcdError::InvalidArgument(format!(
                "unknown permission type {}",
                p.perm_type
            )));
        }
        if p.key.is_empty() {
            return Err(EtcdError::EmptyKey);
        }
        Ok(Perm {
            key: p.key.clone(),
            range_end: p.range_end.clone(),
            kind: p.perm_type,
        })
    }

    pub fn to_proto(&self) -> Permission {
        Permission {
            perm_type: self.kind,
            key: self.key.clone(),
            range_end: self.range_end.clone(),
        }
    }

    fn allows(&self, access: Access) -> bool {
        match access {
            Access::Read => self.kind != PermType::Write as i32,
            Access::Write => self.kind != PermType::Read as i32,
        }
    }
}

/// What a request does to a key or range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// A change to the auth state, as logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthCommand {
    Enable,
    Disable,
    UserAdd {
        name: String,
        hash: Option<String>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        hash: Option<String>,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        name: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        role: String,
    },
    RoleGrantPermission {
        name: String,
        perm: Perm,
    },
    RoleRevokePermission {
        role: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
    /// A login: `token` names `user` on every member until it expires.
    Token {
        user: String,
        token: String,
    },
}

impl AuthCommand {
    /// The command's name, for logs (never a password hash or token).
    pub fn name(&self) -> &'static str {
        match self {
            AuthCommand::Enable => "enable",
            AuthCommand::Disable => "disable",
            AuthCommand::UserAdd { .. } => "user add",
            AuthCommand::UserDelete { .. } => "user delete",
            AuthCommand::UserChangePassword { .. } => "user change password",
            AuthCommand::UserGrantRole { .. } => "user grant role",
            AuthCommand::UserRevokeRole { .. } => "user revoke role",
            AuthCommand::RoleAdd { .. } => "role add",
            AuthCommand::RoleDelete { .. } => "role delete",
            AuthCommand::RoleGrantPermission { .. } => "role grant permission",
            AuthCommand::RoleRevokePermission { .. } => "role revoke permission",
            AuthCommand::Token { .. } => "token",
        }
    }
}

impl AuthState {
    /// Applies `cmd` with etcd's rules; on error nothing changed.
    pub fn apply(&mut self, cmd: &AuthCommand) -> Result<()> {
        match cmd {
            AuthCommand::Enable => {
                if self.enabled {
                    return Ok(());
                }
                let root = self.users.get(ROOT).ok_or(EtcdError::RootUserNotExist)?;
                if !root.roles.contains(ROOT) {
                    return Err(EtcdError::RootRoleNotExist);
                }
                self.enabled = true;
            }
            AuthCommand::Disable => {
                if !self.enabled {
                    return Ok(());
                }
                self.enabled = false;
            }
            AuthCommand::UserAdd { name, hash } => {
                if name.is_empty() {
                    return Err(EtcdError::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(EtcdError::UserAlreadyExist);
                }
                self.users.insert(
                    name.clone(),
                    User {
                        hash: hash.clone(),
                        roles: BTreeSet::new(),
                    },
                );
            }
            AuthCommand::UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                self.users.remove(name).ok_or(EtcdError::UserNotFound)?;
            }
            AuthCommand::UserChangePassword { name, hash } => {
                self.users
                    .get_mut(name)
                    .ok_or(EtcdError::UserNotFound)?
                    .hash = hash.clone();
            }
            AuthCommand::UserGrantRole { user, role } => {
                if role != ROOT && !self.roles.contains_key(role) {
                    if !self.users.contains_key(user) {
                        return Err(EtcdError::UserNotFound);
                    }
                    return Err(EtcdError::RoleNotFound);
                }
                let u = self.users.get_mut(user).ok_or(EtcdError::UserNotFound)?;
                if !u.roles.insert(role.clone()) {
                    return Ok(());
                }
            }
            AuthCommand::UserRevokeRole { name, role } => {
                if self.enabled && name == ROOT && role == ROOT {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                let u = self.users.get_mut(name).ok_or(EtcdError::UserNotFound)?;
                if !u.roles.remove(role) {
                    return Err(EtcdError::RoleNotGranted);
                }
            }
            AuthCommand::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(EtcdError::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(EtcdError::RoleAlreadyExist);
                }
                self.roles.insert(name.clone(), Role::default());
            }
            AuthCommand::RoleDelete { role } => {
                if self.enabled && role == ROOT {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                self.roles.remove(role).ok_or(EtcdError::RoleNotFound)?;
                for u in self.users.values_mut() {
                    u.roles.remove(role);
                }
            }
            AuthCommand::RoleGrantPermission { name, perm } => {
                let r = self.roles.get_mut(name).ok_or(EtcdError::RoleNotFound)?;
                match r
                    .perms
                    .binary_search_by(|p| (&p.key, &p.range_end).cmp(&(&perm.key, &perm.range_end)))
                {
                    Ok(i) => r.perms[i].kind = perm.kind,
                    Err(i) => r.perms.insert(i, perm.clone()),
                }
            }
            AuthCommand::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let r = self.roles.get_mut(role).ok_or(EtcdError::RoleNotFound)?;
                let i = r
                    .perms
                    .iter()
                    .position(|p| &p.key == key && &p.range_end == range_end)
                    .ok_or(EtcdError::PermissionNotGranted)?;
                r.perms.remove(i);
            }
            AuthCommand::Token { .. } => return Ok(()),
        }
        self.revision += 1;
        Ok(())
    }

    /// Whether `user` has the root role.
    pub fn is_root(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.roles.contains(ROOT))
    }

    /// Whether `user` may `access` the key `key` (`end` empty) or the range `[key, end)` (`end`
    /// `\0`: every key from `key` on).
    pub fn permits(&self, user: &str, key: &[u8], end: &[u8], access: Access) -> bool {
        let Some(u) = self.users.get(user) else {
            return false;
        };
        if u.roles.contains(ROOT) {
            return true;
        }
        let want = Interval::of(key, end);
        let mut have: Vec<Interval> = u
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.perms.iter())
            .filter(|p| p.allows(access))
            .map(|p| Interval::of(&p.key, &p.range_end))
            .collect();
        have.sort_by(|a, b| a.start.cmp(&b.start));
        covers(&have, &want)
    }
}

/// `[start, end)`; `end` none means no end.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    /// etcd's key/range_end convention: empty end is the key alone, `\0` is everything from it.
    fn of(key: &[u8], end: &[u8]) -> Self {
        let end = match end {
            [] => {
                let mut e = key.to_vec();
                e.push(0);
                Some(e)
            }
            [0] => None,
            e => Some(e.to_vec()),
        };
        Interval {
            start: key.to_vec(),
            end,
        }
    }
}

/// Whether the union of `have` (sorted by start) covers `want`.
fn covers(have: &[Interval], want: &Interval) -> bool {
    if want.end.as_ref().is_some_and(|e| *e <= want.start) {
        // An empty range reads nothing; etcd still asks for the key itself.
        return covers(have, &Interval::of(&want.start, b""));
    }
    let mut reached = want.start.clone();
    for iv in have {
        if iv.start > reached {
            break;
        }
        match &iv.end {
            None => return true,
            Some(e) if *e > reached => reached = e.clone(),
            _ => {}
        }
        if want.end.as_ref().is_some_and(|w| reached >= *w) {
            return true;
        }
    }
    false
}

/// The keys and accesses a transaction needs, every branch and compare included.
pub fn txn_needs(req: &TxnRequest, out: &mut Vec<(Vec<u8>, Vec<u8>, Access)>) {
    for c in &req.compare {
        out.push((c.key.clone(), c.range_end.clone(), Access::Read));
    }
    for op in req.success.iter().chain(req.failure.iter()) {
        op_needs(op, out);
    }
}

fn op_needs(op: &RequestOp, out: &mut Vec<(Vec<u8>, Vec<u8>, Access)>) {
    match &op.request {
        Some(Request::RequestRange(r)) => {
            out.push((r.key.clone(), r.range_end.clone(), Access::Read))
        }
        Some(Request::RequestPut(p)) => {
            out.push((p.key.clone(), Vec::new(), Access::Write));
            if p.prev_kv {
                out.push((p.key.clone(), Vec::new(), Access::Read));
            }
        }
        Some(Request::RequestDeleteRange(d)) => {
            out.push((d.key.clone(), d.range_end.clone(), Access::Write));
            if d.prev_kv {
                out.push((d.key.clone(), d.range_end.clone(), Access::Read));
            }
        }
        Some(Request::RequestTxn(t)) => txn_needs(t, out),
        None => {}
    }
}

/// How tokens are made and checked (etcd's `--auth-token`).
#[derive(Clone, Default)]
pub enum TokenKind {
    /// Random tokens every member learns through the log.
    #[default]
    Simple,
    /// Signed JSON web tokens that any member with the public key verifies by itself.
    Jwt(std::sync::Arc<Jwt>),
}

impl std::fmt::Debug for TokenKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenKind::Simple => f.write_str("simple"),
            TokenKind::Jwt(j) => write!(f, "jwt({:?}, ttl {:?})", j.alg, j.ttl),
        }
    }
}

/// A JWT signer (with the private key) and verifier.
pub struct Jwt {
    alg: jsonwebtoken::Algorithm,
    sign: Option<jsonwebtoken::EncodingKey>,
    verify: jsonwebtoken::DecodingKey,
    ttl: Duration,
}

/// The claims of etcd's tokens.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// A Go duration as etcd's flags take it: `300s`, `5m`, `1h30m`, `500ms`.
fn go_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let d = match &rest[..unit] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => return None,
        };
        total += d;
        rest = &rest[unit..];
    }
    Some(total)
}

impl TokenKind {
    /// Parses etcd's `--auth-token` value: `simple`, or
    /// `jwt,pub-key=PATH[,priv-key=PATH],sign-method=RS256|RS384|RS512|PS256|PS384|PS512|ES256|ES384|EdDSA[,ttl=5m]`
    /// (keys in PEM; a member without the private key verifies tokens but cannot issue them).
    pub fn parse(spec: &str) -> std::result::Result<Self, String> {
        let mut parts = spec.split(',');
        match parts.next().map(str::trim) {
            Some("simple") if spec.trim() == "simple" => return Ok(TokenKind::Simple),
            Some("jwt") => {}
            _ => {
                return Err(format!(
                    "--auth-token {spec:?}: expected \"simple\" or \"jwt,pub-key=...,priv-key=...,sign-method=...\""
                ))
            }
        }
        let (mut public, mut private, mut method, mut ttl) =
            (None, None, None, Duration::from_secs(300));
        for p in parts {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| format!("--auth-token: {p:?} is not key=value"))?;
            match k.trim() {
                "pub-key" => public = Some(v.trim().to_string()),
                "priv-key" => private = Some(v.trim().to_string()),
                "sign-method" => method = Some(v.trim().to_string()),
                "ttl" => {
                    ttl = go_duration(v).filter(|d| !d.is_zero()).ok_or_else(|| {
                        format!("--auth-token: ttl {v:?} is not a duration like 5m")
                    })?
                }
                other => return Err(format!("--auth-token: unknown option {other:?}")),
            }
        }
        use jsonwebtoken::{Algorithm as A, DecodingKey, EncodingKey};
        let method = method.ok_or("--auth-token jwt needs sign-method=...")?;
        let alg: A = method
            .parse()
            .map_err(|_| format!("--auth-token: unknown sign-method {method:?}"))?;
        let read = |path: &str| {
            std::fs::read(path).map_err(|e| format!("--auth-token: reading {path}: {e}"))
        };
        let public = public.ok_or("--auth-token jwt needs pub-key=PATH")?;
        let bad = |what: &str, path: &str, e: jsonwebtoken::errors::Error| {
            format!("--auth-token: {path} is not a {what} key for {method}: {e}")
        };
        let pem = read(&public)?;
        let verify = match alg {
            A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 => {
                DecodingKey::from_rsa_pem(&pem)
            }
            A::ES256 | A::ES384 => DecodingKey::from_ec_pem(&pem),
            A::EdDSA => DecodingKey::from_ed_pem(&pem),
            _ => return Err(format!("--auth-token: sign-method {method} is not supported (RS*, PS*, ES256, ES384, EdDSA are)")),
        }
        .map_err(|e| bad("public", &public, e))?;
        let sign = match private {
            None => None,
            Some(path) => {
                let pem = read(&path)?;
                Some(
                    match alg {
                        A::ES256 | A::ES384 => EncodingKey::from_ec_pem(&pem),
                        A::EdDSA => EncodingKey::from_ed_pem(&pem),
                        _ => EncodingKey::from_rsa_pem(&pem),
                    }
                    .map_err(|e| bad("private", &path, e))?,
                )
            }
        };
        Ok(TokenKind::Jwt(std::sync::Arc::new(Jwt {
            alg,
            sign,
            verify,
            ttl,
        })))
    }
}

impl Jwt {
    fn issue(&self, user: &str, revision: u64) -> Result<String> {
        let key = self.sign.as_ref().ok_or_else(|| {
            EtcdError::InvalidArgument(
                "this member has no private key to sign tokens with (--auth-token priv-key=...)"
                    .into(),
            )
        })?;
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            + self.ttl;
        let claims = Claims {
            username: user.to_string(),
            revision,
            exp: exp.as_secs(),
        };
        jsonwebtoken::encode(&jsonwebtoken::Header::new(self.alg), &claims, key)
            .map_err(|e| EtcdError::Storage(format!("signing a token: {e}")))
    }

    fn user_of(&self, token: &str) -> Result<String> {
        let mut v = jsonwebtoken::Validation::new(self.alg);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp"]);
        match jsonwebtoken::decode::<Claims>(token, &self.verify, &v) {
            Ok(t) => Ok(t.claims.username),
            Err(e) => {
                tracing::debug!(error = %e, "a JWT did not check out");
                Err(EtcdError::InvalidAuthToken)
            }
        }
    }
}

/// The auth state of one member, and the tokens it knows.
pub struct AuthStore {
    state: RwLock<AuthState>,
    tokens: Mutex<HashMap<String, Token>>,
    /// Passwords bcrypt accepted (v2 Basic credentials come with every request): user ->
    /// (SHA-256 of the password, the hash it matched). A changed hash misses.
    verified: Mutex<HashMap<String, ([u8; 32], String)>>,
    ttl: Duration,
    /// bcrypt's cost for new hashes.
    pub bcrypt_cost: u32,
    kind: TokenKind,
}

struct Token {
    user: String,
    expires: Instant,
}

impl AuthStore {
    pub fn new(state: AuthState, ttl: Duration, bcrypt_cost: u32) -> Self {
        Self::with_tokens(state, ttl, bcrypt_cost, TokenKind::Simple)
    }

    /// [`AuthStore::new`] with the tokens `kind` says.
    pub fn with_tokens(state: AuthState, ttl: Duration, bcrypt_cost: u32, kind: TokenKind) -> Self {
        AuthStore {
            kind,
            state: RwLock::new(state),
            tokens: Mutex::default(),
            verified: Mutex::default(),
            ttl,
            bcrypt_cost,
        }
    }

    pub fn state(&self) -> parking_lot::RwLockReadGuard<'_, AuthState> {
        self.state.read()
    }

    pub fn enabled(&self) -> bool {
        self.state.read().enabled
    }

    /// Replaces the whole state (a restored snapshot).
    pub fn reset(&self, state: AuthState) {
        *self.state.write() = state;
        self.tokens.lock().clear();
    }

    /// Applies a logged command; returns the state to persist when it changed.
    pub fn apply(&self, cmd: &AuthCommand) -> Result<Option<AuthState>> {
        if let AuthCommand::Token { user, token } = cmd {
            let mut tokens = self.tokens.lock();
            let now = Instant::now();
            tokens.retain(|_, t| t.expires > now);
            tokens.insert(
                token.clone(),
                Token {
                    user: user.clone(),
                    expires: now + self.ttl,
                },
            );
            return Ok(None);
        }
        let mut state = self.state.write();
        state.apply(cmd)?;
        // A user deleted or with a new password logs in again; so does everyone once auth is
        // switched off and on.
        match cmd {
            AuthCommand::UserDelete { name } | AuthCommand::UserChangePassword { name, .. } => {
                self.tokens.lock().retain(|_, t| &t.user != name)
            }
            AuthCommand::Disable => self.tokens.lock().clear(),
            _ => {}
        }
        Ok(Some(state.clone()))
    }

    /// A signed token for `user`, when tokens are JWTs (simple tokens go through the log).
    pub fn issue_jwt(&self, user: &str) -> Option<Result<String>> {
        match &self.kind {
            TokenKind::Jwt(j) => Some(j.issue(user, self.state.read().revision)),
            TokenKind::Simple => None,
        }
    }

    /// The user a token names (and, for a simple token, its life extended, as etcd's are). A
    /// JWT names a user only while the user exists.
    pub fn user_of(&self, token: &str) -> Result<String> {
        if let TokenKind::Jwt(j) = &self.kind {
            let user = j.user_of(token)?;
            if !self.state.read().users.contains_key(&user) {
                return Err(EtcdError::InvalidAuthToken);
            }
            return Ok(user);
        }
        self.user_at(token, Instant::now())
    }

    fn user_at(&self, token: &str, now: Instant) -> Result<String> {
        let mut tokens = self.tokens.lock();
        match tokens.get_mut(token) {
            Some(t) if t.expires > now => {
                t.expires = now + self.ttl;
                Ok(t.user.clone())
            }
            Some(_) => {
                tokens.remove(token);
                Err(EtcdError::InvalidAuthToken)
            }
            None => Err(EtcdError::InvalidAuthToken),
        }
    }

    /// The bcrypt hash of the user's password, if the user exists and has one.
    pub fn hash_of(&self, user: &str) -> Option<String> {
        self.state.read().users.get(user)?.hash.clone()
    }

    /// Whether `password` is the user's: bcrypt (run it off the async threads), unless this
    /// password already matched the user's current hash.
    pub fn check_password(&self, user: &str, password: &str) -> bool {
        use sha2::Digest;
        let Some(hash) = self.hash_of(user) else {
            return false;
        };
        let digest: [u8; 32] = sha2::Sha256::digest(password.as_bytes()).into();
        if let Some((d, h)) = self.verified.lock().get(user) {
            if *d == digest && *h == hash {
                return true;
            }
        }
        let ok = bcrypt::verify(password, &hash).unwrap_or(false);
        if ok {
            let mut v = self.verified.lock();
            if v.len() > 10_000 {
                v.clear();
            }
            v.insert(user.to_string(), (digest, hash));
        }
        ok
    }
}

/// A new random token (etcd's simple tokens are 16 random letters and an index).
pub fn new_token() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..32)
        .map(|_| {
            let i = rng.gen_range(0..52u8);
            char::from(if i < 26 { b'a' + i } else { b'A' + i - 26 })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(key: &str, end: &str, kind: i32) -> Perm {
        Perm {
            key: key.as_bytes().to_vec(),
            range_end: end.as_bytes().to_vec(),
            kind,
        }
    }

    fn state() -> AuthState {
        let mut s = AuthState::default();
        for c in [
            AuthCommand::UserAdd {
                name: "root".into(),
                hash: Some("x".into()),
            },
            AuthCommand::RoleAdd {
                name: "root".into(),
            },
            AuthCommand::UserGrantRole {
                user: "root".into(),
                role: "root".into(),
            },
            AuthCommand::UserAdd {
                name: "alice".into(),
                hash: Some("y".into()),
            },
            AuthCommand::RoleAdd { name: "r".into() },
            AuthCommand::RoleGrantPermission {
                name: "r".into(),
                perm: perm("/a/", "/a0", 2),
            },
            AuthCommand::RoleGrantPermission {
                name: "r".into(),
                perm: perm("/b", "", 0),
            },
            AuthCommand::RoleGrantPermission {
                name: "r".into(),
                perm: perm("/w/", "/w0", 1),
            },
            AuthCommand::UserGrantRole {
                user: "alice".into(),
                role: "r".into(),
            },
        ] {
            s.apply(&c).expect("applies");
        }
        s
    }

    #[test]
    fn permissions_cover_keys_ranges_and_prefixes_by_kind() {
        let s = state();
        use Access::*;
        assert!(s.permits("alice", b"/a/x", b"", Read));
        assert!(s.permits("alice", b"/a/x", b"", Write));
        assert!(s.permits("alice", b"/a/", b"/a0", Read), "the whole prefix");
        assert!(
            s.permits("alice", b"/a/b", b"/a/c", Read),
            "a range inside it"
        );
        assert!(!s.permits("alice", b"/a/", b"/b", Read), "a range past it");
        assert!(!s.permits("alice", b"/a/", b"\0", Read), "from the key on");
        assert!(s.permits("alice", b"/b", b"", Read));
        assert!(!s.permits("alice", b"/b", b"", Write), "read only");
        assert!(
            !s.permits("alice", b"/bb", b"", Read),
            "a key, not a prefix"
        );
        assert!(s.permits("alice", b"/w/1", b"", Write));
        assert!(!s.permits("alice", b"/w/1", b"", Read), "write only");
        assert!(!s.permits("alice", b"/c", b"", Read));
        assert!(!s.permits("bob", b"/a/x", b"", Read), "no such user");
        assert!(
            s.permits("root", b"\0", b"\0", Write),
            "root may do anything"
        );
        // Two grants that meet cover the range across them.
        let mut s2 = s.clone();
        s2.apply(&AuthCommand::RoleGrantPermission {
            name: "r".into(),
            perm: perm("/a0", "/c", 0),
        })
        .expect("grant");
        assert!(s2.permits("alice", b"/a/", b"/c", Read));
        assert!(!s2.permits("alice", b"/a/", b"/c", Write));
        // From-key grants.
        s2.apply(&AuthCommand::RoleGrantPermission {
            name: "r".into(),
            perm: perm("/z", "\0", 0),
        })
        .expect("grant");
        assert!(s2.permits("alice", b"/z", b"\0", Read));
        assert!(s2.permits("alice", b"/zz", b"", Read));
        assert!(!s2.permits("alice", b"/y", b"\0", Read));
    }

    #[test]
    fn etcd_rules_for_root_users_and_roles() {
        let mut s = AuthState::default();
        assert_eq!(
            s.apply(&AuthCommand::Enable),
            Err(EtcdError::RootUserNotExist)
        );
        s.apply(&AuthCommand::UserAdd {
            name: "root".into(),
            hash: None,
        })
        .expect("add root");
        assert_eq!(
            s.apply(&AuthCommand::Enable),
            Err(EtcdError::RootRoleNotExist)
        );
        s = state();
        s.apply(&AuthCommand::Enable).expect("enable");
        let rev = s.revision;
        assert_eq!(
            s.apply(&AuthCommand::UserDelete {
                name: "root".into()
            }),
            Err(EtcdError::InvalidAuthMgmt)
        );
        assert_eq!(
            s.apply(&AuthCommand::RoleDelete {
                role: "root".into()
            }),
            Err(EtcdError::InvalidAuthMgmt)
        );
        assert_eq!(
            s.apply(&AuthCommand::UserRevokeRole {
                name: "root".into(),
                role: "root".into()
            }),
            Err(EtcdError::InvalidAuthMgmt)
        );
        assert_eq!(
            s.apply(&AuthCommand::UserAdd {
                name: String::new(),
                hash: None
            }),
            Err(EtcdError::UserEmpty)
        );
        assert_eq!(
            s.apply(&AuthCommand::UserAdd {
                name: "alice".into(),
                hash: None
            }),
            Err(EtcdError::UserAlreadyExist)
        );
        assert_eq!(
            s.apply(&AuthCommand::RoleAdd { name: "r".into() }),
            Err(EtcdError::RoleAlreadyExist)
        );
        assert_eq!(
            s.apply(&AuthCommand::RoleAdd {
                name: String::new()
            }),
            Err(EtcdError::RoleEmpty)
        );
        assert_eq!(
            s.apply(&AuthCommand::UserGrantRole {
                user: "alice".into(),
                role: "nope".into()
            }),
            Err(EtcdError::RoleNotFound)
        );
        assert_eq!(
            s.apply(&AuthCommand::UserGrantRole {
                user: "bob".into(),
                role: "r".into()
            }),
            Err(EtcdError::UserNotFound)
        );
        assert_eq!(
            s.apply(&AuthCommand::UserRevokeRole {
                name: "root".into(),
                role: "r".into()
            }),
            Err(EtcdError::RoleNotGranted)
        );
        assert_eq!(
            s.apply(&AuthCommand::RoleRevokePermission {
                role: "r".into(),
                key: b"/nope".to_vec(),
                range_end: vec![]
            }),
            Err(EtcdError::PermissionNotGranted)
        );
        assert_eq!(s.revision, rev, "failed commands change nothing");
        // Deleting a role takes it from its users.
        s.apply(&AuthCommand::RoleDelete { role: "r".into() })
            .expect("delete role");
        assert!(s.users["alice"].roles.is_empty());
        assert!(!s.permits("alice", b"/a/x", b"", Access::Read));
        s.apply(&AuthCommand::Disable).expect("disable");
        s.apply(&AuthCommand::UserDelete {
            name: "root".into(),
        })
        .expect("root may go once auth is off");
        assert_eq!(s.revision, rev + 3);
    }

    #[test]
    fn a_transaction_needs_every_compare_and_every_branch() {
        use etcd_api::etcdserverpb::{Compare, DeleteRangeRequest, PutRequest, RangeRequest};
        let req = TxnRequest {
            compare: vec![Compare {
                key: b"c".to_vec(),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: b"p".to_vec(),
                    prev_kv: true,
                    ..Default::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(Request::RequestTxn(TxnRequest {
                    success: vec![
                        RequestOp {
                            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                                key: b"d".to_vec(),
                                range_end: b"e".to_vec(),
                                ..Default::default()
                            })),
                        },
                        RequestOp {
                            request: Some(Request::RequestRange(RangeRequest {
                                key: b"r".to_vec(),
                                ..Default::default()
                            })),
                        },
                    ],
                    ..Default::default()
                })),
            }],
        };
        let mut needs = Vec::new();
        txn_needs(&req, &mut needs);
        use Access::*;
        assert_eq!(
            needs,
            vec![
                (b"c".to_vec(), vec![], Read),
                (b"p".to_vec(), vec![], Write),
                (b"p".to_vec(), vec![], Read),
                (b"d".to_vec(), b"e".to_vec(), Write),
                (b"r".to_vec(), vec![], Read),
            ]
        );
    }

    #[test]
    fn go_durations_and_token_flags_parse_like_etcds() {
        assert_eq!(go_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(go_duration("10"), None);
        assert_eq!(go_duration("5x"), None);
        assert!(matches!(TokenKind::parse("simple"), Ok(TokenKind::Simple)));
        for bad in [
            "simpler",
            "simple,ttl=5m",
            "jwt",
            "jwt,sign-method=RS256",
            "jwt,pub-key=/nonexistent,sign-method=RS256",
            "jwt,pub-key=x,sign-method=XY999",
            "jwt,pub-key=x,sign-method=HS256",
            "jwt,pub-key=x,sign-method=RS256,ttl=soon",
            "jwt,pub-key=x,sign-method=RS256,color=blue",
        ] {
            assert!(TokenKind::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_name_their_user_until_they_expire_or_the_user_changes() {
        let a = AuthStore::new(state(), Duration::from_millis(200), 4);
        a.apply(&AuthCommand::Token {
            user: "alice".into(),
            token: "t1".into(),
        })
        .expect("token");
        assert_eq!(a.user_of("t1"), Ok("alice".into()));
        assert_eq!(a.user_of("t2"), Err(EtcdError::InvalidAuthToken));
        a.apply(&AuthCommand::UserChangePassword {
            name: "alice".into(),
            hash: None,
        })
        .expect("change");
        assert_eq!(a.user_of("t1"), Err(EtcdError::InvalidAuthToken));
        a.apply(&AuthCommand::Token {
            user: "alice".into(),
            token: "t3".into(),
        })
        .expect("token");
        let later = Instant::now() + Duration::from_millis(150);
        assert_eq!(
            a.user_at("t3", later),
            Ok("alice".into()),
            "used: good for 200 ms more"
        );
        let idle = later + Duration::from_millis(250);
        assert_eq!(
            a.user_at("t3", idle),
            Err(EtcdError::InvalidAuthToken),
            "expired"
        );
        assert_eq!(
            a.user_of("t3"),
            Err(EtcdError::InvalidAuthToken),
            "and forgotten"
        );
    }
}
