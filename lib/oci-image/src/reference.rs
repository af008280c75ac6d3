//! Image references as docker and podman spell them: `[registry/]repository[:tag][@digest]`,
//! with Docker Hub's defaults (`busybox` is `docker.io/library/busybox:latest`).

use std::fmt;

use crate::error::{ImageError, Result};

/// Docker Hub's name in references, and the host its API answers on.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";
const MAX_REFERENCE: usize = 255;

/// A parsed, normalized registry reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `host[:port]`, `docker.io` for Docker Hub.
    pub registry: String,
    /// `library/busybox`, `team/app`.
    pub repository: String,
    /// The tag; `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    /// `sha256:<hex>` when pinned.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `name` (an optional `docker://` prefix is accepted).
    pub fn parse(name: &str) -> Result<Reference> {
        let bad = |why: &str| ImageError::BadReference {
            reference: name.to_string(),
            reason: why.to_string(),
        };
        let s = name.strip_prefix("docker://").unwrap_or(name);
        if s.is_empty() {
            return Err(bad("empty reference"));
        }
        if s.len() > MAX_REFERENCE {
            return Err(bad("longer than 255 characters"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                check_digest(d).map_err(|e| bad(&e))?;
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that comes after the last '/' (a registry port is not one).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let t = &rest[last_slash + i + 1..];
                if !valid_tag(t) {
                    return Err(bad(&format!(
                        "invalid tag {t:?}: use up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'"
                    )));
                }
                (&rest[..last_slash + i], Some(t.to_string()))
            }
            None => (rest, None),
        };
        let mut parts: Vec<&str> = path.split('/').collect();
        let registry = if parts.len() > 1
            && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost")
        {
            let host = parts.remove(0);
            check_host(host).map_err(|e| bad(&e))?;
            host.to_string()
        } else {
            DOCKER_HUB.to_string()
        };
        if registry == DOCKER_HUB && parts.len() == 1 {
            parts.insert(0, "library");
        }
        for p in &parts {
            if !valid_path_component(p) {
                return Err(bad(&format!(
                    "invalid repository name component {p:?}: use lowercase letters, digits and single '.', '_', '__' or '-' between them"
                )));
            }
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(Reference {
            registry,
            repository: parts.join("/"),
            tag,
            digest,
        })
    }

    /// The host the registry API answers on.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What to ask the manifests endpoint for: the digest if pinned, else the tag.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// Whether the registry is on this machine (plain HTTP is then allowed, as docker does).
    pub fn is_local(&self) -> bool {
        let host = match self.registry.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
            _ => self.registry.as_str(),
        };
        host == "localhost" || host.starts_with("127.") || host == "[::1]"
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `sha256:` and 64 lowercase hex digits.
pub fn check_digest(d: &str) -> std::result::Result<(), String> {
    let hex = d
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("digest {d:?} is not sha256:<hex>"))?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!("digest {d:?} needs 64 lowercase hex digits"));
    }
    Ok(())
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && !t.starts_with(['.', '-'])
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, the distribution spec's path component.
fn valid_path_component(p: &str) -> bool {
    let b = p.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &p[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn check_host(h: &str) -> std::result::Result<(), String> {
    let (name, port) = match h.rsplit_once(':') {
        Some((n, p)) if !n.ends_with(']') || h.starts_with('[') => (n, Some(p)),
        _ => (h, None),
    };
    if let Some(p) = port {
        if p.parse::<u16>().is_err() {
            return Err(format!("invalid registry port {p:?}"));
        }
    }
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'[' || b == b']');
    if ok {
        Ok(())
    } else {
        Err(format!("invalid registry host {name:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> String {
        Reference::parse(s)
            .map(|r| r.to_string())
            .unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn docker_hub_defaults() {
        assert_eq!(r("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(r("docker://team/app:1.2"), "docker.io/team/app:1.2");
        assert_eq!(
            Reference::parse("busybox")
                .map(|r| r.api_host().to_string())
                .ok(),
            Some("registry-1.docker.io".into())
        );
    }

    #[test]
    fn registries_ports_tags_and_digests() {
        assert_eq!(r("localhost:5000/busybox"), "localhost:5000/busybox:latest");
        assert_eq!(r("127.0.0.1:5000/a/b:v1"), "127.0.0.1:5000/a/b:v1");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(r(&format!("quay.io/x/y@{d}")), format!("quay.io/x/y@{d}"));
        assert_eq!(
            r(&format!("quay.io/x/y:t@{d}")),
            format!("quay.io/x/y:t@{d}")
        );
        let p = Reference::parse("localhost:5000/busybox").ok();
        assert!(p.as_ref().is_some_and(|p| p.is_local()));
        assert!(Reference::parse("quay.io/a").is_ok_and(|p| !p.is_local()));
    }

    #[test]
    fn bad_references_say_why() {
        for bad in [
            "",
            "UPPER/case",
            "a//b",
            "a:",
            "a:-tag",
            "a@sha256:abc",
            "a@md5:0123",
            "host:99999/a",
            "a..b",
            "-a",
        ] {
            let e = Reference::parse(bad);
            assert!(e.is_err(), "{bad:?} was accepted as {e:?}");
        }
        let long = "a".repeat(300);
        assert!(r(&long).contains("255"));
    }
}
