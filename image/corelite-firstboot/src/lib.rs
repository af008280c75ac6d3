//! corelite's node configuration: the first-boot config a node applies (`config`), the
//! cluster PKI behind its TLS (`pki`), and the generator that writes a whole cluster's configs
//! on the operator's machine (`cluster`, the `corelite-config` command).

pub mod cluster;
pub mod config;
pub mod etcd_auth;
pub mod pki;
