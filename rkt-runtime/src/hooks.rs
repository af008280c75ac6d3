//! The spec's lifecycle hooks: each one a program run with the container's state on stdin.
//!
//! Where each kind runs (see ARCHITECTURE.md): prestart and createRuntime by `rkt create` in the
//! runtime's namespaces once the container's namespaces exist; createContainer by the container's
//! init in its mount namespace before pivot_root; startContainer by init after `rkt start`,
//! before exec; poststart by `rkt start`; poststop by `rkt delete`. A failing hook before the
//! process starts fails the operation; poststart and poststop failures are logged.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;
use serde::Serialize;

use crate::error::{Result, RuntimeError};

/// The state document a hook reads on stdin.
#[derive(Debug, Serialize)]
pub struct HookState<'a> {
    #[serde(rename = "ociVersion")]
    pub oci_version: &'static str,
    pub id: &'a str,
    pub status: &'a str,
    pub pid: i32,
    pub bundle: &'a std::path::Path,
    pub annotations: &'a std::collections::HashMap<String, String>,
}

impl HookState<'_> {
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn fail(h: &Hook, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Hook {
        path: h.path().clone(),
        reason: reason.into(),
    }
}

/// Runs one hook to completion (or its timeout), feeding it `state`.
pub fn run_one(h: &Hook, state: &str) -> Result<()> {
    let mut cmd = Command::new(h.path());
    if let Some(args) = h.args() {
        if let Some((arg0, rest)) = args.split_first() {
            cmd.arg0(arg0).args(rest);
        }
    }
    cmd.env_clear();
    for kv in h.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| fail(h, e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine: ignore EPIPE.
        let _ = stdin.write_all(state.as_bytes());
    }
    let deadline = h
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(fail(h, format!("exited with {st}"))),
            Ok(None) => {}
            Err(e) => return Err(fail(h, e.to_string())),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(h, "timed out"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs hooks in order, stopping at the first failure.
pub fn run_all(hooks: Option<&Vec<Hook>>, state: &str) -> Result<()> {
    hooks
        .into_iter()
        .flatten()
        .try_for_each(|h| run_one(h, state))
}

/// Runs every hook, logging failures (poststart, poststop).
pub fn run_all_logged(kind: &str, hooks: Option<&Vec<Hook>>, state: &str) {
    for h in hooks.into_iter().flatten() {
        if let Err(e) = run_one(h, state) {
            tracing::warn!(hook = kind, error = %e, "hook failed");
            eprintln!("rkt: warning: {kind} {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(json: &str) -> Hook {
        serde_json::from_str(json).expect("hook parses")
    }

    #[test]
    fn hooks_get_state_args_and_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let h = hook(&format!(
            r#"{{"path":"/bin/sh","args":["sh","-c","cat > {0}; echo \"$0 $1 $X\" >> {0}","zero","one"],"env":["X=y"]}}"#,
            out.display()
        ));
        run_one(&h, r#"{"id":"c"}"#).expect("hook runs");
        let text = std::fs::read_to_string(&out).expect("output");
        assert_eq!(text, "{\"id\":\"c\"}zero one y\n");
    }

    #[test]
    fn failing_and_slow_hooks_are_errors() {
        let f = hook(r#"{"path":"/bin/false"}"#);
        assert!(run_one(&f, "{}").is_err());
        let slow = hook(r#"{"path":"/bin/sleep","args":["sleep","5"],"timeout":1}"#);
        let t = Instant::now();
        let e = run_one(&slow, "{}").expect_err("times out");
        assert!(e.to_string().contains("timed out"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(4));
        let missing = hook(r#"{"path":"/no/such/hook"}"#);
        assert!(run_one(&missing, "{}").is_err());
    }
}
