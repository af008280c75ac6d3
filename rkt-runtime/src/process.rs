//! The container process's own settings, made through [`Syscall`] before `create` reports the
//! container ready (so that whatever the host refuses fails `create`, as in runc): the OOM
//! score, resource limits, and credentials with capabilities in the order the kernel needs.

use std::path::{Path, PathBuf};

use caps::CapSet;
use oci_spec::runtime::Process;

use crate::error::{failed, Result, RuntimeError};
use crate::syscall::Syscall;

/// process.oomScoreAdj, written by the helper while it is still root of the host.
pub fn set_oom_score(sys: &dyn Syscall, process: &Process) -> Result<()> {
    let Some(adj) = process.oom_score_adj() else {
        return Ok(());
    };
    let p = Path::new("/proc/self/oom_score_adj");
    sys.write_file(p, &adj.to_string())
        .map_err(|e| RuntimeError::Init(format!("setting oomScoreAdj to {adj}: {e}")))
}

fn rlimit_resource(name: &str) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource as R;
    Some(match name {
        "RLIMIT_AS" => R::RLIMIT_AS,
        "RLIMIT_CORE" => R::RLIMIT_CORE,
        "RLIMIT_CPU" => R::RLIMIT_CPU,
        "RLIMIT_DATA" => R::RLIMIT_DATA,
        "RLIMIT_FSIZE" => R::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => R::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => R::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => R::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => R::RLIMIT_NICE,
        "RLIMIT_NOFILE" => R::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => R::RLIMIT_NPROC,
        "RLIMIT_RSS" => R::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => R::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => R::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => R::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => R::RLIMIT_STACK,
        _ => return None,
    })
}

pub fn set_rlimits(sys: &dyn Syscall, process: &Process) -> Result<()> {
    for r in process.rlimits().iter().flatten() {
        let name = serde_json::to_value(r.typ())
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let res = rlimit_resource(&name)
            .ok_or_else(|| RuntimeError::Unsupported(format!("rlimit {name}")))?;
        sys.setrlimit(res, r.soft(), r.hard())
            .map_err(failed(format!("setrlimit {name}")))?;
    }
    Ok(())
}

fn cap_set(list: &Option<oci_spec::runtime::Capabilities>) -> caps::CapsHashSet {
    let mut out = caps::CapsHashSet::new();
    for c in list.iter().flatten() {
        let name = serde_json::to_value(c)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        match name.parse::<caps::Capability>() {
            Ok(cap) => {
                out.insert(cap);
            }
            // A capability this kernel or caps crate does not know cannot be granted anyway
            // (runc warns and goes on too).
            Err(_) => eprintln!("rkt: warning: unknown capability {name}, skipped"),
        }
    }
    out
}

/// Checks what the kernel would refuse later with a less useful message: an ambient
/// capability must be permitted and inheritable, an effective one permitted.
fn check_capabilities(c: &oci_spec::runtime::LinuxCapabilities) -> Result<()> {
    let (permitted, inheritable) = (cap_set(c.permitted()), cap_set(c.inheritable()));
    let mut bad = Vec::new();
    for cap in cap_set(c.ambient()) {
        if !permitted.contains(&cap) || !inheritable.contains(&cap) {
            bad.push(format!(
                "ambient {cap} is not in both permitted and inheritable"
            ));
        }
    }
    for cap in cap_set(c.effective()) {
        if !permitted.contains(&cap) {
            bad.push(format!("effective {cap} is not in permitted"));
        }
    }
    if bad.is_empty() {
        return Ok(());
    }
    bad.sort();
    Err(RuntimeError::BadConfig {
        path: PathBuf::from("config.json"),
        reason: format!("process.capabilities: {}", bad.join("; ")),
    })
}

fn capsys(e: String) -> RuntimeError {
    RuntimeError::Init(format!("setting capabilities: {e}"))
}

/// Bounding set, supplementary groups, gid, uid, then the capability sets and no_new_privs:
/// the bounding set and the ids change while we still have CAP_SETPCAP/CAP_SETUID (keepcaps
/// carries permitted across setuid), and capset(2) wants effective ⊆ permitted at every step,
/// so inheritable, effective, permitted, then ambient.
pub fn set_credentials(sys: &dyn Syscall, process: &Process) -> Result<()> {
    let wanted = process.capabilities().clone().unwrap_or_default();
    check_capabilities(&wanted)?;
    let bounding = cap_set(wanted.bounding());
    for cap in caps::all() {
        if !bounding.contains(&cap) && sys.has_bounding(cap) {
            sys.drop_bounding(cap).map_err(capsys)?;
        }
    }
    let user = process.user();
    sys.set_keepcaps()
        .map_err(failed("keeping capabilities across setuid"))?;
    let gids: Vec<u32> = user.additional_gids().clone().unwrap_or_default();
    sys.setgroups(&gids).map_err(failed("setgroups"))?;
    sys.setgid(user.gid()).map_err(failed("setgid"))?;
    sys.setuid(user.uid()).map_err(failed("setuid"))?;
    for (set, list) in [
        (CapSet::Inheritable, wanted.inheritable()),
        (CapSet::Effective, wanted.effective()),
        (CapSet::Permitted, wanted.permitted()),
        (CapSet::Ambient, wanted.ambient()),
    ] {
        sys.set_caps(set, &cap_set(list)).map_err(|e| {
            capsys(format!(
                "{set:?}: {e} (does rkt itself hold every capability asked for?)"
            ))
        })?;
    }
    if process.no_new_privileges().unwrap_or(false) {
        sys.set_no_new_privs().map_err(failed("no_new_privs"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::Recorder;

    fn process(json: serde_json::Value) -> Process {
        let mut base = serde_json::json!({
            "args": ["sh"], "cwd": "/", "user": {"uid": 1000, "gid": 100, "additionalGids": [5]}
        });
        for (k, v) in json.as_object().expect("object") {
            base[k] = v.clone();
        }
        serde_json::from_value(base).expect("process")
    }

    #[test]
    fn ids_change_between_the_bounding_set_and_the_other_sets() {
        let p = process(serde_json::json!({
            "capabilities": {
                "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_KILL"],
                "permitted": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "inheritable": ["CAP_NET_BIND_SERVICE"],
                "ambient": ["CAP_NET_BIND_SERVICE"]
            },
            "noNewPrivileges": true
        }));
        let sys = Recorder::default();
        set_credentials(&sys, &p).expect("credentials");
        let drop = sys.at("drop_bounding");
        assert!(!sys.lines().iter().any(|l| l == "drop_bounding CAP_KILL"));
        let (keep, groups, gid, uid) = (
            sys.at("set_keepcaps"),
            sys.at("setgroups [5]"),
            sys.at("setgid 100"),
            sys.at("setuid 1000"),
        );
        let (inh, eff, per, amb) = (
            sys.at("set_caps Inheritable CAP_NET_BIND_SERVICE"),
            sys.at("set_caps Effective CAP_KILL"),
            sys.at("set_caps Permitted CAP_KILL,CAP_NET_BIND_SERVICE"),
            sys.at("set_caps Ambient CAP_NET_BIND_SERVICE"),
        );
        assert!(drop < keep && keep < groups && groups < gid && gid < uid);
        assert!(uid < inh && inh < eff && eff < per && per < amb);
        assert_eq!(
            sys.lines().last().map(String::as_str),
            Some("set_no_new_privs")
        );
    }

    #[test]
    fn capabilities_the_kernel_would_refuse_are_refused_first_by_name() {
        // runc's own `runc spec` asks for ambient capabilities without inheritable ones.
        let p = process(serde_json::json!({
            "capabilities": {
                "bounding": ["CAP_KILL"],
                "effective": ["CAP_KILL", "CAP_SYS_ADMIN"],
                "permitted": ["CAP_KILL"],
                "ambient": ["CAP_KILL"]
            }
        }));
        let sys = Recorder::default();
        let err = set_credentials(&sys, &p).expect_err("refused");
        let msg = err.to_string();
        assert!(
            msg.contains("ambient CAP_KILL is not in both permitted and inheritable"),
            "{msg}"
        );
        assert!(
            msg.contains("effective CAP_SYS_ADMIN is not in permitted"),
            "{msg}"
        );
        assert!(sys.lines().is_empty(), "nothing was changed first");
    }

    #[test]
    fn a_capability_the_host_cannot_grant_fails_with_the_set_named() {
        let p = process(serde_json::json!({
            "capabilities": {"bounding": ["CAP_KILL"], "permitted": ["CAP_KILL"]}
        }));
        let sys = Recorder::default();
        sys.fail("set_caps Permitted", nix::errno::Errno::EPERM);
        let err = set_credentials(&sys, &p).expect_err("capset fails");
        assert!(err.to_string().contains("Permitted"), "{err}");
    }

    #[test]
    fn oom_score_and_rlimits_are_written() {
        let p = process(serde_json::json!({
            "oomScoreAdj": 500,
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 2048}]
        }));
        let sys = Recorder::default();
        set_oom_score(&sys, &p).expect("oom");
        set_rlimits(&sys, &p).expect("rlimits");
        assert_eq!(
            sys.lines(),
            vec![
                "write /proc/self/oom_score_adj 500",
                "setrlimit RLIMIT_NOFILE 1024 2048"
            ]
        );
    }
}
