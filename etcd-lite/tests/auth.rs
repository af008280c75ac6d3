//! Authentication and RBAC with the real etcdctl 3.4 and curl: etcd's documented flow (root,
//! a user limited to a prefix, roles, auth enable), every Auth RPC, the permission rules of
//! reads, writes, transactions, watches, leases and administration, tokens on the JSON
//! gateway, a revoked permission ending a watch, and auth state surviving a restart and
//! reaching every member of a cluster.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use test_support::{eventually, require_tool, EtcdLite};

const BIN: &str = env!("CARGO_BIN_EXE_etcd-lite");
/// bcrypt's cheapest cost keeps the tests fast; the flag is what is tested.
const FAST: &[&str] = &["--bcrypt-cost", "4"];

const ROOT: &str = "root:rootpw";
const ALICE: &str = "alice:alicepw";

fn as_user<'a>(user: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--user", user];
    v.extend_from_slice(args);
    v
}

/// etcd's documented set-up, through etcdctl: root, alice with read-write on `/app/` and
/// read on `/shared`, then auth enable (etcdctl adds the root role itself when it is missing).
fn set_up(m: &EtcdLite) {
    assert_eq!(m.ok(&["user", "add", ROOT]), "User root created\n");
    assert_eq!(m.ok(&["user", "add", ALICE]), "User alice created\n");
    assert_eq!(m.ok(&["role", "add", "app"]), "Role app created\n");
    m.ok(&[
        "role",
        "grant-permission",
        "app",
        "readwrite",
        "/app/",
        "--prefix",
    ]);
    m.ok(&["role", "grant-permission", "app", "read", "/shared"]);
    m.ok(&[
        "role",
        "grant-permission",
        "app",
        "write",
        "/drop/",
        "--prefix",
    ]);
    assert_eq!(
        m.ok(&["user", "grant-role", "alice", "app"]),
        "Role app is granted to user alice\n"
    );
    m.ok(&["put", "/shared", "s"]);
    m.ok(&["put", "/other", "o"]);
    assert_eq!(m.ok(&["auth", "enable"]), "Authentication Enabled\n");
}

#[test]
fn etcds_documented_flow_with_etcdctl() {
    require_tool("etcdctl");
    let m = EtcdLite::start(BIN, FAST);
    // Before any user exists, enabling fails with etcd's error.
    assert!(m
        .fails(&["auth", "enable"])
        .contains("etcdserver: root user does not exist"));
    set_up(&m);

    // Anonymous requests are refused; the wrong password too.
    assert!(m
        .fails(&["get", "/app/x"])
        .contains("etcdserver: user name is empty"));
    assert!(m
        .fails(&["put", "/app/x", "1"])
        .contains("user name is empty"));
    assert!(m
        .fails(&as_user("alice:nope", &["get", "/app/x"]))
        .contains("etcdserver: authentication failed, invalid user ID or password"));
    assert!(m
        .fails(&as_user("mallory:x", &["get", "/app/x"]))
        .contains("authentication failed"));

    // Root may do anything.
    assert_eq!(m.ok(&as_user(ROOT, &["put", "/app/x", "1"])), "OK\n");
    assert_eq!(m.ok(&as_user(ROOT, &["get", "/other"])), "/other\no\n");

    // Alice: read and write in her prefix, read only /shared, write only /drop/, nothing else.
    assert_eq!(m.ok(&as_user(ALICE, &["put", "/app/y", "2"])), "OK\n");
    assert_eq!(
        m.ok(&as_user(ALICE, &["get", "/app/", "--prefix"])),
        "/app/x\n1\n/app/y\n2\n"
    );
    assert_eq!(m.ok(&as_user(ALICE, &["get", "/shared"])), "/shared\ns\n");
    let denied = "etcdserver: permission denied";
    assert!(m
        .fails(&as_user(ALICE, &["put", "/shared", "x"]))
        .contains(denied));
    assert!(m
        .fails(&as_user(ALICE, &["get", "/other"]))
        .contains(denied));
    assert!(m
        .fails(&as_user(ALICE, &["put", "/other", "x"]))
        .contains(denied));
    assert!(m
        .fails(&as_user(ALICE, &["del", "/other"]))
        .contains(denied));
    assert!(
        m.fails(&as_user(ALICE, &["get", "/", "--prefix"]))
            .contains(denied),
        "a prefix wider than her grant"
    );
    assert!(m
        .fails(&as_user(ALICE, &["get", "/app/", "--from-key"]))
        .contains(denied));
    assert_eq!(m.ok(&as_user(ALICE, &["put", "/drop/a", "1"])), "OK\n");
    assert!(
        m.fails(&as_user(ALICE, &["get", "/drop/a"]))
            .contains(denied),
        "write-only"
    );
    assert!(
        m.fails(&as_user(ALICE, &["put", "/drop/a", "2", "--prev-kv"]))
            .contains(denied),
        "--prev-kv reads"
    );
    // Transactions: every compare and every op of both branches is checked.
    let txn_ok = "value(\"/app/x\") = \"1\"\n\nput /app/z 3\n\nget /shared\n\n";
    assert_eq!(
        m.etcdctl_stdin(&as_user(ALICE, &["txn"]), Some(txn_ok))
            .status
            .code(),
        Some(0)
    );
    let txn_bad = "value(\"/app/x\") = \"1\"\n\nput /app/z 4\n\nput /other 5\n\n";
    let out = m.etcdctl_stdin(&as_user(ALICE, &["txn"]), Some(txn_bad));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(denied),
        "a denied op in the branch not taken still denies: {out:?}"
    );
    let txn_cmp = "value(\"/other\") = \"o\"\n\nput /app/z 4\n\n\n";
    let out = m.etcdctl_stdin(&as_user(ALICE, &["txn"]), Some(txn_cmp));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(denied),
        "{out:?}"
    );
    assert_eq!(
        m.ok(&as_user(ROOT, &["get", "/other", "--print-value-only"])),
        "o\n"
    );

    // Administration needs root.
    for args in [
        vec!["user", "add", "bob:pw"],
        vec!["user", "list"],
        vec!["role", "add", "r2"],
        vec!["role", "list"],
        vec!["user", "grant-role", "alice", "root"],
        vec!["compaction", "2"],
        vec!["member", "add", "x", "--peer-urls", "http://127.0.0.1:1"],
        vec!["auth", "disable"],
        vec!["defrag"],
    ] {
        assert!(
            m.fails(&as_user(ALICE, &args)).contains(denied),
            "alice may not {args:?}"
        );
    }
    // But she reads her own details.
    assert!(m
        .ok(&as_user(ALICE, &["user", "get", "alice"]))
        .contains("Roles: app"));
    // Root administers: users, roles and their listings.
    m.ok(&as_user(ROOT, &["user", "add", "bob:bobpw"]));
    assert_eq!(
        m.ok(&as_user(ROOT, &["user", "list"])),
        "alice\nbob\nroot\n"
    );
    assert_eq!(m.ok(&as_user(ROOT, &["role", "list"])), "app\nroot\n");
    // A role deleted goes from its users too.
    m.ok(&as_user(ROOT, &["role", "add", "temp"]));
    m.ok(&as_user(ROOT, &["user", "grant-role", "bob", "temp"]));
    assert_eq!(
        m.ok(&as_user(ROOT, &["role", "delete", "temp"])),
        "Role temp deleted\n"
    );
    assert!(!m
        .ok(&as_user(ROOT, &["user", "get", "bob"]))
        .contains("temp"));
    assert!(m
        .fails(&as_user(ROOT, &["role", "get", "temp"]))
        .contains("etcdserver: role name not found"));
    assert!(m
        .fails(&as_user(ROOT, &["role", "delete", "root"]))
        .contains("etcdserver: invalid auth management"));
    let role = m.ok(&as_user(ROOT, &["role", "get", "app"]));
    assert!(role.contains("[/app/, /app0) (prefix /app/)"), "{role}");
    assert!(
        m.fails(&as_user(ROOT, &["user", "delete", "root"]))
            .contains("etcdserver: invalid auth management"),
        "root stays while auth is on"
    );
    assert!(m
        .fails(&as_user(ROOT, &["user", "add", "alice:again"]))
        .contains("etcdserver: user name already exists"));
    assert!(m
        .fails(&as_user(ROOT, &["user", "grant-role", "bob", "nope"]))
        .contains("etcdserver: role name not found"));
    assert!(m
        .fails(&as_user(ROOT, &["user", "revoke-role", "bob", "app"]))
        .contains("etcdserver: role is not granted to the user"));
    assert!(m
        .fails(&as_user(
            ROOT,
            &["role", "revoke-permission", "app", "/nope"]
        ))
        .contains("etcdserver: permission is not granted to the role"));
    // A new password: the old one stops working.
    let out = m.etcdctl_stdin(
        &as_user(ROOT, &["user", "passwd", "bob", "--interactive=false"]),
        Some("newbobpw\n"),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(m
        .fails(&as_user("bob:bobpw", &["get", "/app/x"]))
        .contains("authentication failed"));
    assert!(
        m.fails(&as_user("bob:newbobpw", &["get", "/app/x"]))
            .contains(denied),
        "bob has no role"
    );

    // Revoking takes effect at once.
    m.ok(&as_user(
        ROOT,
        &["role", "revoke-permission", "app", "/app/", "--prefix"],
    ));
    assert!(m
        .fails(&as_user(ALICE, &["get", "/app/x"]))
        .contains(denied));
    m.ok(&as_user(
        ROOT,
        &[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "/app/",
            "--prefix",
        ],
    ));
    m.ok(&as_user(ROOT, &["user", "revoke-role", "alice", "app"]));
    assert!(m
        .fails(&as_user(ALICE, &["get", "/app/x"]))
        .contains(denied));
    m.ok(&as_user(ROOT, &["user", "grant-role", "alice", "app"]));
    assert_eq!(
        m.ok(&as_user(ALICE, &["get", "/app/x", "--print-value-only"])),
        "1\n"
    );
    m.ok(&as_user(ROOT, &["user", "delete", "bob"]));
    assert!(m
        .fails(&as_user("bob:newbobpw", &["get", "/app/x"]))
        .contains("authentication failed"));

    // Off again: anonymous requests work.
    assert_eq!(
        m.ok(&as_user(ROOT, &["auth", "disable"])),
        "Authentication Disabled\n"
    );
    assert_eq!(m.ok(&["get", "/other", "--print-value-only"]), "o\n");
}

/// A token from `/v3/auth/authenticate`.
fn gateway_token(m: &EtcdLite, user: &str, password: &str) -> String {
    let body = format!(r#"{{"name":"{user}","password":"{password}"}}"#);
    let (code, out, _) = m.curl(&["-XPOST", "-d", &body], "/v3/auth/authenticate");
    assert_eq!(code, 200, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    v["token"].as_str().expect("a token").to_string()
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn the_json_gateway_and_v2_need_credentials() {
    require_tool("etcdctl");
    let m = EtcdLite::start(BIN, FAST);
    set_up(&m);
    let range = format!(r#"{{"key":"{}"}}"#, b64("/shared"));
    // Anonymous and wrong tokens are refused, in the gateway's form.
    let (code, out, _) = m.curl(&["-XPOST", "-d", &range], "/v3/kv/range");
    assert_eq!(code, 400, "{out}");
    assert!(out.contains("etcdserver: user name is empty"), "{out}");
    let (code, out, _) = m.curl(
        &["-XPOST", "-d", &range, "-H", "Authorization: nonsense"],
        "/v3/kv/range",
    );
    assert_eq!(code, 401, "{out}");
    assert!(out.contains("etcdserver: invalid auth token"), "{out}");
    let bad = r#"{"name":"alice","password":"nope"}"#;
    let (code, out, _) = m.curl(&["-XPOST", "-d", bad], "/v3/auth/authenticate");
    assert_eq!(code, 400, "{out}");
    assert!(out.contains("authentication failed"), "{out}");
    // A token in the Authorization header.
    let token = gateway_token(&m, "alice", "alicepw");
    let auth = format!("Authorization: {token}");
    let (code, out, _) = m.curl(&["-XPOST", "-d", &range, "-H", &auth], "/v3/kv/range");
    assert_eq!(code, 200, "{out}");
    assert!(out.contains(&b64("s")), "{out}");
    let put = format!(r#"{{"key":"{}","value":"{}"}}"#, b64("/shared"), b64("x"));
    let (code, out, _) = m.curl(&["-XPOST", "-d", &put, "-H", &auth], "/v3/kv/put");
    assert_eq!(code, 403, "{out}");
    assert!(out.contains("etcdserver: permission denied"), "{out}");
    let put = format!(r#"{{"key":"{}","value":"{}"}}"#, b64("/app/g"), b64("x"));
    let (code, out, _) = m.curl(&["-XPOST", "-d", &put, "-H", &auth], "/v3/kv/put");
    assert_eq!(code, 200, "{out}");
    // The Auth API itself over the gateway: status for anyone, users for root only.
    let (code, out, _) = m.curl(&["-XPOST", "-d", "{}"], "/v3/auth/status");
    assert_eq!(code, 200, "{out}");
    assert!(out.contains(r#""enabled":true"#), "{out}");
    let (code, _, _) = m.curl(&["-XPOST", "-d", "{}", "-H", &auth], "/v3/auth/user/list");
    assert_eq!(code, 403);
    let root = format!("Authorization: {}", gateway_token(&m, "root", "rootpw"));
    let (code, out, _) = m.curl(&["-XPOST", "-d", "{}", "-H", &root], "/v3/auth/user/list");
    assert_eq!(
        (code, out.contains(r#""users":["alice","root"]"#)),
        (200, true),
        "{out}"
    );
    // /health, /version and /metrics stay open.
    for path in ["/health", "/version", "/metrics"] {
        assert_eq!(m.curl(&[], path).0, 200, "{path}");
    }

    // v2: HTTP Basic credentials of a v3 user, checked against the same roles (the v2 path
    // /v2dir/a is the v3 key v2dir/a).
    m.ok(&as_user(ROOT, &["role", "add", "v2"]));
    m.ok(&as_user(
        ROOT,
        &[
            "role",
            "grant-permission",
            "v2",
            "readwrite",
            "v2dir/",
            "--prefix",
        ],
    ));
    m.ok(&as_user(
        ROOT,
        &["role", "grant-permission", "v2", "read", "v2ro", "--prefix"],
    ));
    m.ok(&as_user(ROOT, &["user", "grant-role", "alice", "v2"]));
    let (code, out, hdrs) = m.curl(&["-XPUT", "-d", "value=1"], "/v2/keys/v2dir/a");
    assert_eq!(code, 401, "anonymous: {out}");
    assert!(hdrs.contains("Basic realm"), "{hdrs}");
    let (code, _, _) = m.curl(
        &["-u", "alice:nope", "-XPUT", "-d", "value=1"],
        "/v2/keys/v2dir/a",
    );
    assert_eq!(code, 401, "wrong password");
    let (code, out, _) = m.curl(
        &["-u", "alice:alicepw", "-XPUT", "-d", "value=1"],
        "/v2/keys/v2dir/a",
    );
    assert_eq!(code, 201, "{out}");
    let (code, out, _) = m.curl(&["-u", "alice:alicepw"], "/v2/keys/v2dir/a");
    assert_eq!(code, 200, "{out}");
    assert!(out.contains(r#""value":"1""#), "{out}");
    let (code, _, _) = m.curl(
        &["-u", "alice:alicepw", "-XPUT", "-d", "value=1"],
        "/v2/keys/v2ro",
    );
    assert_eq!(code, 401, "read only");
    let (code, _, _) = m.curl(&["-u", "alice:alicepw"], "/v2/keys/");
    assert_eq!(code, 401, "the whole tree is not hers");
    let (code, out, _) = m.curl(&["-u", "root:rootpw"], "/v2/keys/?recursive=true");
    assert_eq!(code, 200, "{out}");
}

#[test]
fn a_revoked_permission_ends_a_watch_and_leases_need_write() {
    require_tool("etcdctl");
    let m = EtcdLite::start(BIN, FAST);
    set_up(&m);
    let mut watch = Command::new(require_tool("etcdctl"))
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &m.endpoint(), "--user", ALICE])
        .args(["watch", "/app/", "--prefix"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl watch");
    let (tx, rx) = mpsc::channel();
    let stdout = watch.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The watch delivers while alice may read (the first put may precede the watch's start:
    // put until one arrives).
    let mut seen = Vec::new();
    let mut n = 0;
    while !seen.iter().any(|l: &String| l.starts_with("/app/w")) {
        n += 1;
        assert!(n < 100, "the watch never delivered: {seen:?}");
        m.ok(&as_user(ROOT, &["put", &format!("/app/w{n}"), "1"]));
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(l);
        }
    }
    m.ok(&as_user(
        ROOT,
        &["role", "revoke-permission", "app", "/app/", "--prefix"],
    ));
    m.ok(&as_user(ROOT, &["put", "/app/secret", "s3cr3t"]));
    // The server cancels the watcher; etcdctl ends. Nothing after the revoke reached it.
    let status = {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = watch.try_wait().expect("wait") {
                break Some(st);
            }
            if std::time::Instant::now() > deadline {
                let _ = watch.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    reader.join().expect("reader");
    seen.extend(rx.try_iter());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut watch.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    assert!(status.is_some(), "the watch was not ended: {seen:?} {err}");
    assert!(
        !seen.iter().any(|l| l.contains("secret")),
        "delivered after the revoke: {seen:?}"
    );
    assert!(err.contains("watch is canceled by the server"), "{err}");
    // A new watch of what she may not read is refused at once.
    let out = m.etcdctl(&as_user(ALICE, &["watch", "/app/", "--prefix"]));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("canceled"),
        "{out:?}"
    );
    m.ok(&as_user(
        ROOT,
        &[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "/app/l",
            "--prefix",
        ],
    ));

    // Leases: revoking needs write on every key attached.
    let lease = |out: &str| out.split_whitespace().nth(1).expect("lease id").to_string();
    let theirs = lease(&m.ok(&as_user(ROOT, &["lease", "grant", "100"])));
    m.ok(&as_user(ROOT, &["put", "/other", "o", "--lease", &theirs]));
    assert!(m
        .fails(&as_user(ALICE, &["lease", "revoke", &theirs]))
        .contains("etcdserver: permission denied"));
    assert!(
        m.fails(&as_user(ALICE, &["lease", "timetolive", &theirs, "--keys"]))
            .contains("etcdserver: permission denied"),
        "the keys' names are not hers to read"
    );
    assert!(m
        .ok(&as_user(ALICE, &["lease", "timetolive", &theirs]))
        .contains("granted with TTL(100s)"));
    let mine = lease(&m.ok(&as_user(ALICE, &["lease", "grant", "100"])));
    m.ok(&as_user(ALICE, &["put", "/app/l1", "v", "--lease", &mine]));
    assert!(m
        .ok(&as_user(ALICE, &["lease", "revoke", &mine]))
        .contains("revoked"));
    assert_eq!(m.ok(&as_user(ROOT, &["get", "/app/l1"])), "");
    assert_eq!(
        m.ok(&as_user(ROOT, &["get", "/other", "--print-value-only"])),
        "o\n"
    );
}

#[test]
fn auth_state_survives_a_restart_and_a_bad_token_flag_stops_the_member() {
    require_tool("etcdctl");
    let mut m = EtcdLite::start(BIN, FAST);
    set_up(&m);
    m.ok(&as_user(ALICE, &["put", "/app/r", "1"]));
    m.kill9();
    m.respawn();
    assert!(m.fails(&["get", "/app/r"]).contains("user name is empty"));
    assert_eq!(
        m.ok(&as_user(ALICE, &["get", "/app/r", "--print-value-only"])),
        "1\n"
    );
    assert!(m
        .fails(&as_user(ALICE, &["get", "/other"]))
        .contains("permission denied"));
    // A token flag that cannot work stops the member with the reason, never starts it open.
    for (flag, says) in [
        (
            "jwt,pub-key=/nonexistent.pem,sign-method=RS256",
            "/nonexistent.pem",
        ),
        ("jwt,pub-key=x.pem", "sign-method"),
        ("bearer", "expected \"simple\" or \"jwt"),
    ] {
        let out = Command::new(BIN)
            .args([
                "--data-dir",
                &m.dir.path().join("bad").display().to_string(),
            ])
            .args(["--auth-token", flag])
            .output()
            .expect("etcd-lite");
        assert!(!out.status.success(), "{flag}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{flag}: {out:?}"
        );
    }
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new(require_tool("openssl"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A key pair `NAME.key` / `NAME.pub` made by openssl genpkey with `args`.
fn key_pair(dir: &std::path::Path, name: &str, args: &[&str]) {
    let key = format!("{name}.key");
    let mut a = vec!["genpkey", "-out", &key];
    a.extend_from_slice(args);
    openssl(dir, &a);
    openssl(
        dir,
        &[
            "pkey",
            "-in",
            &key,
            "-pubout",
            "-out",
            &format!("{name}.pub"),
        ],
    );
}

fn jwt_member(dir: &std::path::Path, keys: &str, method: &str, ttl: &str) -> EtcdLite {
    let flag = format!(
        "jwt,pub-key={d}/{keys}.pub,priv-key={d}/{keys}.key,sign-method={method},ttl={ttl}",
        d = dir.display()
    );
    EtcdLite::start(BIN, &["--bcrypt-cost", "4", "--auth-token", &flag])
}

#[test]
fn jwt_tokens_are_signed_checked_and_expire() {
    require_tool("etcdctl");
    let keys = tempfile::tempdir().expect("a temp dir");
    let d = keys.path();
    key_pair(
        d,
        "a",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    key_pair(
        d,
        "b",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    key_pair(
        d,
        "ec",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    key_pair(d, "ed", &["-algorithm", "ed25519"]);
    let m = jwt_member(d, "a", "RS256", "3s");
    set_up(&m);
    // etcdctl logs in and uses the token it gets.
    assert_eq!(m.ok(&as_user(ALICE, &["put", "/app/j", "1"])), "OK\n");
    assert!(m
        .fails(&as_user(ALICE, &["get", "/other"]))
        .contains("permission denied"));
    let token = gateway_token(&m, "alice", "alicepw");
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let range = format!(r#"{{"key":"{}"}}"#, b64("/app/j"));
    let get = |m: &EtcdLite, token: &str| {
        m.curl(
            &[
                "-XPOST",
                "-d",
                &range,
                "-H",
                &format!("Authorization: {token}"),
            ],
            "/v3/kv/range",
        )
    };
    assert_eq!(get(&m, &token).0, 200);
    // Claims changed to name root: the signature no longer matches.
    let parts: Vec<&str> = token.split('.').collect();
    let forged_claims = {
        use base64::Engine;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = String::from_utf8(b.decode(parts[1]).expect("base64")).expect("utf-8");
        b.encode(claims.replace("alice", "root"))
    };
    let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
    let (code, out, _) = get(&m, &forged);
    assert_eq!(code, 401, "{out}");
    assert!(out.contains("etcdserver: invalid auth token"), "{out}");
    // A member with another key pair refuses the first one's tokens, though alice exists there.
    let other = jwt_member(d, "b", "RS256", "5m");
    set_up(&other);
    assert_eq!(get(&other, &token).0, 401, "signed with another key");
    assert_eq!(
        get(&other, &gateway_token(&other, "alice", "alicepw")).0,
        200
    );
    // ES256 and EdDSA keys work too.
    for (keys, method) in [("ec", "ES256"), ("ed", "EdDSA")] {
        let m = jwt_member(d, keys, method, "5m");
        set_up(&m);
        assert_eq!(
            m.ok(&as_user(ALICE, &["put", "/app/k", "1"])),
            "OK\n",
            "{method}"
        );
        assert_eq!(
            get(&m, &gateway_token(&m, "alice", "alicepw")).0,
            200,
            "{method}"
        );
    }
    // The first token expires (ttl=3s).
    eventually(Duration::from_secs(15), "the token to expire", || {
        get(&m, &token).0 == 401
    });
}

#[test]
fn a_cluster_shares_users_roles_and_tokens_and_a_lagging_member_catches_up() {
    require_tool("etcdctl");
    let mut ms = test_support::start_cluster_env(
        BIN,
        3,
        &["--bcrypt-cost", "4", "--snapshot-count", "50"],
        &[("RUST_LOG", "etcd_lite=info")],
    );
    eventually(Duration::from_secs(20), "a leader", || {
        ms[0].try_etcdctl(&["put", "warm", "up"]).is_ok()
    });
    // The third member is down while auth is set up through the first (once the other two
    // have a leader: the third may have been it).
    ms[2].kill9();
    eventually(Duration::from_secs(20), "a leader of two", || {
        ms[0].try_etcdctl(&["put", "warm", "again"]).is_ok()
    });
    set_up(&ms[0]);
    // Checked through the second.
    let denied = "permission denied";
    assert!(ms[1]
        .fails(&["get", "/app/x"])
        .contains("user name is empty"));
    assert_eq!(ms[1].ok(&as_user(ALICE, &["put", "/app/c", "1"])), "OK\n");
    assert!(ms[1]
        .fails(&as_user(ALICE, &["get", "/other"]))
        .contains(denied));
    // A token made by one member works on another.
    let token = gateway_token(&ms[0], "alice", "alicepw");
    let range = format!(r#"{{"key":"{}"}}"#, b64("/app/c"));
    let auth = format!("Authorization: {token}");
    let (code, out, _) = ms[1].curl(&["-XPOST", "-d", &range, "-H", &auth], "/v3/kv/range");
    assert_eq!(code, 200, "{out}");
    // Enough writes for snapshots, then the third member comes back: it learns auth from the
    // leader's snapshot.
    for i in 0..120 {
        ms[0].ok(&as_user(ROOT, &["put", &format!("/fill/{i}"), "x"]));
    }
    ms[2].respawn();
    eventually(
        Duration::from_secs(30),
        "the third member catches up",
        || {
            ms[2]
                .try_etcdctl(&["--user", ALICE, "get", "/app/c", "--print-value-only"])
                .is_ok_and(|o| o == "1\n")
        },
    );
    assert!(ms[2]
        .fails(&["get", "/app/c"])
        .contains("user name is empty"));
    assert!(ms[2]
        .fails(&as_user(ALICE, &["get", "/other"]))
        .contains(denied));
    assert!(
        ms[2].log().contains("installed a snapshot"),
        "caught up by a snapshot"
    );
}

#[test]
fn a_client_certificate_names_its_user() {
    require_tool("etcdctl");
    let pki_dir = tempfile::tempdir().expect("a temp dir");
    let d = pki_dir.path();
    test_support::pki::pki(d, "a");
    let file = |f: &str| d.join(f).display().to_string();
    let args = [
        "--bcrypt-cost".to_string(),
        "4".into(),
        "--cert-file".into(),
        file("a-server.pem"),
        "--key-file".into(),
        file("a-server-key.pem"),
        "--client-cert-auth".into(),
        "--trusted-ca-file".into(),
        file("a-ca.pem"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let m = EtcdLite::start_tls(BIN, &args);
    let tls = [
        "--endpoints".to_string(),
        format!("https://127.0.0.1:{}", m.port),
        "--cacert".into(),
        file("a-ca.pem"),
        "--cert".into(),
        file("a-client.pem"),
        "--key".into(),
        file("a-client-key.pem"),
    ];
    let run = |extra: &[&str]| {
        let out = Command::new(require_tool("etcdctl"))
            .env("ETCDCTL_API", "3")
            .args(&tls)
            .args(extra)
            .output()
            .expect("etcdctl");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    for cmd in [
        vec!["user", "add", ROOT],
        vec!["user", "add", "a-client", "--no-password"],
        vec!["role", "add", "certs"],
        vec![
            "role",
            "grant-permission",
            "certs",
            "readwrite",
            "/cert/",
            "--prefix",
        ],
        vec!["user", "grant-role", "a-client", "certs"],
        vec!["auth", "enable"],
    ] {
        let (ok, out) = run(&cmd);
        assert!(ok, "{cmd:?}: {out}");
    }
    // No --user: the certificate's CN (a-client) is the user.
    let (ok, out) = run(&["put", "/cert/a", "1"]);
    assert!(ok, "{out}");
    let (ok, out) = run(&["put", "/other", "1"]);
    assert!(!ok && out.contains("permission denied"), "{out}");
    // A user without a password cannot log in with one.
    let (ok, out) = run(&["--user", "a-client:guess", "get", "/cert/a"]);
    assert!(!ok && out.contains("authentication failed"), "{out}");
    // Root, by password over the same connection.
    let (ok, out) = run(&["--user", ROOT, "get", "/cert/a", "--print-value-only"]);
    assert!(ok && out == "1\n", "{out}");
}

/// v2's auth API (python-etcd and other v2 clients) over the one model: users and roles made
/// through v2 are v3's, v2 paths are v3 key ranges, and enabling through v2 does what etcd v2
/// does (root gets the root role, a guest role appears).
#[test]
fn the_v2_auth_api_is_a_view_of_v3_users_and_roles() {
    let m = EtcdLite::start(BIN, FAST);
    let put = |creds: Option<&str>, path: &str, body: &str| {
        let mut args = vec!["-XPUT", "-d", body];
        if let Some(c) = creds {
            args.extend(["-u", c]);
        }
        m.curl(&args, path)
    };
    let get = |creds: Option<&str>, path: &str| match creds {
        Some(c) => m.curl(&["-u", c], path),
        None => m.curl(&[], path),
    };
    // Enabling without a root user: v2's refusal.
    let (code, body, _) = put(None, "/v2/auth/enable", "");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("No root user available"), "{body}");
    let (code, body, _) = put(
        None,
        "/v2/auth/users/root",
        r#"{"user":"root","password":"rootpw","roles":[]}"#,
    );
    assert_eq!(
        (code, body.as_str()),
        (201, r#"{"user":"root","roles":[]}"#)
    );
    let (code, _, _) = put(None, "/v2/auth/enable", "");
    assert_eq!(code, 200);
    let (_, body, _) = get(None, "/v2/auth/enable");
    assert_eq!(body, r#"{"enabled":true}"#);
    // Anonymous administration is refused; v3 sees the same state.
    let (code, _, _) = get(None, "/v2/auth/users");
    assert_eq!(code, 401);
    assert_eq!(
        m.ok(&["--user", ROOT, "user", "get", "root"]),
        "User: root\nRoles: root\n"
    );
    let (_, body, _) = get(Some(ROOT), "/v2/auth/roles");
    assert_eq!(
        body,
        r#"{"roles":[{"role":"guest","permissions":{"kv":{"read":["*"],"write":["*"]}}},{"role":"root","permissions":{"kv":{"read":["/*"],"write":["/*"]}}}]}"#
    );

    // A role with v2 paths is a v3 role with ranges; grant and revoke change it.
    let (code, body, _) = put(
        Some(ROOT),
        "/v2/auth/roles/app",
        r#"{"role":"app","permissions":{"kv":{"read":["/app/*","/shared"],"write":["/app/*"]}}}"#,
    );
    assert_eq!(code, 201, "{body}");
    let v3 = m.ok(&["--user", ROOT, "role", "get", "app"]);
    assert!(v3.contains("[app/, app0) (prefix app/)"), "{v3}");
    assert!(v3.contains("shared"), "{v3}");
    let (code, body, _) = put(
        Some(ROOT),
        "/v2/auth/roles/app",
        r#"{"role":"app","revoke":{"kv":{"read":["/shared"]}}}"#,
    );
    assert_eq!(code, 200);
    assert_eq!(
        body,
        r#"{"role":"app","permissions":{"kv":{"read":["/app/*"],"write":["/app/*"]}}}"#
    );
    // A user with that role writes under /app/ and nowhere else, in v2 and in v3.
    let (code, body, _) = put(
        Some(ROOT),
        "/v2/auth/users/alice",
        r#"{"user":"alice","password":"alicepw","roles":["app"]}"#,
    );
    assert_eq!(
        (code, body.as_str()),
        (201, r#"{"user":"alice","roles":["app"]}"#)
    );
    let (code, _, _) = m.curl(&["-u", ALICE, "-XPUT", "-d", "value=1"], "/v2/keys/app/x");
    assert_eq!(code, 201);
    let (code, _, _) = m.curl(&["-u", ALICE, "-XPUT", "-d", "value=1"], "/v2/keys/other");
    assert_eq!(code, 401);
    assert_eq!(
        m.ok(&["--user", ALICE, "get", "app/x", "--print-value-only"]),
        "1\n"
    );
    // Bad input: an unknown role, a user or role that is not there, a path v2 cannot grant.
    let (code, body, _) = put(
        Some(ROOT),
        "/v2/auth/users/bob",
        r#"{"user":"bob","password":"b","roles":["nope"]}"#,
    );
    assert_eq!(
        (code, body.as_str()),
        (404, r#"{"message":"auth: Role nope does not exist."}"#)
    );
    let (code, _, _) = get(Some(ROOT), "/v2/auth/users/bob");
    assert_eq!(code, 404, "a failed create leaves no user");
    let (code, body, _) = put(
        Some(ROOT),
        "/v2/auth/roles/bad",
        r#"{"role":"bad","permissions":{"kv":{"read":["/a*b"]}}}"#,
    );
    assert_eq!(code, 400, "{body}");
    let (code, _, _) = m.curl(&["-u", ROOT, "-XDELETE"], "/v2/auth/roles/root");
    assert_eq!(code, 403);
    // Users' roles change by grant and revoke; delete removes them from v3 too.
    let (code, body, _) = put(
        Some(ROOT),
        "/v2/auth/users/alice",
        r#"{"user":"alice","grant":["guest"],"revoke":["app"]}"#,
    );
    assert_eq!(
        (code, body.as_str()),
        (200, r#"{"user":"alice","roles":["guest"]}"#)
    );
    let (code, _, _) = m.curl(&["-u", ROOT, "-XDELETE"], "/v2/auth/users/alice");
    assert_eq!(code, 200);
    assert!(!m.ok(&["--user", ROOT, "user", "list"]).contains("alice"));
    let (code, _, _) = m.curl(&["-u", ROOT, "-XDELETE"], "/v2/auth/enable");
    assert_eq!(code, 200);
    let (_, body, _) = get(None, "/v2/auth/enable");
    assert_eq!(body, r#"{"enabled":false}"#);
}
