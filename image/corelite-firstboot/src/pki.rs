//! The cluster's PKI: a CA made on the operator's machine, certificates it signs for each node
//! (server and client use: etcd-lite's client and peer ports, fleetd's API, fleetd's own
//! connection to etcd-lite) and for the operator, and the checks a node runs on what its
//! first-boot config hands it (is it a certificate, is it current, is it for this node, does
//! the key match, did our CA sign it).

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// A PEM certificate and its PEM private key.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: String,
    pub key: String,
}

/// A certificate authority that can sign.
pub struct Ca {
    pub pair: Pair,
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn err(e: rcgen::Error) -> String {
    e.to_string()
}

/// Validity from an hour ago (clocks a little behind still accept it) for `days`.
fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
}

impl Ca {
    /// A new CA named `name`, valid for `days`.
    pub fn generate(name: &str, days: u32) -> Result<Ca, String> {
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, days);
        let cert = params.self_signed(&key).map_err(err)?;
        Ok(Ca {
            pair: Pair {
                cert: cert.pem(),
                key: key.serialize_pem(),
            },
            cert,
            key,
        })
    }

    /// Signs a certificate for `common_name` with these subject alternative names (IP
    /// addresses or DNS names), usable as a TLS server and as a TLS client when `server`, else
    /// as a client only.
    pub fn issue(
        &self,
        common_name: &str,
        names: &[String],
        server: bool,
        days: u32,
    ) -> Result<Pair, String> {
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(err)?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = if server {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, days);
        let cert = params.signed_by(&key, &self.cert, &self.key).map_err(err)?;
        Ok(Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// What a node's certificate is for, read from its PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub common_name: String,
    pub ips: Vec<IpAddr>,
    pub dns: Vec<String>,
    /// Validity, seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    pub is_ca: bool,
}

fn der_of(pem: &str, what: &str) -> Result<Vec<u8>, String> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| format!("not a PEM {what}: {e}"))?;
    if p.label != "CERTIFICATE" {
        return Err(format!("a PEM {} block, not a CERTIFICATE", p.label));
    }
    Ok(p.contents)
}

/// Parses a PEM certificate.
pub fn cert_info(pem: &str) -> Result<CertInfo, String> {
    use x509_parser::extensions::GeneralName;
    let der = der_of(pem, "certificate")?;
    let (_, c) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let common_name = c
        .subject()
        .iter_common_name()
        .next()
        .and_then(|n| n.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let (mut ips, mut dns) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = c.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::IPAddress(b) => match b.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).expect("4 bytes"))),
                    16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).expect("16 bytes"))),
                    _ => {}
                },
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        common_name,
        ips,
        dns,
        not_before: c.validity().not_before.timestamp(),
        not_after: c.validity().not_after.timestamp(),
        is_ca: c.is_ca(),
    })
}

fn when(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .map(|d| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                d.year(),
                u8::from(d.month()),
                d.day(),
                d.hour(),
                d.minute(),
                d.second()
            )
        })
        .unwrap_or_else(|_| t.to_string())
}

/// What is wrong with the clock (`now`, seconds since the epoch) for a certificate, if anything:
/// before its start (the clock is behind) or after its end (expired, or the clock is ahead).
pub fn clock_problem(cert: &CertInfo, now: i64) -> Option<String> {
    if now < cert.not_before {
        Some(format!(
            "this node's clock says {}, but its certificate is only valid from {}: the clock is behind (see timedatectl timesync-status)",
            when(now),
            when(cert.not_before)
        ))
    } else if now > cert.not_after {
        Some(format!(
            "this node's clock says {}, past its certificate's end ({}): the certificate expired (replace it) or the clock is ahead",
            when(now),
            when(cert.not_after)
        ))
    } else {
        None
    }
}

/// Which field of the config a problem is in, and what it is.
pub type FieldError = (&'static str, String);

/// Checks a node's TLS material against each other, the clock (`now`, seconds since the epoch)
/// and the node's address: the CA is a current CA certificate, the node's certificate is
/// current, signed by that CA and names `ip`, and the key is the certificate's.
pub fn check_node(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    ip: Option<IpAddr>,
    now: i64,
) -> Result<CertInfo, FieldError> {
    let current = |field: &'static str, i: &CertInfo| -> Result<(), FieldError> {
        if now < i.not_before {
            return Err((
                field,
                format!(
                    "not valid before {}, and this node's clock says {}: the clock is wrong (or the certificate was made on a machine whose clock is)",
                    when(i.not_before),
                    when(now)
                ),
            ));
        }
        if now > i.not_after {
            return Err((
                field,
                format!(
                    "expired on {} (this node's clock says {})",
                    when(i.not_after),
                    when(now)
                ),
            ));
        }
        Ok(())
    };
    let ca = cert_info(ca_pem).map_err(|e| ("tls.ca", e))?;
    if !ca.is_ca {
        return Err(("tls.ca", "is not a CA certificate".into()));
    }
    current("tls.ca", &ca)?;
    let node = cert_info(cert_pem).map_err(|e| ("tls.cert", e))?;
    current("tls.cert", &node)?;
    let ca_der = der_of(ca_pem, "certificate").map_err(|e| ("tls.ca", e))?;
    let cert_der = der_of(cert_pem, "certificate").map_err(|e| ("tls.cert", e))?;
    let (_, ca_x) = x509_parser::parse_x509_certificate(&ca_der)
        .map_err(|e| ("tls.ca", format!("not an X.509 certificate: {e}")))?;
    let (_, cert_x) = x509_parser::parse_x509_certificate(&cert_der)
        .map_err(|e| ("tls.cert", format!("not an X.509 certificate: {e}")))?;
    if cert_x.verify_signature(Some(ca_x.public_key())).is_err() {
        return Err((
            "tls.cert",
            format!(
                "was not signed by tls.ca ({:?}); it names {:?} as its issuer",
                ca.common_name,
                cert_x.issuer().to_string()
            ),
        ));
    }
    if let Some(ip) = ip {
        if !node.ips.contains(&ip) {
            return Err((
                "tls.cert",
                format!(
                    "is for {:?}, not for this node's address {ip}",
                    node.ips.iter().map(|i| i.to_string()).collect::<Vec<_>>()
                ),
            ));
        }
    }
    let key = KeyPair::from_pem(key_pem)
        .map_err(|e| ("tls.key", format!("not a PEM private key: {e}")))?;
    if key.public_key_raw() != cert_x.public_key().subject_public_key.data.as_ref() {
        return Err(("tls.key", "does not match tls.cert".into()));
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> i64 {
        OffsetDateTime::now_utc().unix_timestamp()
    }

    #[test]
    fn a_node_certificate_checks_out_and_every_mismatch_names_its_field() {
        let ca = Ca::generate("test CA", 30).expect("CA");
        let names = vec!["node1".to_string(), "10.0.0.11".into(), "127.0.0.1".into()];
        let node = ca.issue("node1", &names, true, 30).expect("node cert");
        let ip: IpAddr = "10.0.0.11".parse().expect("ip");
        let info = check_node(&ca.pair.cert, &node.cert, &node.key, Some(ip), now())
            .expect("a good node certificate");
        assert_eq!(info.common_name, "node1");
        assert!(info.ips.contains(&ip) && info.dns == ["node1"]);

        let other = ca.issue("node2", &names, true, 30).expect("other");
        let e = check_node(&ca.pair.cert, &node.cert, &other.key, Some(ip), now()).unwrap_err();
        assert_eq!(e.0, "tls.key", "{e:?}");

        let elsewhere = "10.0.0.99".parse().expect("ip");
        let e =
            check_node(&ca.pair.cert, &node.cert, &node.key, Some(elsewhere), now()).unwrap_err();
        assert!(e.0 == "tls.cert" && e.1.contains("10.0.0.99"), "{e:?}");

        let stranger = Ca::generate("another CA", 30).expect("CA");
        let e =
            check_node(&stranger.pair.cert, &node.cert, &node.key, Some(ip), now()).unwrap_err();
        assert!(e.0 == "tls.cert" && e.1.contains("not signed"), "{e:?}");

        let e = check_node(&node.cert, &node.cert, &node.key, Some(ip), now()).unwrap_err();
        assert!(e.0 == "tls.ca" && e.1.contains("not a CA"), "{e:?}");

        let later = now() + 31 * 86400;
        let e = check_node(&ca.pair.cert, &node.cert, &node.key, Some(ip), later).unwrap_err();
        assert!(e.1.contains("expired"), "{e:?}");

        let earlier = now() - 86400;
        let e = check_node(&ca.pair.cert, &node.cert, &node.key, Some(ip), earlier).unwrap_err();
        assert!(e.1.contains("clock is wrong"), "{e:?}");

        let e = check_node(&ca.pair.cert, "garbage", &node.key, Some(ip), now()).unwrap_err();
        assert_eq!(e.0, "tls.cert", "{e:?}");
        let e = check_node(&ca.pair.cert, &node.key, &node.key, Some(ip), now()).unwrap_err();
        assert_eq!(e.0, "tls.cert", "{e:?}");
        let e = check_node(&ca.pair.cert, &node.cert, "garbage", Some(ip), now()).unwrap_err();
        assert_eq!(e.0, "tls.key", "{e:?}");
    }

    #[test]
    fn a_wrong_clock_is_named_for_what_it_is() {
        let ca = Ca::generate("test CA", 30).expect("CA");
        let node = ca.issue("n", &["10.0.0.1".into()], true, 30).expect("node");
        let info = cert_info(&node.cert).expect("parse");
        assert_eq!(clock_problem(&info, now()), None);
        let behind = clock_problem(&info, now() - 3 * 86400).expect("behind");
        assert!(behind.contains("clock is behind"), "{behind}");
        let ahead = clock_problem(&info, now() + 40 * 86400).expect("ahead");
        assert!(ahead.contains("expired"), "{ahead}");
    }

    #[test]
    fn a_client_certificate_is_for_clients_only() {
        let ca = Ca::generate("test CA", 30).expect("CA");
        let admin = ca.issue("root", &[], false, 30).expect("admin");
        let info = cert_info(&admin.cert).expect("parse");
        assert_eq!(info.common_name, "root");
        assert!(!info.is_ca && info.ips.is_empty());
        let der = der_of(&admin.cert, "certificate").expect("der");
        let (_, x) = x509_parser::parse_x509_certificate(&der).expect("x509");
        let eku = x.extended_key_usage().expect("eku").expect("has eku").value;
        assert!(eku.client_auth && !eku.server_auth);
    }
}
