//! Authentication and RBAC with the real etcdctl 3.4 and curl: etcd's documented flow (root,
//! a user limited to a prefix, roles, auth enable), every Auth RPC, the permission rules of
//! reads, writes, transactions, watches, leases and administration, tokens on the JSON
//! gateway, a revoked permission ending a watch, and auth state surviving a restart and
//! reaching every member of a cluster.

use test_support::{require_tool, EtcdLite};

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
