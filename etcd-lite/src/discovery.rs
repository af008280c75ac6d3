//! etcd's v2 discovery protocol, the member's side (`--discovery URL`): a new member registers
//! itself under the discovery token, waits until the cluster's size of members have
//! registered, and starts with them as its initial cluster. The URL is a v2 keys directory (what
//! discovery.etcd.io and Debian's `etcd-discovery` serve, or any etcd's `/v2/keys/...`):
//!
//! - `GET URL/_config/size` is the wanted size;
//! - `PUT URL/<member id in hex>?prevExist=false` with `value=name=peer-url,...` registers;
//! - `GET URL` lists the registered members; the first `size` of them by creation index form the
//!   cluster, and anyone after them finds it full;
//! - `GET URL?wait=true&recursive=true&waitIndex=N` waits for the next registration.
//!
//! Errors are etcd's words (`discovery: cluster is full`, ...), so scripts that look for them
//! keep working.

use std::time::{Duration, Instant};

use serde::Deserialize;

/// Why discovery did not give an initial cluster.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiscoveryError {
    #[error("discovery: cluster size is not found")]
    SizeNotFound,
    #[error("discovery: size key is bad")]
    BadSizeKey,
    #[error("discovery: found duplicate id")]
    DuplicateId,
    #[error("discovery: cluster is full")]
    FullCluster,
    #[error("discovery: bad discovery URL {0:?}: {1}")]
    BadUrl(String, String),
    #[error("discovery: gave up after {0:?}: {1}")]
    Unreachable(Duration, String),
    #[error("discovery: unexpected answer from the discovery service: {0}")]
    Unexpected(String),
}

#[derive(Debug, Deserialize)]
struct Answer {
    node: Option<Node>,
}

#[derive(Debug, Deserialize, Clone)]
struct Node {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default, rename = "createdIndex")]
    created_index: u64,
    #[serde(default)]
    nodes: Vec<Node>,
}

/// How one request to the service went wrong: worth another try (the service is away), or not.
enum Attempt {
    Retry(String),
    Fail(DiscoveryError),
}

impl From<ureq::Error> for Attempt {
    fn from(e: ureq::Error) -> Self {
        match e {
            // A proxy or the service restarting answers 5xx for a while.
            ureq::Error::Status(code, r) if code >= 500 => Attempt::Retry(format!(
                "HTTP {code}: {}",
                r.into_string().unwrap_or_default()
            )),
            ureq::Error::Status(code, r) => Attempt::Fail(DiscoveryError::Unexpected(format!(
                "HTTP {code}: {}",
                r.into_string().unwrap_or_default()
            ))),
            ureq::Error::Transport(t) => Attempt::Retry(t.to_string()),
        }
    }
}

/// One registration, as a v2 node says it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Registered {
    /// The last path segment: the member id in hex, or `_config`.
    id: String,
    value: String,
    created: u64,
}

/// The cluster `size` members form once registered: the first `size` by creation index; an
/// error if `me` registered but is not among them.
fn settle(
    mut nodes: Vec<Registered>,
    size: usize,
    me: &str,
) -> Result<Option<Vec<Registered>>, DiscoveryError> {
    nodes.retain(|n| n.id != "_config");
    nodes.sort_by_key(|n| n.created);
    if nodes.len() >= size {
        let first = &nodes[..size];
        if !first.iter().any(|n| n.id == me) {
            return Err(DiscoveryError::FullCluster);
        }
        return Ok(Some(first.to_vec()));
    }
    Ok(None)
}

/// The v2 discovery client for one token URL.
pub struct Discovery {
    url: String,
    agent: ureq::Agent,
    /// Retries of an unreachable service stop after this long.
    patience: Duration,
}

impl Discovery {
    /// A client for `url`, optionally through the HTTP proxy `proxy` (`--discovery-proxy`).
    pub fn new(url: &str, proxy: Option<&str>) -> Result<Self, DiscoveryError> {
        let parsed =
            url::Url::parse(url).map_err(|e| DiscoveryError::BadUrl(url.into(), e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.path().len() <= 1 {
            return Err(DiscoveryError::BadUrl(
                url.into(),
                "expected http(s)://HOST/TOKEN".into(),
            ));
        }
        let mut b = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(5));
        if let Some(p) = proxy {
            let p =
                ureq::Proxy::new(p).map_err(|e| DiscoveryError::BadUrl(p.into(), e.to_string()))?;
            b = b.proxy(p);
        }
        Ok(Discovery {
            url: url.trim_end_matches('/').to_string(),
            agent: b.build(),
            patience: Duration::from_secs(60),
        })
    }

    /// A GET of `path` under the token: `Ok(None)` when the service says 404.
    fn get(&self, path: &str, timeout: Duration) -> Result<Option<(Node, u64)>, Attempt> {
        match self
            .agent
            .get(&format!("{}{path}", self.url))
            .timeout(timeout)
            .call()
        {
            Ok(r) => {
                let index = r
                    .header("X-Etcd-Index")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let body = r.into_string().map_err(|e| Attempt::Retry(e.to_string()))?;
                let a: Answer = serde_json::from_str(&body).map_err(|e| {
                    Attempt::Fail(DiscoveryError::Unexpected(format!(
                        "not a v2 answer ({e}): {body}"
                    )))
                })?;
                Ok(a.node.map(|n| (n, index)))
            }
            Err(ureq::Error::Status(404, _)) => Ok(None),
            Err(e) => Err(Attempt::from(e)),
        }
    }

    /// Retries `f` while the service cannot be reached, for [`Self::patience`].
    fn retrying<T>(&self, mut f: impl FnMut() -> Result<T, Attempt>) -> Result<T, DiscoveryError> {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(200);
        loop {
            match f() {
                Ok(v) => return Ok(v),
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Retry(e)) if start.elapsed() >= self.patience => {
                    return Err(DiscoveryError::Unreachable(self.patience, e));
                }
                Err(Attempt::Retry(e)) => {
                    tracing::warn!(error = %e, url = %self.url, "discovery service unreachable; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn size(&self) -> Result<usize, DiscoveryError> {
        let got = self.retrying(|| self.get("/_config/size", Duration::from_secs(10)))?;
        let (node, _) = got.ok_or(DiscoveryError::SizeNotFound)?;
        node.value
            .as_deref()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .ok_or(DiscoveryError::BadSizeKey)
    }

    fn register(&self, id: &str, value: &str) -> Result<(), DiscoveryError> {
        let url = format!("{}/{id}?prevExist=false", self.url);
        let res = self.retrying(|| {
            match self
                .agent
                .put(&url)
                .timeout(Duration::from_secs(10))
                .send_form(&[("value", value)])
            {
                Ok(_) => Ok(true),
                // 412: the key exists (etcd's "Key already exists").
                Err(ureq::Error::Status(412, _)) => Ok(false),
                Err(e) => Err(Attempt::from(e)),
            }
        })?;
        if res {
            Ok(())
        } else {
            Err(DiscoveryError::DuplicateId)
        }
    }

    /// The registrations and the index to wait from.
    fn list(&self) -> Result<(Vec<Registered>, u64), DiscoveryError> {
        let got = self.retrying(|| self.get("", Duration::from_secs(10)))?;
        let Some((dir, index)) = got else {
            return Ok((Vec::new(), 0));
        };
        let nodes = dir
            .nodes
            .into_iter()
            .map(|n| Registered {
                id: n.key.rsplit('/').next().unwrap_or_default().to_string(),
                value: n.value.unwrap_or_default(),
                created: n.created_index,
            })
            .collect();
        Ok((nodes, index))
    }

    /// The peer URLs of the cluster the token describes once it is full (the first `size`
    /// registrations): what a member that finds it full proxies to (`--discovery-fallback
    /// proxy`).
    pub fn members(&self) -> Result<Vec<String>, DiscoveryError> {
        let size = self.size()?;
        let (mut nodes, _) = self.list()?;
        nodes.retain(|n| n.id != "_config");
        nodes.sort_by_key(|n| n.created);
        Ok(nodes
            .iter()
            .take(size)
            .flat_map(|n| n.value.split(','))
            .filter_map(|entry| entry.split_once('=').map(|(_, url)| url.to_string()))
            .collect())
    }

    /// Registers member `id` (hex) as `name=peer-url,...` and waits for the whole cluster; the
    /// initial cluster (`name=url,...` of every member, in registration order).
    pub fn join(&self, id: u64, me: &str) -> Result<String, DiscoveryError> {
        let size = self.size()?;
        let hex = format!("{id:x}");
        // Full before we register: refuse without adding a registration nobody will use.
        let (nodes, _) = self.list()?;
        if nodes.iter().filter(|n| n.id != "_config").count() >= size
            && !nodes.iter().any(|n| n.id == hex)
        {
            return Err(DiscoveryError::FullCluster);
        }
        self.register(&hex, me)?;
        loop {
            let (nodes, index) = self.list()?;
            if let Some(members) = settle(nodes, size, &hex)? {
                let all: Vec<String> = members.into_iter().map(|m| m.value).collect();
                return Ok(all.join(","));
            }
            tracing::info!(size, url = %self.url, "waiting for the other members to register");
            // A long poll for the next change (the service answers within its own timeout).
            let wait = format!("?wait=true&recursive=true&waitIndex={}", index + 1);
            let _ = self.retrying(|| self.get(&wait, Duration::from_secs(330)))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: &str, created: u64) -> Registered {
        Registered {
            id: id.into(),
            value: format!("{id}=http://{id}:2380"),
            created,
        }
    }

    #[test]
    fn the_first_registered_members_form_the_cluster() {
        let nodes = vec![reg("c", 9), reg("_config", 1), reg("a", 3), reg("b", 5)];
        assert_eq!(settle(nodes.clone(), 4, "a"), Ok(None), "still waiting");
        let got = settle(nodes.clone(), 2, "b")
            .expect("b is in")
            .expect("settled");
        assert_eq!(got, [reg("a", 3), reg("b", 5)]);
        assert_eq!(settle(nodes, 2, "c"), Err(DiscoveryError::FullCluster));
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(matches!(
            Discovery::new("not a url", None),
            Err(DiscoveryError::BadUrl(..))
        ));
        assert!(matches!(
            Discovery::new("http://127.0.0.1:1/", None),
            Err(DiscoveryError::BadUrl(..))
        ));
    }
}
