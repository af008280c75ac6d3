//! The image formats rkt reads: OCI image manifests, indexes and configs, and Docker's v2
//! schema 2 manifests and manifest lists (the same shapes under other media types). Only the
//! fields rkt uses are modelled; unknown fields are ignored, as the specs require.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{ImageError, Result};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The annotation an OCI layout's index.json names a manifest with (a tag).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

/// How to run the image (the config's "config" object).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "User", default)]
    pub user: Option<String>,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "ExposedPorts", default)]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(rename = "StopSignal", default)]
    pub stop_signal: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub typ: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub config: Option<RunConfig>,
    #[serde(default)]
    pub rootfs: RootFs,
}

/// A manifest or an index, told apart by media type or shape.
pub enum ManifestOrIndex {
    Manifest(Manifest),
    Index(Index),
}

/// Parses a manifest document fetched under `media_type` (may be empty when unknown).
pub fn parse_manifest(data: &[u8], media_type: &str, what: &str) -> Result<ManifestOrIndex> {
    let v: serde_json::Value = serde_json::from_slice(data)
        .map_err(|e| ImageError::bad(what, format!("manifest is not JSON: {e}")))?;
    let mt = v
        .get("mediaType")
        .and_then(|m| m.as_str())
        .unwrap_or(media_type);
    let is_index = mt == OCI_INDEX || mt == DOCKER_LIST || v.get("manifests").is_some();
    if v.get("schemaVersion").and_then(|s| s.as_u64()) == Some(1) {
        return Err(ImageError::bad(
            what,
            "Docker schema 1 manifests are not supported (push the image again with a current tool)",
        ));
    }
    if is_index {
        serde_json::from_value(v)
            .map(ManifestOrIndex::Index)
            .map_err(|e| ImageError::bad(what, format!("bad image index: {e}")))
    } else {
        serde_json::from_value(v)
            .map(ManifestOrIndex::Manifest)
            .map_err(|e| ImageError::bad(what, format!("bad image manifest: {e}")))
    }
}

pub fn parse_config(data: &[u8], what: &str) -> Result<ImageConfig> {
    serde_json::from_slice(data)
        .map_err(|e| ImageError::bad(what, format!("bad image config: {e}")))
}

/// This machine's platform in OCI's words.
pub fn host_platform() -> Platform {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    Platform {
        architecture: arch.to_string(),
        os: "linux".to_string(),
        variant: None,
    }
}

/// Picks the manifest for `want` from an index, or explains which platforms it has.
pub fn pick_platform<'a>(idx: &'a Index, want: &Platform, what: &str) -> Result<&'a Descriptor> {
    let fits = |p: &Platform| p.os == want.os && p.architecture == want.architecture;
    if let Some(d) = idx
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(fits))
    {
        return Ok(d);
    }
    // An index without platforms (an OCI layout's index.json) with one manifest is that image.
    if idx.manifests.len() == 1 && idx.manifests[0].platform.is_none() {
        return Ok(&idx.manifests[0]);
    }
    let have: Vec<String> = idx
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .map(|p| format!("{}/{}", p.os, p.architecture))
        .collect();
    Err(ImageError::Platform(format!(
        "{what} has no image for {}/{} (it has: {})",
        want.os,
        want.architecture,
        if have.is_empty() {
            "none".to_string()
        } else {
            have.join(", ")
        }
    )))
}

/// Refuses a config for another platform.
pub fn check_platform(cfg: &ImageConfig, want: &Platform, what: &str) -> Result<()> {
    if (!cfg.os.is_empty() && cfg.os != want.os)
        || (!cfg.architecture.is_empty() && cfg.architecture != want.architecture)
    {
        return Err(ImageError::Platform(format!(
            "{what} is for {}/{}, this machine runs {}/{}",
            cfg.os, cfg.architecture, want.os, want.architecture
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_manifests_and_platforms() {
        let idx = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json",
            "manifests":[{"mediaType":"m","digest":"sha256:1","size":1,"platform":{"architecture":"arm64","os":"linux"}}]}"#;
        let Ok(ManifestOrIndex::Index(i)) = parse_manifest(idx, "", "x") else {
            panic!("an index was not parsed as one");
        };
        let amd = Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        let err = pick_platform(&i, &amd, "x")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("linux/arm64") && err.contains("linux/amd64"),
            "{err}"
        );
        let cfg = parse_config(br#"{"architecture":"arm64","os":"linux"}"#, "c").expect("config");
        assert!(check_platform(&cfg, &amd, "c").is_err());
        assert!(matches!(
            parse_manifest(br#"{"schemaVersion":1}"#, "", "x"),
            Err(ImageError::BadImage { .. })
        ));
        assert!(parse_manifest(b"not json", "", "x").is_err());
    }
}
