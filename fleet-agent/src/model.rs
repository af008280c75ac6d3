//! fleet's data: the JSON shapes of the HTTP API v1 and the records fleetd keeps in the store.
//!
//! Store layout under the key prefix (default `/_coreos.com/fleet/`, fleet's own):
//! - `unit/<name>`: [`UnitRecord`], written by the API (submit, desired state, destroy);
//! - `machine/<id>`: [`Machine`] under the machine's lease (its heartbeat);
//! - `schedule/<name>`: the machine id the engine placed the unit on;
//! - `state/<machine>/<name>`: [`UnitState`] under the machine's lease, written by its agent;
//! - `engine/leader`: the machine id of the active engine, under its lease;
//! - `unschedulable/<name>`: why the engine cannot place a unit now, under the engine's lease.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::unit::UnitOption;

/// What a unit should be: `inactive` (stored only), `loaded` (on a machine, loaded into systemd),
/// `launched` (loaded and started).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum TargetState {
    /// In the registry only.
    Inactive,
    /// Placed on a machine and loaded into its systemd.
    Loaded,
    /// Loaded and started.
    Launched,
}

impl TargetState {
    /// The lowercase name fleet uses.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Inactive => "inactive",
            TargetState::Loaded => "loaded",
            TargetState::Launched => "launched",
        }
    }
}

impl std::str::FromStr for TargetState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "inactive" => Ok(TargetState::Inactive),
            "loaded" => Ok(TargetState::Loaded),
            "launched" => Ok(TargetState::Launched),
            other => Err(format!(
                "invalid desiredState {other:?}: expected inactive, loaded or launched"
            )),
        }
    }
}

/// A unit in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitRecord {
    /// The unit file's options.
    pub options: Vec<UnitOption>,
    /// What the user asked for.
    #[serde(rename = "desiredState")]
    pub desired_state: TargetState,
}

/// A machine running fleetd (`/fleet/v1/machines`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// /etc/machine-id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// `--metadata` pairs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The address it reaches the cluster from.
    #[serde(
        rename = "primaryIP",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub primary_ip: String,
    /// Where its fleetd serves the API over TCP, if it does (used to fetch status and journals).
    #[serde(rename = "apiURL", default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
}

/// What systemd on a machine says about a unit (`/fleet/v1/state`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitState {
    /// Hash of the unit file the agent loaded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
    /// Machine it is on.
    #[serde(
        rename = "machineID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub machine_id: String,
    /// Unit name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// systemd's ActiveState (active, inactive, failed...).
    #[serde(
        rename = "systemdActiveState",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub active_state: String,
    /// systemd's LoadState (loaded, not-found, error...).
    #[serde(
        rename = "systemdLoadState",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub load_state: String,
    /// systemd's SubState (running, dead, exited...).
    #[serde(
        rename = "systemdSubState",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub sub_state: String,
    /// What the agent did with it: `launched` (it started it) or `loaded` (corelite's field; a
    /// unit that exited on its own stays `launched`, as in fleet).
    #[serde(
        rename = "fleetState",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub fleet_state: Option<TargetState>,
}

impl UnitState {
    /// fleet's current state for the unit on this machine.
    pub fn current(&self) -> TargetState {
        if let Some(s) = self.fleet_state {
            return s;
        }
        match self.active_state.as_str() {
            "active" | "activating" | "reloading" | "deactivating" => TargetState::Launched,
            _ => TargetState::Loaded,
        }
    }
}

/// A unit as the API shows it (`/fleet/v1/units`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    /// What it is now (inactive when not on any machine).
    #[serde(
        rename = "currentState",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub current_state: Option<String>,
    /// What the user asked for.
    #[serde(
        rename = "desiredState",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub desired_state: Option<String>,
    /// The machine it is scheduled to (empty for global or unscheduled units).
    #[serde(rename = "machineID", default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    /// Why the engine cannot place it now (corelite's field; fleet's clients ignore it).
    #[serde(
        rename = "unschedulableReason",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub unschedulable_reason: Option<String>,
    /// Unit name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The unit file's options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<UnitOption>,
}

/// A page of units.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnitPage {
    /// Token for the next page, absent on the last one.
    #[serde(
        rename = "nextPageToken",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub next_page_token: Option<String>,
    /// The units (left out when there are none, as fleet does).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<Unit>,
}

/// A page of machines.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachinePage {
    /// The machines (left out when there are none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub machines: Vec<Machine>,
    /// Token for the next page, absent on the last one.
    #[serde(
        rename = "nextPageToken",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub next_page_token: Option<String>,
}

/// A page of unit states.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnitStatePage {
    /// Token for the next page, absent on the last one.
    #[serde(
        rename = "nextPageToken",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub next_page_token: Option<String>,
    /// The states (left out when there are none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<UnitState>,
}

/// fleet's error body: `{"error":{"code":404,"message":"..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// HTTP status code.
    pub code: u16,
    /// What went wrong (fleet sends `""` for some errors).
    #[serde(default)]
    pub message: String,
}

/// Store keys under a prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (a trailing `/` is added if missing).
    pub fn new(prefix: &str) -> Self {
        let mut prefix = prefix.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Keys { prefix }
    }
    /// Everything fleet stores.
    pub fn root(&self) -> &str {
        &self.prefix
    }
    /// Prefix of unit records.
    pub fn units(&self) -> String {
        format!("{}unit/", self.prefix)
    }
    /// A unit record.
    pub fn unit(&self, name: &str) -> String {
        format!("{}unit/{name}", self.prefix)
    }
    /// Prefix of machine records.
    pub fn machines(&self) -> String {
        format!("{}machine/", self.prefix)
    }
    /// A machine record.
    pub fn machine(&self, id: &str) -> String {
        format!("{}machine/{id}", self.prefix)
    }
    /// Prefix of schedule entries.
    pub fn schedules(&self) -> String {
        format!("{}schedule/", self.prefix)
    }
    /// A schedule entry.
    pub fn schedule(&self, name: &str) -> String {
        format!("{}schedule/{name}", self.prefix)
    }
    /// Prefix of unit states.
    pub fn states(&self) -> String {
        format!("{}state/", self.prefix)
    }
    /// A unit's state on a machine.
    pub fn state(&self, machine: &str, name: &str) -> String {
        format!("{}state/{machine}/{name}", self.prefix)
    }
    /// Why the engine cannot place a unit.
    pub fn unschedulable(&self, name: &str) -> String {
        format!("{}unschedulable/{name}", self.prefix)
    }
    /// The engine leader key.
    pub fn engine_leader(&self) -> String {
        format!("{}engine/leader", self.prefix)
    }

    /// Classifies a key of the store.
    pub fn classify<'a>(&self, key: &'a str) -> Option<KeyKind<'a>> {
        let rest = key.strip_prefix(self.prefix.as_str())?;
        if let Some(n) = rest.strip_prefix("unit/") {
            Some(KeyKind::Unit(n))
        } else if let Some(m) = rest.strip_prefix("machine/") {
            Some(KeyKind::Machine(m))
        } else if let Some(n) = rest.strip_prefix("schedule/") {
            Some(KeyKind::Schedule(n))
        } else if let Some(s) = rest.strip_prefix("state/") {
            let (m, n) = s.split_once('/')?;
            Some(KeyKind::State(m, n))
        } else if let Some(n) = rest.strip_prefix("unschedulable/") {
            Some(KeyKind::Unschedulable(n))
        } else if rest == "engine/leader" {
            Some(KeyKind::EngineLeader)
        } else {
            None
        }
    }
}

/// What a store key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind<'a> {
    /// `unit/<name>`.
    Unit(&'a str),
    /// `machine/<id>`.
    Machine(&'a str),
    /// `schedule/<name>`.
    Schedule(&'a str),
    /// `state/<machine>/<name>`.
    State(&'a str, &'a str),
    /// `engine/leader`.
    EngineLeader,
    /// `unschedulable/<name>`.
    Unschedulable(&'a str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_classify_round_trip() {
        let k = Keys::new("/_coreos.com/fleet");
        assert_eq!(
            k.classify(&k.unit("a.service")),
            Some(KeyKind::Unit("a.service"))
        );
        assert_eq!(k.classify(&k.machine("m1")), Some(KeyKind::Machine("m1")));
        assert_eq!(
            k.classify(&k.schedule("a.service")),
            Some(KeyKind::Schedule("a.service"))
        );
        assert_eq!(
            k.classify(&k.state("m1", "a.service")),
            Some(KeyKind::State("m1", "a.service"))
        );
        assert_eq!(k.classify(&k.engine_leader()), Some(KeyKind::EngineLeader));
        assert_eq!(
            k.classify(&k.unschedulable("a.service")),
            Some(KeyKind::Unschedulable("a.service"))
        );
        assert_eq!(k.classify("/other/unit/x"), None);
    }

    #[test]
    fn json_shapes_are_fleets() {
        let u = Unit {
            name: "a.service".into(),
            options: vec![UnitOption {
                section: "Service".into(),
                name: "ExecStart".into(),
                value: "/bin/true".into(),
            }],
            desired_state: Some("launched".into()),
            current_state: Some("inactive".into()),
            machine_id: None,
            unschedulable_reason: None,
        };
        let j = serde_json::to_value(&u).unwrap();
        assert_eq!(j["desiredState"], "launched");
        assert_eq!(j["options"][0]["section"], "Service");
        let m: Machine =
            serde_json::from_str(r#"{"id":"x","primaryIP":"10.0.0.1","metadata":{"a":"b"}}"#)
                .unwrap();
        assert_eq!(m.metadata["a"], "b");
        assert!("bogus".parse::<TargetState>().is_err());
    }

    /// What the original fleetd sends: every empty field left out, pages included.
    #[test]
    fn the_original_fleetds_sparse_answers_decode() {
        let p: UnitPage = serde_json::from_str("{}").unwrap();
        assert!(p.units.is_empty() && p.next_page_token.is_none());
        let p: UnitStatePage = serde_json::from_str("{}").unwrap();
        assert!(p.states.is_empty());
        let p: MachinePage = serde_json::from_str(r#"{"machines":[{"id":"m1"}]}"#).unwrap();
        assert_eq!(p.machines[0].primary_ip, "");
        let u: Unit = serde_json::from_str(
            r#"{"currentState":"inactive","desiredState":"inactive","name":"e.service","options":[{"name":"Environment","section":"Service"}]}"#,
        )
        .unwrap();
        assert_eq!(u.options[0].value, "");
        assert_eq!(u.machine_id, None);
        // And what this fleetd sends leaves them out the same way, in fleet's key order.
        assert_eq!(
            serde_json::to_string(&UnitPage {
                units: vec![],
                next_page_token: None
            })
            .unwrap(),
            "{}"
        );
        assert_eq!(
            serde_json::to_string(&u).unwrap(),
            r#"{"currentState":"inactive","desiredState":"inactive","name":"e.service","options":[{"name":"Environment","section":"Service"}]}"#
        );
    }
}
