//! Test certificates made with openssl: a CA and certificates signed by it, for TLS tests.

use std::path::Path;
use std::process::Command;

use crate::require_tool;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new(require_tool("openssl"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`NAME-ca.pem`) and, signed by it, `NAME-server.pem` (for 127.0.0.1),
/// `NAME-client.pem` and `NAME-peer.pem` (server and client, for 127.0.0.1), each with its
/// `-key.pem`.
pub fn pki(dir: &Path, name: &str) {
    let ca = format!("{name}-ca");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca}"),
            "-keyout",
            &format!("{ca}-key.pem"),
            "-out",
            &format!("{ca}.pem"),
        ],
    );
    for (who, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
        (
            "peer",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        ),
    ] {
        issue(dir, name, &format!("{name}-{who}"), ext);
    }
}

/// Signs `BASE.pem` (with `BASE-key.pem`, CN `BASE`) with the CA `pki` made for `name`;
/// `ext` is openssl's extension text (subjectAltName=..., extendedKeyUsage=...).
pub fn issue(dir: &Path, name: &str, base: &str, ext: &str) {
    issue_for_days(dir, name, base, ext, 2);
}

/// [`issue`], valid for `days` (-1: expired since yesterday).
pub fn issue_for_days(dir: &Path, name: &str, base: &str, ext: &str, days: i32) {
    let ca = format!("{name}-ca");
    std::fs::write(dir.join(format!("{base}.ext")), ext).expect("writing an extension file");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={base}"),
            "-keyout",
            &format!("{base}-key.pem"),
            "-out",
            &format!("{base}.csr"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{base}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}-key.pem"),
            "-CAcreateserial",
            "-days",
            &days.to_string(),
            "-extfile",
            &format!("{base}.ext"),
            "-out",
            &format!("{base}.pem"),
        ],
    );
}

/// Signs an X.509 **v1** certificate `BASE.pem` (CN `cn`, no extensions, as older openssl
/// recipes make them) with the CA `pki` made for `name`. Panics if openssl made another
/// version (newer openssl releases add extensions by default).
pub fn issue_v1(dir: &Path, name: &str, base: &str, cn: &str) {
    let ca = format!("{name}-ca");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{base}-key.pem"),
            "-out",
            &format!("{base}.csr"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{base}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}-key.pem"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{base}.pem"),
        ],
    );
    let text = Command::new(require_tool("openssl"))
        .current_dir(dir)
        .args(["x509", "-noout", "-text", "-in", &format!("{base}.pem")])
        .output()
        .expect("running openssl");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("Version: 1 (0x0)"),
        "openssl made no v1 certificate:\n{text}"
    );
}
