//! The agent's reconciler, a pure function: the units this machine should have + what it has
//! -> the systemd actions to take, in a safe order (stop, remove, write, reload, start).

use std::collections::BTreeMap;

use crate::model::TargetState;

/// A unit this machine should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Hash of its contents.
    pub hash: String,
    /// The unit file.
    pub contents: String,
    /// loaded or launched.
    pub target: TargetState,
}

/// A unit fleet has on this machine now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    /// Hash of the file written.
    pub hash: String,
    /// Whether systemd runs it (active, activating, reloading).
    pub active: bool,
    /// Whether this agent started it for this hash (so a unit that exits or fails is not
    /// restarted by fleet: restarting is systemd's `Restart=`).
    pub started: bool,
}

/// One step for the agent to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Stop the unit.
    Stop(String),
    /// Unlink and delete the unit file.
    Remove(String),
    /// Write the unit file (and link it into systemd).
    Write {
        /// Unit name.
        name: String,
        /// Its contents.
        contents: String,
        /// Its hash.
        hash: String,
    },
    /// Make systemd re-read its unit files (once, after writes and removals).
    Reload,
    /// Start the unit.
    Start(String),
}

/// The actions that turn `current` into `desired`.
pub fn reconcile(
    desired: &BTreeMap<String, Desired>,
    current: &BTreeMap<String, Current>,
) -> Vec<Action> {
    let (mut stops, mut removes, mut writes, mut starts) = (vec![], vec![], vec![], vec![]);
    for (name, cur) in current {
        match desired.get(name) {
            None => {
                if cur.active {
                    stops.push(Action::Stop(name.clone()));
                }
                removes.push(Action::Remove(name.clone()));
            }
            Some(want) if want.hash != cur.hash => {
                if cur.active {
                    stops.push(Action::Stop(name.clone()));
                }
            }
            Some(want) if want.target == TargetState::Loaded && cur.active => {
                stops.push(Action::Stop(name.clone()));
            }
            Some(_) => {}
        }
    }
    for (name, want) in desired {
        let cur = current.get(name);
        let fresh = cur.is_none_or(|c| c.hash != want.hash);
        if fresh {
            writes.push(Action::Write {
                name: name.clone(),
                contents: want.contents.clone(),
                hash: want.hash.clone(),
            });
        }
        if want.target == TargetState::Launched && (fresh || cur.is_some_and(|c| !c.started)) {
            starts.push(Action::Start(name.clone()));
        }
    }
    let reload = !writes.is_empty() || !removes.is_empty();
    let mut out = stops;
    out.extend(removes);
    out.extend(writes);
    if reload {
        out.push(Action::Reload);
    }
    out.extend(starts);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(hash: &str, target: TargetState) -> Desired {
        Desired {
            hash: hash.into(),
            contents: format!("# {hash}"),
            target,
        }
    }
    fn cur(hash: &str, active: bool, started: bool) -> Current {
        Current {
            hash: hash.into(),
            active,
            started,
        }
    }

    #[test]
    fn new_launched_unit_is_written_reloaded_started() {
        let d = [("a.service".to_string(), want("h1", TargetState::Launched))].into();
        let acts = reconcile(&d, &BTreeMap::new());
        assert!(matches!(&acts[0], Action::Write { name, .. } if name == "a.service"));
        assert_eq!(
            acts[1..],
            [Action::Reload, Action::Start("a.service".into())]
        );
    }

    #[test]
    fn in_sync_is_quiet_and_exited_units_are_not_restarted() {
        let d = [("a.service".to_string(), want("h1", TargetState::Launched))].into();
        let c = [("a.service".to_string(), cur("h1", false, true))].into();
        assert!(reconcile(&d, &c).is_empty());
    }

    #[test]
    fn loaded_stops_a_running_unit_and_launched_starts_it_again() {
        let d = [("a.service".to_string(), want("h1", TargetState::Loaded))].into();
        let c = [("a.service".to_string(), cur("h1", true, true))].into();
        assert_eq!(reconcile(&d, &c), vec![Action::Stop("a.service".into())]);
        let d = [("a.service".to_string(), want("h1", TargetState::Launched))].into();
        let c = [("a.service".to_string(), cur("h1", false, false))].into();
        assert_eq!(reconcile(&d, &c), vec![Action::Start("a.service".into())]);
    }

    #[test]
    fn changed_contents_stop_rewrite_restart() {
        let d = [("a.service".to_string(), want("h2", TargetState::Launched))].into();
        let c = [("a.service".to_string(), cur("h1", true, true))].into();
        let acts = reconcile(&d, &c);
        assert_eq!(acts[0], Action::Stop("a.service".into()));
        assert!(matches!(&acts[1], Action::Write { hash, .. } if hash == "h2"));
        assert_eq!(
            acts[2..],
            [Action::Reload, Action::Start("a.service".into())]
        );
    }

    #[test]
    fn units_no_longer_wanted_are_stopped_then_removed() {
        let c = [
            ("a.service".to_string(), cur("h1", true, true)),
            ("b.service".to_string(), cur("h1", false, false)),
        ]
        .into();
        let acts = reconcile(&BTreeMap::new(), &c);
        assert_eq!(
            acts,
            vec![
                Action::Stop("a.service".into()),
                Action::Remove("a.service".into()),
                Action::Remove("b.service".into()),
                Action::Reload
            ]
        );
    }
}
