//! Turning etcd auth on for a cluster whose config asks for it (`"etcd": {"auth": true}`), from
//! any node, idempotently: users without passwords (clients are known by their certificate's
//! common name), `root` with the root role (the operator's certificate), one user per node with
//! the `fleet` role (read and write of fleet's keys: what fleetd needs), then AuthEnable. Every
//! node runs it (`corelite-etcd-auth.service`); whichever comes first does the work, the others
//! find auth on.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use etcd_api::authpb::{permission::Type, Permission, UserAddOptions};
use etcd_api::etcdserverpb::auth_client::AuthClient;
use etcd_api::etcdserverpb::{
    AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthStatusRequest,
    AuthUserAddRequest, AuthUserGrantRoleRequest,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// fleet's keys (fleetd's default `--etcd-key-prefix`) and the end of their range.
pub const FLEET_PREFIX: &str = "/_coreos.com/fleet/";
const FLEET_END: &str = "/_coreos.com/fleet0";

/// The role fleetd's node users have.
pub const FLEET_ROLE: &str = "fleet";

/// How long a node waits for its cluster to answer before giving up (systemd shows the failure).
const PATIENCE: Duration = Duration::from_secs(600);

async fn channel(endpoint: &str, pki: &Path) -> Result<Channel> {
    let read = |f: &str| {
        std::fs::read(pki.join(f)).with_context(|| format!("reading {}", pki.join(f).display()))
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")?))
        .identity(Identity::from_pem(read("node.pem")?, read("node-key.pem")?));
    Ok(Channel::from_shared(endpoint.to_string())?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect_lazy())
}

/// A step that may have been done already (by this node before a restart, or another node).
// tonic's Status is what every call returns; boxing it here alone would gain nothing.
#[allow(clippy::result_large_err)]
fn done_or_exists(
    r: std::result::Result<(), tonic::Status>,
) -> std::result::Result<(), tonic::Status> {
    match r {
        Err(s) if s.message().contains("already exists") => Ok(()),
        other => other,
    }
}

async fn setup(
    auth: &mut AuthClient<Channel>,
    nodes: &[String],
) -> std::result::Result<(), tonic::Status> {
    let no_password = Some(UserAddOptions { no_password: true });
    let mut users = vec![("root".to_string(), "root")];
    users.extend(nodes.iter().map(|n| (n.clone(), FLEET_ROLE)));
    for role in ["root", FLEET_ROLE] {
        done_or_exists(
            auth.role_add(AuthRoleAddRequest { name: role.into() })
                .await
                .map(drop),
        )?;
    }
    auth.role_grant_permission(AuthRoleGrantPermissionRequest {
        name: FLEET_ROLE.into(),
        perm: Some(Permission {
            perm_type: Type::Readwrite as i32,
            key: FLEET_PREFIX.into(),
            range_end: FLEET_END.into(),
        }),
    })
    .await?;
    for (user, role) in &users {
        done_or_exists(
            auth.user_add(AuthUserAddRequest {
                name: user.clone(),
                options: no_password,
                ..Default::default()
            })
            .await
            .map(drop),
        )?;
        auth.user_grant_role(AuthUserGrantRoleRequest {
            user: user.clone(),
            role: role.to_string(),
        })
        .await?;
    }
    auth.auth_enable(AuthEnableRequest {}).await?;
    Ok(())
}

/// Waits for the cluster, then turns auth on unless it is on already.
pub async fn enable(endpoint: &str, pki: &Path, nodes: &[String]) -> Result<()> {
    let mut auth = AuthClient::new(channel(endpoint, pki).await?);
    let start = Instant::now();
    loop {
        match auth.auth_status(AuthStatusRequest {}).await {
            Ok(s) if s.get_ref().enabled => {
                println!(
                    "corelite: etcd auth is on (users: root, {})",
                    nodes.join(", ")
                );
                return Ok(());
            }
            Ok(_) => match setup(&mut auth, nodes).await {
                Ok(()) => continue,
                // Another node turned auth on meanwhile (this node's user may not create
                // users any more), or the cluster is not ready: look again.
                Err(e) => eprintln!("corelite: turning etcd auth on: {}", e.message()),
            },
            Err(e) => eprintln!("corelite: waiting for etcd-lite: {}", e.message()),
        }
        if start.elapsed() > PATIENCE {
            bail!("etcd-lite did not answer for {} s", PATIENCE.as_secs());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
