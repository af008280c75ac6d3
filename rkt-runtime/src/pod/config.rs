//! A pod's config.json from its image's config and `rkt run`'s options (pure: no files but
//! the passwd/group text handed in).

use std::path::PathBuf;

use oci_image::spec::ImageConfig;
use oci_spec::runtime::Spec;
use serde_json::{json, Value};

use crate::error::{Result, RuntimeError};

/// The pod's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// A bridge address, NAT and port forwards.
    Default,
    /// The host's network namespace.
    Host,
    /// Loopback only.
    None,
}

impl std::str::FromStr for NetMode {
    type Err = RuntimeError;
    fn from_str(s: &str) -> Result<NetMode> {
        match s {
            "default" => Ok(NetMode::Default),
            "host" => Ok(NetMode::Host),
            "none" => Ok(NetMode::None),
            other => Err(RuntimeError::Unsupported(format!(
                "--net={other}: use default, host or none"
            ))),
        }
    }
}

/// A host path or tmpfs mounted into the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// None for a tmpfs.
    pub source: Option<PathBuf>,
    pub target: String,
    pub readonly: bool,
}

impl Volume {
    /// `--volume HOST:CONTAINER[:ro|rw]`.
    pub fn parse_volume(s: &str) -> Result<Volume> {
        let bad = |why: &str| {
            RuntimeError::Unsupported(format!(
                "--volume {s:?}: {why} (expected /host/path:/container/path[:ro])"
            ))
        };
        let parts: Vec<&str> = s.split(':').collect();
        let (src, dst, ro) = match parts.as_slice() {
            [a, b] => (*a, *b, false),
            [a, b, "ro"] => (*a, *b, true),
            [a, b, "rw"] => (*a, *b, false),
            [_, _, o] => return Err(bad(&format!("unknown option {o:?}"))),
            _ => return Err(bad("needs a host path and a container path")),
        };
        if !src.starts_with('/') || !dst.starts_with('/') {
            return Err(bad("both paths must be absolute"));
        }
        Ok(Volume {
            source: Some(PathBuf::from(src)),
            target: dst.to_string(),
            readonly: ro,
        })
    }

    /// `--mount type=bind,source=/a,target=/b[,readonly]` or `type=tmpfs,target=/t`.
    pub fn parse_mount(s: &str) -> Result<Volume> {
        let bad = |why: &str| RuntimeError::Unsupported(format!("--mount {s:?}: {why}"));
        let (mut typ, mut src, mut dst, mut ro) = ("bind", None, None, false);
        for kv in s.split(',') {
            match kv.split_once('=') {
                Some(("type", t)) => {
                    typ = if t == "bind" {
                        "bind"
                    } else if t == "tmpfs" {
                        "tmpfs"
                    } else {
                        return Err(bad("type must be bind or tmpfs"));
                    }
                }
                Some(("source" | "src", v)) => src = Some(v),
                Some(("target" | "destination" | "dst", v)) => dst = Some(v),
                Some(("readonly" | "ro", v)) => ro = v == "true" || v == "1",
                None if kv == "readonly" || kv == "ro" => ro = true,
                _ => return Err(bad(&format!("unknown field {kv:?}"))),
            }
        }
        let dst = dst.ok_or_else(|| bad("needs target="))?;
        if !dst.starts_with('/') {
            return Err(bad("target must be absolute"));
        }
        let source = match (typ, src) {
            ("bind", Some(p)) if p.starts_with('/') => Some(PathBuf::from(p)),
            ("bind", _) => return Err(bad("a bind mount needs an absolute source=")),
            _ => None,
        };
        Ok(Volume {
            source,
            target: dst.to_string(),
            readonly: ro,
        })
    }
}

/// What `rkt run` was asked for, beyond the image.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub name: String,
    /// Replaces the image's entrypoint.
    pub exec: Option<String>,
    /// Replace the image's Cmd (or, with `exec`, are its arguments).
    pub args: Vec<String>,
    pub set_env: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub volumes: Vec<Volume>,
    pub net: NetMode,
    pub memory: Option<i64>,
    /// CPU cores (fractions allowed).
    pub cpu: Option<f64>,
    pub interactive: bool,
}

/// Bytes with an optional k/m/g suffix (powers of 1024), or -1 for unlimited.
pub fn parse_bytes(s: &str) -> Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.trim_end_matches('b');
    let (num, mul) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: i64 = num.parse().map_err(|_| {
        RuntimeError::Unsupported(format!("{s:?} is not a size (bytes, or with k, m, g)"))
    })?;
    Ok(if n < 0 { -1 } else { n * mul })
}

/// The process's argv: `exec` + args, or the image's Entrypoint + (args or Cmd).
pub fn argv(img: &ImageConfig, o: &RunOptions) -> Result<Vec<String>> {
    let rc = img.config.clone().unwrap_or_default();
    let v: Vec<String> = match &o.exec {
        Some(e) => std::iter::once(e.clone())
            .chain(o.args.iter().cloned())
            .collect(),
        None => {
            let ep = rc.entrypoint.unwrap_or_default();
            let rest = if o.args.is_empty() {
                rc.cmd.unwrap_or_default()
            } else {
                o.args.clone()
            };
            ep.into_iter().chain(rest).collect()
        }
    };
    if v.is_empty() {
        return Err(RuntimeError::Unsupported(
            "the image has no Entrypoint or Cmd: give a command after --, or --exec".into(),
        ));
    }
    Ok(v)
}

/// The environment: the image's, then PATH/HOSTNAME defaults, then --set-env (later wins).
pub fn env(img: &ImageConfig, o: &RunOptions) -> Result<Vec<String>> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut set = |kv: &str, flag: bool| -> Result<()> {
        let (k, v) = match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => (k, v),
            _ if flag => {
                return Err(RuntimeError::Unsupported(format!(
                    "--set-env {kv:?}: expected NAME=VALUE"
                )))
            }
            _ => return Ok(()),
        };
        out.retain(|(ok, _)| ok != k);
        out.push((k.to_string(), v.to_string()));
        Ok(())
    };
    set(
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        false,
    )?;
    for kv in img
        .config
        .as_ref()
        .and_then(|c| c.env.clone())
        .unwrap_or_default()
    {
        set(&kv, false)?;
    }
    set(&format!("HOSTNAME={}", o.name), false)?;
    if o.interactive {
        set("TERM=xterm", false)?;
    }
    for kv in &o.set_env {
        set(kv, true)?;
    }
    Ok(out.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// `user[:group]` (names or numbers) to (uid, gid, supplementary gids) using the image's
/// /etc/passwd and /etc/group text.
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<(u32, u32, Vec<u32>)> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let entries = |text: &str| -> Vec<Vec<String>> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(':').map(String::from).collect::<Vec<_>>())
            .filter(|f| f.len() >= 4)
            .collect()
    };
    let pw = entries(passwd);
    let gr = entries(group);
    let (uid, name, primary) = if u.is_empty() {
        (0, "root".to_string(), Some(0))
    } else if let Ok(n) = u.parse::<u32>() {
        let e = pw.iter().find(|f| f[2] == u);
        (
            n,
            e.map(|f| f[0].clone()).unwrap_or_default(),
            e.and_then(|f| f[3].parse().ok()),
        )
    } else {
        let e = pw.iter().find(|f| f[0] == u).ok_or_else(|| {
            RuntimeError::Unsupported(format!("user {u:?} is not in the image's /etc/passwd"))
        })?;
        let uid = e[2]
            .parse()
            .map_err(|_| RuntimeError::Unsupported(format!("bad passwd entry for {u}")))?;
        (uid, u.to_string(), e[3].parse().ok())
    };
    let gid = match g {
        Some(g) if g.parse::<u32>().is_ok() => g.parse().unwrap_or(0),
        Some(g) => gr
            .iter()
            .find(|f| f[0] == g)
            .and_then(|f| f[2].parse().ok())
            .ok_or_else(|| {
                RuntimeError::Unsupported(format!("group {g:?} is not in the image's /etc/group"))
            })?,
        None => primary.unwrap_or(0),
    };
    let extra: Vec<u32> = if name.is_empty() {
        Vec::new()
    } else {
        gr.iter()
            .filter(|f| f[3].split(',').any(|m| m == name))
            .filter_map(|f| f[2].parse().ok())
            .filter(|g| *g != gid)
            .collect()
    };
    Ok((uid, gid, extra))
}

/// The whole spec. `user` is already resolved; `etc` are (container path, host file) binds for
/// /etc/hosts, /etc/resolv.conf and /etc/hostname.
pub fn spec(
    img: &ImageConfig,
    o: &RunOptions,
    user: (u32, u32, Vec<u32>),
    etc: &[(String, PathBuf)],
    annotations: &[(String, String)],
) -> Result<Spec> {
    let base = crate::bundle::default_spec();
    let mut s =
        serde_json::to_value(&base).map_err(|e| RuntimeError::Unsupported(e.to_string()))?;
    let rc = img.config.clone().unwrap_or_default();
    s["root"] = json!({"path": "rootfs", "readonly": false});
    s["hostname"] = json!(o.name);
    s["process"]["args"] = json!(argv(img, o)?);
    s["process"]["env"] = json!(env(img, o)?);
    s["process"]["cwd"] = json!(o
        .workdir
        .clone()
        .or(rc.working_dir.filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into()));
    s["process"]["user"] = json!({"uid": user.0, "gid": user.1, "additionalGids": user.2});
    s["process"]["terminal"] = json!(false);
    let mounts = s["mounts"]
        .as_array_mut()
        .ok_or_else(|| RuntimeError::Unsupported("default spec without mounts".into()))?;
    for (dest, src) in etc {
        mounts.push(json!({"destination": dest, "type": "bind", "source": src, "options": ["rbind", "rprivate"]}));
    }
    for v in &o.volumes {
        let ro = if v.readonly { "ro" } else { "rw" };
        mounts.push(match &v.source {
            Some(src) => json!({"destination": v.target, "type": "bind", "source": src, "options": ["rbind", "rprivate", ro]}),
            None => json!({"destination": v.target, "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", ro, "mode=1777"]}),
        });
    }
    if o.net == NetMode::Host {
        if let Some(ns) = s["linux"]["namespaces"].as_array_mut() {
            ns.retain(|n| n["type"] != "network");
        }
    }
    let mut res = json!({});
    if let Some(m) = o.memory {
        res["memory"] = json!({"limit": m});
    }
    if let Some(c) = o.cpu {
        if c <= 0.0 {
            return Err(RuntimeError::Unsupported(
                "--cpu must be more than 0".into(),
            ));
        }
        res["cpu"] = json!({"quota": (c * 100_000.0).round() as i64, "period": 100_000});
    }
    s["linux"]["resources"] = res;
    let ann: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    s["annotations"] = Value::Object(ann);
    serde_json::from_value(s)
        .map_err(|e| RuntimeError::Unsupported(format!("generated config: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(entry: &[&str], cmd: &[&str]) -> ImageConfig {
        serde_json::from_value(json!({"architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": entry, "Cmd": cmd, "Env": ["PATH=/bin", "A=1"], "WorkingDir": "/srv"}}))
        .expect("an image config")
    }

    fn opts() -> RunOptions {
        RunOptions {
            name: "web".into(),
            exec: None,
            args: vec![],
            set_env: vec![],
            user: None,
            workdir: None,
            volumes: vec![],
            net: NetMode::Default,
            memory: None,
            cpu: None,
            interactive: false,
        }
    }

    #[test]
    fn argv_follows_docker_rules() {
        let i = img(&["/bin/httpd", "-f"], &["-p", "80"]);
        assert_eq!(
            argv(&i, &opts()).ok(),
            Some(vec![
                "/bin/httpd".into(),
                "-f".into(),
                "-p".into(),
                "80".into()
            ])
        );
        let o = RunOptions {
            args: vec!["-p".into(), "8080".into()],
            ..opts()
        };
        assert_eq!(
            argv(&i, &o).ok().map(|v| v.join(" ")),
            Some("/bin/httpd -f -p 8080".into())
        );
        let o = RunOptions {
            exec: Some("/bin/sh".into()),
            args: vec!["-c".into(), "id".into()],
            ..opts()
        };
        assert_eq!(
            argv(&i, &o).ok().map(|v| v.join(" ")),
            Some("/bin/sh -c id".into())
        );
        assert!(argv(&img(&[], &[]), &opts()).is_err());
    }

    #[test]
    fn env_merges_later_wins() {
        let o = RunOptions {
            set_env: vec!["A=2".into(), "B=x=y".into()],
            ..opts()
        };
        let e = env(&img(&[], &["sh"]), &o).expect("an environment");
        assert!(e.contains(&"PATH=/bin".to_string()));
        assert!(e.contains(&"A=2".to_string()) && !e.contains(&"A=1".to_string()));
        assert!(e.contains(&"B=x=y".to_string()) && e.contains(&"HOSTNAME=web".to_string()));
        let bad = RunOptions {
            set_env: vec!["NOEQUALS".into()],
            ..opts()
        };
        assert!(env(&img(&[], &["sh"]), &bad).is_err());
    }

    #[test]
    fn users_resolve_from_the_image() {
        let pw = "root:x:0:0::/root:/bin/sh\nwww:x:33:33::/var/www:/bin/false\n";
        let gr = "root:x:0:\nwww:x:33:\nlogs:x:4:www\n";
        assert_eq!(resolve_user("", pw, gr).ok(), Some((0, 0, vec![])));
        assert_eq!(resolve_user("www", pw, gr).ok(), Some((33, 33, vec![4])));
        assert_eq!(
            resolve_user("1000:1000", pw, gr).ok(),
            Some((1000, 1000, vec![]))
        );
        assert_eq!(resolve_user("www:logs", pw, gr).ok().map(|u| u.1), Some(4));
        assert!(resolve_user("nobody", pw, gr).is_err());
    }

    #[test]
    fn spec_has_limits_mounts_and_host_net() {
        let o = RunOptions {
            memory: Some(64 << 20),
            cpu: Some(0.5),
            net: NetMode::Host,
            volumes: vec![Volume::parse_volume("/srv:/data:ro").expect("a volume")],
            ..opts()
        };
        let s = spec(&img(&[], &["sh"]), &o, (0, 0, vec![]), &[], &[]).expect("a spec");
        let v = serde_json::to_value(&s).expect("spec as JSON");
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["process"]["cwd"], "/srv");
        assert!(!v["linux"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .any(|n| n["type"] == "network"));
        assert!(v["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .any(|m| m["destination"] == "/data"));
    }

    #[test]
    fn bad_volumes_mounts_and_sizes() {
        assert!(Volume::parse_volume("rel:/x").is_err());
        assert!(Volume::parse_volume("/a:/b:zz").is_err());
        assert!(Volume::parse_mount("type=nfs,target=/x").is_err());
        assert!(Volume::parse_mount("type=bind,target=/x").is_err());
        assert_eq!(
            Volume::parse_mount("type=tmpfs,target=/t")
                .ok()
                .map(|v| v.source),
            Some(None)
        );
        assert_eq!(parse_bytes("64m").ok(), Some(64 << 20));
        assert!(parse_bytes("lots").is_err());
        assert!("bridge".parse::<NetMode>().is_err());
    }
}
