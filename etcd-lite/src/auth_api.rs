//! etcd's Auth API over [`EtcdServer`]: what the gRPC `Auth` service and the JSON gateway's
//! `/v3/auth/*` both answer. Changes go through the log ([`crate::auth::AuthCommand`]);
//! passwords are hashed (and checked) with bcrypt on the blocking pool, so a login never holds
//! up other requests.

use etcd_api::etcdserverpb::*;

use crate::applier::{Command, Outcome};
use crate::auth::{AuthCommand, Perm};
use crate::error::{EtcdError, Result};
use crate::server::{Caller, EtcdServer};

impl EtcdServer {
    async fn auth_change(&self, cmd: AuthCommand) -> Result<Option<ResponseHeader>> {
        let applied = self.submit(Command::Auth(cmd)).await?;
        match applied.outcome {
            Outcome::Auth => Ok(self.header(applied.rev)),
            _ => Err(EtcdError::Storage(
                "unexpected outcome of an auth change".into(),
            )),
        }
    }

    /// bcrypt of `password` at the configured cost, off the async threads.
    async fn hash(&self, password: String) -> Result<String> {
        let cost = self.auth.bcrypt_cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| EtcdError::Storage(format!("hashing a password: {e}")))?
            .map_err(|e| EtcdError::InvalidArgument(format!("hashing the password: {e}")))
    }

    /// The hash a request asks for: none for a user without password, the client's own
    /// bcrypt hash (etcd 3.5 clients may send one), else the password's.
    async fn hash_for(
        &self,
        password: String,
        hashed: String,
        no_password: bool,
    ) -> Result<Option<String>> {
        if no_password {
            return Ok(None);
        }
        if !hashed.is_empty() {
            if hashed.parse::<bcrypt::HashParts>().is_err() {
                return Err(EtcdError::InvalidArgument(
                    "hashedPassword is not a bcrypt hash".into(),
                ));
            }
            return Ok(Some(hashed));
        }
        Ok(Some(self.hash(password).await?))
    }

    /// Whether `password` is `user`'s (bcrypt on the blocking pool).
    pub async fn check_password(&self, user: &str, password: String) -> Result<bool> {
        let (auth, user) = (self.auth.clone(), user.to_string());
        tokio::task::spawn_blocking(move || auth.check_password(&user, &password))
            .await
            .map_err(|e| EtcdError::Storage(format!("checking a password: {e}")))
    }

    /// Who a v2 request comes from: HTTP Basic credentials of a v3 user, else the client
    /// certificate's CN; nobody in particular while auth is off. `Ok(None)` with auth on never
    /// happens: a request naming no user is refused.
    pub async fn v2_caller(
        &self,
        authorization: Option<&str>,
        cert_user: Option<&str>,
    ) -> Result<Caller> {
        if !self.auth.enabled() {
            return Ok(None);
        }
        if let Some(basic) = authorization.and_then(|a| a.strip_prefix("Basic ")) {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(basic.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or(EtcdError::AuthFailed)?;
            let (user, password) = decoded.split_once(':').ok_or(EtcdError::AuthFailed)?;
            if !self.check_password(user, password.to_string()).await? {
                self.metrics.auth_failures_total.inc();
                return Err(EtcdError::AuthFailed);
            }
            return Ok(Some(user.to_string()));
        }
        self.caller(None, cert_user)
    }

    /// Whether `who` may administer auth, or is the user `name` itself (its own details and
    /// password, as etcd 3.5 allows).
    fn may_admin_or_self(&self, who: &Caller, name: &str) -> Result<()> {
        match who {
            Some(u) if u == name => Ok(()),
            _ => self.may_admin(who),
        }
    }

    pub async fn auth_enable(&self) -> Result<AuthEnableResponse> {
        let header = self.auth_change(AuthCommand::Enable).await?;
        Ok(AuthEnableResponse { header })
    }

    pub async fn auth_disable(&self, who: &Caller) -> Result<AuthDisableResponse> {
        self.may_admin(who)?;
        let header = self.auth_change(AuthCommand::Disable).await?;
        Ok(AuthDisableResponse { header })
    }

    pub fn auth_status(&self) -> AuthStatusResponse {
        let st = self.auth.state();
        AuthStatusResponse {
            header: self.header(self.store.published()),
            enabled: st.enabled,
            auth_revision: st.revision,
        }
    }

    /// Checks a user's password and answers a new token, known to every member once this
    /// returns.
    pub async fn authenticate(&self, req: AuthenticateRequest) -> Result<AuthenticateResponse> {
        if !self.auth.enabled() {
            return Err(EtcdError::AuthNotEnabled);
        }
        let ok = self.check_password(&req.name, req.password).await?;
        if !ok {
            self.metrics.auth_failures_total.inc();
            tracing::info!(user = %req.name, "authentication failed");
            return Err(EtcdError::AuthFailed);
        }
        if let Some(jwt) = self.auth.issue_jwt(&req.name) {
            return Ok(AuthenticateResponse {
                header: self.header(self.store.published()),
                token: jwt?,
            });
        }
        let token = crate::auth::new_token();
        let header = self
            .auth_change(AuthCommand::Token {
                user: req.name,
                token: token.clone(),
            })
            .await?;
        Ok(AuthenticateResponse { header, token })
    }

    pub async fn user_add(
        &self,
        who: &Caller,
        req: AuthUserAddRequest,
    ) -> Result<AuthUserAddResponse> {
        self.may_admin(who)?;
        if req.name.is_empty() {
            return Err(EtcdError::UserEmpty);
        }
        let no_password = req.options.as_ref().is_some_and(|o| o.no_password);
        let hash = self
            .hash_for(req.password, req.hashed_password, no_password)
            .await?;
        let header = self
            .auth_change(AuthCommand::UserAdd {
                name: req.name,
                hash,
            })
            .await?;
        Ok(AuthUserAddResponse { header })
    }

    pub fn user_get(&self, who: &Caller, req: &AuthUserGetRequest) -> Result<AuthUserGetResponse> {
        self.may_admin_or_self(who, &req.name)?;
        let st = self.auth.state();
        let u = st.users.get(&req.name).ok_or(EtcdError::UserNotFound)?;
        Ok(AuthUserGetResponse {
            header: self.header(self.store.published()),
            roles: u.roles.iter().cloned().collect(),
        })
    }

    pub fn user_list(&self, who: &Caller) -> Result<AuthUserListResponse> {
        self.may_admin(who)?;
        Ok(AuthUserListResponse {
            header: self.header(self.store.published()),
            users: self.auth.state().users.keys().cloned().collect(),
        })
    }

    pub async fn user_delete(
        &self,
        who: &Caller,
        req: AuthUserDeleteRequest,
    ) -> Result<AuthUserDeleteResponse> {
        self.may_admin(who)?;
        let header = self
            .auth_change(AuthCommand::UserDelete { name: req.name })
            .await?;
        Ok(AuthUserDeleteResponse { header })
    }

    pub async fn user_change_password(
        &self,
        who: &Caller,
        req: AuthUserChangePasswordRequest,
    ) -> Result<AuthUserChangePasswordResponse> {
        self.may_admin_or_self(who, &req.name)?;
        if !self.auth.state().users.contains_key(&req.name) {
            return Err(EtcdError::UserNotFound);
        }
        let hash = self
            .hash_for(req.password, req.hashed_password, false)
            .await?;
        let header = self
            .auth_change(AuthCommand::UserChangePassword {
                name: req.name,
                hash,
            })
            .await?;
        Ok(AuthUserChangePasswordResponse { header })
    }

    pub async fn user_grant_role(
        &self,
        who: &Caller,
        req: AuthUserGrantRoleRequest,
    ) -> Result<AuthUserGrantRoleResponse> {
        self.may_admin(who)?;
        let header = self
            .auth_change(AuthCommand::UserGrantRole {
                user: req.user,
                role: req.role,
            })
            .await?;
        Ok(AuthUserGrantRoleResponse { header })
    }

    pub async fn user_revoke_role(
        &self,
        who: &Caller,
        req: AuthUserRevokeRoleRequest,
    ) -> Result<AuthUserRevokeRoleResponse> {
        self.may_admin(who)?;
        let header = self
            .auth_change(AuthCommand::UserRevokeRole {
                name: req.name,
                role: req.role,
            })
            .await?;
        Ok(AuthUserRevokeRoleResponse { header })
    }

    pub async fn role_add(
        &self,
        who: &Caller,
        req: AuthRoleAddRequest,
    ) -> Result<AuthRoleAddResponse> {
        self.may_admin(who)?;
        let header = self
            .auth_change(AuthCommand::RoleAdd { name: req.name })
            .await?;
        Ok(AuthRoleAddResponse { header })
    }

    pub fn role_get(&self, who: &Caller, req: &AuthRoleGetRequest) -> Result<AuthRoleGetResponse> {
        let st = self.auth.state();
        let own = who
            .as_ref()
            .and_then(|u| st.users.get(u))
            .is_some_and(|u| u.roles.contains(&req.role));
        if !own {
            self.may_admin(who)?;
        }
        let r = st.roles.get(&req.role).ok_or(EtcdError::RoleNotFound)?;
        Ok(AuthRoleGetResponse {
            header: self.header(self.store.published()),
            perm: r.perms.iter().map(Perm::to_proto).collect(),
        })
    }

    pub fn role_list(&self, who: &Caller) -> Result<AuthRoleListResponse> {
        self.may_admin(who)?;
        Ok(AuthRoleListResponse {
            header: self.header(self.store.published()),
            roles: self.auth.state().roles.keys().cloned().collect(),
        })
    }

    pub async fn role_delete(
        &self,
        who: &Caller,
        req: AuthRoleDeleteRequest,
    ) -> Result<AuthRoleDeleteResponse> {
        self.may_admin(who)?;
        let header = self
            .auth_change(AuthCommand::RoleDelete { role: req.role })
            .await?;
        Ok(AuthRoleDeleteResponse { header })
    }

    pub async fn role_grant_permission(
        &self,
        who: &Caller,
        req: AuthRoleGrantPermissionRequest,
    ) -> Result<AuthRoleGrantPermissionResponse> {
        self.may_admin(who)?;
        let perm = req
            .perm
            .as_ref()
            .ok_or_else(|| EtcdError::InvalidArgument("no permission given".into()))?;
        let header = self
            .auth_change(AuthCommand::RoleGrantPermission {
                name: req.name,
                perm: Perm::from_proto(perm)?,
            })
            .await?;
        Ok(AuthRoleGrantPermissionResponse { header })
    }

    pub async fn role_revoke_permission(
        &self,
        who: &Caller,
        req: AuthRoleRevokePermissionRequest,
    ) -> Result<AuthRoleRevokePermissionResponse> {
        self.may_admin(who)?;
        let header = self
            .auth_change(AuthCommand::RoleRevokePermission {
                role: req.role,
                key: req.key,
                range_end: req.range_end,
            })
            .await?;
        Ok(AuthRoleRevokePermissionResponse { header })
    }
}
