//! Pulling from an OCI / Docker registry over the distribution API (HTTP/1.1, TLS through
//! rustls): manifests and manifest lists, token and basic auth, layer downloads that resume
//! where an interrupted one stopped, with a progress bar on a terminal.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::digest::{self, Hashing};
use crate::error::{ImageError, Result};
use crate::import::{self, BlobSource};
use crate::reference::Reference;
use crate::spec::{self, Descriptor, ManifestOrIndex, Platform};
use crate::store::{ImageRecord, Store, MAX_JSON_BLOB};

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_REDIRECTS: u32 = 5;

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// `user:password` for basic auth or to get a token.
    pub credentials: Option<(String, String)>,
    /// Plain HTTP to a registry that is not on this machine.
    pub insecure: bool,
    /// Draw progress bars (on a terminal).
    pub progress: bool,
}

/// A session with one registry and repository.
pub struct Registry {
    agent: ureq::Agent,
    base: String,
    reference: Reference,
    opts: PullOptions,
    /// The Authorization header value once a challenge has been answered.
    auth: Option<String>,
}

impl Registry {
    pub fn new(reference: &Reference, opts: PullOptions) -> Registry {
        let scheme = if reference.is_local() || opts.insecure {
            "http"
        } else {
            "https"
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout_read(READ_TIMEOUT)
            .redirects(MAX_REDIRECTS)
            .redirect_auth_headers(ureq::RedirectAuthHeaders::SameHost)
            .user_agent(concat!("rkt/", env!("CARGO_PKG_VERSION")))
            .build();
        Registry {
            agent,
            base: format!(
                "{scheme}://{}/v2/{}",
                reference.api_host(),
                reference.repository
            ),
            reference: reference.clone(),
            opts,
            auth: None,
        }
    }

    fn err(&self, reason: impl Into<String>) -> ImageError {
        ImageError::Registry {
            registry: self.reference.registry.clone(),
            reason: reason.into(),
        }
    }

    /// GET `url`, answering one auth challenge; `range` resumes from a byte offset.
    fn get(
        &mut self,
        url: &str,
        accept: Option<&str>,
        range: Option<u64>,
    ) -> Result<ureq::Response> {
        for attempt in 0..2 {
            let mut req = self.agent.get(url);
            if let Some(a) = accept {
                req = req.set("Accept", a);
            }
            if let Some(r) = range {
                req = req.set("Range", &format!("bytes={r}-"));
            }
            if let Some(a) = &self.auth {
                req = req.set("Authorization", a);
            }
            match req.call() {
                Ok(r) => return Ok(r),
                Err(ureq::Error::Status(401, r)) if attempt == 0 => {
                    let challenge = r.header("WWW-Authenticate").unwrap_or_default().to_string();
                    self.auth = Some(self.answer(&challenge)?);
                }
                Err(ureq::Error::Status(401, _)) => {
                    return Err(self
                        .err("unauthorized: the credentials were refused (--creds USER:PASSWORD)"))
                }
                Err(ureq::Error::Status(404, r)) => {
                    let body = r.into_string().unwrap_or_default();
                    return Err(self.err(format!(
                        "{} not found ({})",
                        self.reference,
                        api_error(&body)
                    )));
                }
                Err(ureq::Error::Status(code, r)) => {
                    let body = r.into_string().unwrap_or_default();
                    return Err(self.err(format!("{url}: HTTP {code}: {}", api_error(&body))));
                }
                Err(ureq::Error::Transport(t)) => return Err(self.err(format!("{url}: {t}"))),
            }
        }
        Err(self.err("unauthorized"))
    }

    /// The Authorization value answering a WWW-Authenticate challenge.
    fn answer(&self, challenge: &str) -> Result<String> {
        let (scheme, params) = parse_challenge(challenge);
        let basic = self.opts.credentials.as_ref().map(|(u, p)| {
            use base64::Engine as _;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        });
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => basic.ok_or_else(|| {
                self.err("this registry needs credentials: pass --creds USER:PASSWORD")
            }),
            "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| self.err("Bearer challenge without a realm"))?;
                let mut url = url::Url::parse(realm)
                    .map_err(|e| self.err(format!("bad token realm {realm:?}: {e}")))?;
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = params.get("service") {
                        q.append_pair("service", s);
                    }
                    let scope = params.get("scope").cloned().unwrap_or_else(|| {
                        format!("repository:{}:pull", self.reference.repository)
                    });
                    q.append_pair("scope", &scope);
                }
                let mut req = self.agent.get(url.as_str());
                if let Some(b) = &basic {
                    req = req.set("Authorization", b);
                }
                let resp = req
                    .call()
                    .map_err(|e| self.err(format!("getting a token from {realm}: {e}")))?;
                let body: serde_json::Value =
                    serde_json::from_reader(resp.into_reader().take(MAX_JSON_BLOB))
                        .map_err(|e| self.err(format!("token response from {realm}: {e}")))?;
                let token = body
                    .get("token")
                    .or_else(|| body.get("access_token"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| self.err(format!("token response from {realm} has no token")))?;
                Ok(format!("Bearer {token}"))
            }
            _ => Err(self.err(format!("unsupported auth challenge {challenge:?}"))),
        }
    }

    /// Fetches the manifest document named by `what` (tag or digest): (bytes, media type).
    fn manifest(&mut self, what: &str) -> Result<(Vec<u8>, String)> {
        let url = format!("{}/manifests/{what}", self.base);
        let resp = self.get(&url, Some(ACCEPT), None)?;
        let mt = resp
            .header("Content-Type")
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let mut data = Vec::new();
        resp.into_reader()
            .take(MAX_JSON_BLOB + 1)
            .read_to_end(&mut data)
            .map_err(|e| self.err(format!("reading {url}: {e}")))?;
        if data.len() as u64 > MAX_JSON_BLOB {
            return Err(self.err(format!(
                "manifest {what} is larger than {MAX_JSON_BLOB} bytes"
            )));
        }
        if what.starts_with("sha256:") {
            let actual = digest::of(&data);
            if actual != what {
                return Err(ImageError::Corrupt {
                    digest: what.to_string(),
                    actual,
                });
            }
        }
        Ok((data, mt))
    }
}

impl BlobSource for Registry {
    /// Downloads into tmp/<hex>.partial (resuming it with a Range request when present), then
    /// moves it into place once it hashes to the digest.
    fn fetch_blob(&mut self, store: &Store, d: &Descriptor) -> Result<()> {
        crate::reference::check_digest(&d.digest).map_err(|r| self.err(r))?;
        let _lock = store.lock_item("blob", &d.digest)?;
        if store.has_blob(&d.digest) {
            return Ok(());
        }
        let partial = store.partial_path(&d.digest);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .open(&partial)
            .map_err(|e| ImageError::io(&partial, e))?;
        let (mut state, mut have) =
            digest::state_of(&mut file).map_err(|e| ImageError::io(&partial, e))?;
        if have > d.size {
            file.set_len(0).map_err(|e| ImageError::io(&partial, e))?;
            (state, have) = digest::state_of(&b""[..]).map_err(|e| ImageError::io(&partial, e))?;
        }
        let short = &digest::hex_of(&d.digest)[..12];
        let bar = if self.opts.progress {
            ProgressBar::with_draw_target(Some(d.size), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(short.to_string());
        bar.set_position(have);
        if have < d.size || d.size == 0 {
            let url = format!("{}/blobs/{}", self.base, d.digest);
            let resp = self.get(&url, None, (have > 0).then_some(have))?;
            if resp.status() != 206 && have > 0 {
                // The registry ignored the Range header: start over.
                tracing::info!(digest = %d.digest, have, "registry sent the whole blob; restarting");
                file.set_len(0).map_err(|e| ImageError::io(&partial, e))?;
                (state, have) =
                    digest::state_of(&b""[..]).map_err(|e| ImageError::io(&partial, e))?;
                bar.set_position(0);
            } else if have > 0 {
                tracing::info!(digest = %d.digest, from = have, "resuming download");
            }
            let mut body = resp.into_reader().take(d.size - have + 1);
            let mut w = Hashing::resume(&mut file, state, have);
            let mut buf = vec![0u8; 128 * 1024];
            loop {
                let n = body.read(&mut buf).map_err(|e| {
                    self.err(format!(
                        "download of {} interrupted after {} of {} bytes ({e}); fetch again to resume",
                        d.digest,
                        bar.position(),
                        d.size
                    ))
                })?;
                if n == 0 {
                    break;
                }
                w.write_all(&buf[..n])
                    .map_err(|e| ImageError::io(&partial, e))?;
                bar.inc(n as u64);
            }
            let (actual, total, _) = w.finish();
            bar.finish_and_clear();
            if total != d.size || actual != d.digest {
                let _ = std::fs::remove_file(&partial);
                if total < d.size {
                    return Err(self.err(format!(
                        "download of {} ended after {total} of {} bytes; fetch again to resume",
                        d.digest, d.size
                    )));
                }
                return Err(ImageError::Corrupt {
                    digest: d.digest.clone(),
                    actual,
                });
            }
        } else {
            let actual = digest::finish(state);
            if actual != d.digest {
                let _ = std::fs::remove_file(&partial);
                return Err(ImageError::Corrupt {
                    digest: d.digest.clone(),
                    actual,
                });
            }
        }
        file.sync_all().map_err(|e| ImageError::io(&partial, e))?;
        let dest = store.blob_path(&d.digest);
        std::fs::rename(&partial, &dest).map_err(|e| ImageError::io(&dest, e))?;
        Ok(())
    }
}

/// Pulls `reference` for `platform` into the store.
pub fn pull(
    store: &Store,
    reference: &Reference,
    platform: &Platform,
    opts: PullOptions,
) -> Result<ImageRecord> {
    let mut reg = Registry::new(reference, opts);
    let what = reference.to_string();
    let (mut data, mt) = reg.manifest(reference.manifest_ref())?;
    if let ManifestOrIndex::Index(idx) = spec::parse_manifest(&data, &mt, &what)? {
        let d = spec::pick_platform(&idx, platform, &what)?.clone();
        data = reg.manifest(&d.digest)?.0;
    }
    import::import_manifest(store, &mut reg, &data, vec![what.clone()], platform, &what)
}

/// `Bearer realm="x",service="y"` to ("Bearer", {realm: x, service: y}).
pub fn parse_challenge(h: &str) -> (String, HashMap<String, String>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    (scheme.to_string(), params)
}

/// The message of a registry's `{"errors":[{"code","message"}]}` body.
fn api_error(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v.get("errors")
        .and_then(|e| e.as_array())
        .map(|errs| {
            errs.iter()
                .map(|e| {
                    format!(
                        "{}: {}",
                        e.get("code").and_then(|c| c.as_str()).unwrap_or("ERROR"),
                        e.get("message").and_then(|c| c.as_str()).unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| body.chars().take(200).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(
            p.get("realm").map(String::as_str),
            Some("https://auth.docker.io/token")
        );
        assert_eq!(
            p.get("scope").map(String::as_str),
            Some("repository:library/busybox:pull")
        );
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(
            (s.as_str(), p.get("realm").map(String::as_str)),
            ("Basic", Some("Registry Realm"))
        );
    }

    #[test]
    fn registry_errors_are_readable() {
        assert_eq!(
            api_error(r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#),
            "MANIFEST_UNKNOWN: manifest unknown"
        );
        assert_eq!(api_error("plain"), "plain");
    }
}
