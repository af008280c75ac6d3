//! Seccomp filters from the spec's `linux.seccomp`, compiled with libseccomp.
//!
//! Built before the container's process drops privileges and loaded as late as the spec allows
//! (see [`crate::linux`]): with no_new_privs just before exec, without it while rkt still has
//! CAP_SYS_ADMIN. Syscall names libseccomp does not know are skipped with a warning, as runc
//! does, so that profiles written for newer kernels still load.

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompArg};

use crate::error::{Result, RuntimeError};

fn name_of<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

fn err(what: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Seccomp(what.to_string())
}

fn action(name: &str, errno: Option<u32>) -> Result<ScmpAction> {
    let errno = errno.map_or(libc::EPERM, |e| e as i32);
    let value = match name {
        "SCMP_ACT_ERRNO" => Some(errno),
        "SCMP_ACT_TRACE" => Some(errno),
        _ => None,
    };
    if name == "SCMP_ACT_NOTIFY" {
        return Err(err(
            "SCMP_ACT_NOTIFY needs a seccomp listener, which rkt does not support",
        ));
    }
    ScmpAction::from_str(name, value).map_err(|e| err(format!("action {name:?}: {e}")))
}

fn compare(a: &LinuxSeccompArg) -> Result<ScmpArgCompare> {
    let op = name_of(&a.op());
    let index = u32::try_from(a.index())
        .ok()
        .filter(|i| *i < 6)
        .ok_or_else(|| err(format!("argument index {} (syscalls have 6)", a.index())))?;
    let (op, datum) = match op.as_str() {
        "SCMP_CMP_MASKED_EQ" => (
            ScmpCompareOp::MaskedEqual(a.value()),
            a.value_two().unwrap_or(0),
        ),
        other => (
            other
                .parse::<ScmpCompareOp>()
                .map_err(|e| err(format!("operator {other:?}: {e}")))?,
            a.value(),
        ),
    };
    Ok(ScmpArgCompare::new(index, op, datum))
}

/// Compiles the spec's filter (not loaded yet).
pub fn build(spec: &LinuxSeccomp) -> Result<ScmpFilterContext> {
    let default = action(&name_of(&spec.default_action()), spec.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default).map_err(err)?;
    // rkt sets no_new_privs itself when the spec asks; libseccomp must not force it.
    ctx.set_ctl_nnp(false).map_err(err)?;
    for arch in spec.architectures().iter().flatten() {
        let name = name_of(arch);
        let a: ScmpArch = name
            .parse()
            .map_err(|e| err(format!("architecture {name:?}: {e}")))?;
        if !ctx.is_arch_present(a).map_err(err)? {
            ctx.add_arch(a).map_err(err)?;
        }
    }
    for flag in spec.flags().iter().flatten() {
        match name_of(flag).as_str() {
            "SECCOMP_FILTER_FLAG_LOG" => {
                ctx.set_ctl_log(true).map_err(err)?;
            }
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => {
                ctx.set_ctl_ssb(true).map_err(err)?;
            }
            "SECCOMP_FILTER_FLAG_TSYNC" => {
                ctx.set_ctl_tsync(true).map_err(err)?;
            }
            other => return Err(err(format!("unknown flag {other:?}"))),
        }
    }
    if spec.listener_path().is_some() {
        return Err(err("listenerPath (seccomp notify) is not supported"));
    }
    for rule in spec.syscalls().iter().flatten() {
        let act = action(&name_of(&rule.action()), rule.errno_ret())?;
        if act == default {
            continue; // libseccomp refuses rules that repeat the default action
        }
        let conds: Vec<ScmpArgCompare> = rule
            .args()
            .iter()
            .flatten()
            .map(compare)
            .collect::<Result<_>>()?;
        // Conditions on distinct arguments must all hold (one rule); several conditions on the
        // same argument are alternatives (one rule each), as runc reads them.
        let mut indexes: Vec<usize> = rule.args().iter().flatten().map(|a| a.index()).collect();
        indexes.sort_unstable();
        let repeated = indexes.windows(2).any(|w| w[0] == w[1]);
        for name in rule.names() {
            let sc = match ScmpSyscall::from_name(name) {
                Ok(sc) => sc,
                Err(_) => {
                    tracing::warn!(syscall = %name, "unknown syscall in seccomp profile, skipped");
                    continue;
                }
            };
            let res = if conds.is_empty() {
                ctx.add_rule(act, sc)
            } else if repeated {
                conds
                    .iter()
                    .try_for_each(|c| ctx.add_rule_conditional(act, sc, &[*c]).map(|_| ()))
                    .map(|()| &mut ctx)
            } else {
                ctx.add_rule_conditional(act, sc, &conds)
            };
            res.map_err(|e| err(format!("rule for {name}: {e}")))?;
        }
    }
    Ok(ctx)
}

/// Loads a compiled filter into the calling thread.
pub fn load(ctx: &ScmpFilterContext) -> Result<()> {
    ctx.load()
        .map_err(|e| err(format!("loading the filter: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).expect("profile parses")
    }

    #[test]
    fn profiles_compile_and_unknown_syscalls_are_skipped() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86"],
                "syscalls":[{"names":["mkdir","mkdirat","no_such_call"],"action":"SCMP_ACT_ERRNO","errnoRet":1},
                            {"names":["personality"],"action":"SCMP_ACT_ERRNO",
                             "args":[{"index":0,"value":8,"op":"SCMP_CMP_NE"},{"index":0,"value":0,"op":"SCMP_CMP_NE"}]},
                            {"names":["clone"],"action":"SCMP_ACT_ERRNO",
                             "args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]},
                            {"names":["getpid"],"action":"SCMP_ACT_ALLOW"}]}"#,
        );
        let ctx = build(&p).expect("compiles");
        let mut out = tempfile::tempfile().expect("temp file");
        ctx.export_bpf(&out).expect("exports");
        use std::io::Seek;
        let len = out.seek(std::io::SeekFrom::End(0)).expect("seek");
        // Every BPF instruction is 8 bytes; a filter with rules has many.
        assert!(len > 8 * 10 && len.is_multiple_of(8), "{len}");
    }

    #[test]
    fn bad_profiles_are_refused() {
        let bad_op = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO",
                "args":[{"index":7,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
        );
        assert!(build(&bad_op).is_err());
        let notify = profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#);
        assert!(build(&notify).is_err());
    }
}
