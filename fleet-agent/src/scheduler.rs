//! The engine's reconciler, a pure function: desired units + live machines + the current
//! schedule -> decisions (place, remove, cannot place).
//!
//! Placement honours `[X-Fleet]` MachineID, MachineOf, MachineMetadata (any of the values of a
//! key, negations all), Conflicts (globs, both ways), Replaces (the replaced unit leaves the
//! machine) and picks the eligible machine with the fewest units. Global units and templates are
//! never placed here (every agent runs the global units that match its metadata).

use std::collections::{BTreeMap, BTreeSet};

use crate::model::TargetState;
use crate::unit::{glob_match, Requirements};

/// A unit as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct Job {
    /// What the user asked for.
    pub target: TargetState,
    /// Its `[X-Fleet]` requirements.
    pub req: Requirements,
}

/// The cluster as the scheduler sees it.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Units by name (templates excluded by the caller or skipped here).
    pub jobs: BTreeMap<String, Job>,
    /// Live machines and their metadata.
    pub machines: BTreeMap<String, BTreeMap<String, String>>,
    /// Where units are placed now.
    pub schedule: BTreeMap<String, String>,
}

/// One decision of a scheduling pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Place `unit` on `machine`.
    Schedule {
        /// The unit.
        unit: String,
        /// The machine.
        machine: String,
    },
    /// Take `unit` off `machine`.
    Unschedule {
        /// The unit.
        unit: String,
        /// The machine it was on.
        machine: String,
        /// Why.
        reason: String,
    },
    /// `unit` should run but no machine can take it now.
    Unschedulable {
        /// The unit.
        unit: String,
        /// Why.
        reason: String,
    },
}

fn is_template(name: &str) -> bool {
    crate::unit::is_template(name)
}

fn has_rules(r: &Requirements) -> bool {
    !r.conflicts.is_empty() || !r.replaces.is_empty()
}

fn conflicts(a_name: &str, a: &Requirements, b_name: &str, b: &Requirements) -> bool {
    a.conflicts.iter().any(|g| glob_match(g, b_name))
        || b.conflicts.iter().any(|g| glob_match(g, a_name))
        || a.replaces.iter().any(|r| r == b_name)
        || b.replaces.iter().any(|r| r == a_name)
}

/// Whether `from` replaces `to`, directly or through units it replaces in turn.
fn replaces_transitively(view: &View, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from];
    while let Some(n) = todo.pop() {
        if !seen.insert(n) {
            continue;
        }
        let Some(job) = view.jobs.get(n) else {
            continue;
        };
        for r in &job.req.replaces {
            if r == to {
                return true;
            }
            todo.push(r);
        }
    }
    false
}

/// Whether `name` may take `other`'s place: it replaces `other`, and `other` does not replace
/// it back (units in a Replaces cycle would evict each other forever; they are kept apart
/// like Conflicts instead).
fn evicts(view: &View, name: &str, job: &Job, other: &str) -> bool {
    job.req.replaces.iter().any(|r| r == other) && !replaces_transitively(view, other, name)
}

/// Whether `machine` (with `metadata`) satisfies the machine-level requirements of a unit.
fn machine_ok(req: &Requirements, machine: &str, metadata: &BTreeMap<String, String>) -> bool {
    (req.machine_id.is_empty() || req.machine_id.iter().any(|m| m == machine))
        && req.metadata_matches(metadata)
}

/// One scheduling pass.
pub fn plan(view: &View) -> Vec<Decision> {
    let mut out = Vec::new();
    // The schedule as this pass changes it.
    let mut placed: BTreeMap<String, String> = BTreeMap::new();
    let mut by_machine: BTreeMap<&str, BTreeSet<String>> = view
        .machines
        .keys()
        .map(|m| (m.as_str(), BTreeSet::new()))
        .collect();

    // Keep, or take off, what is placed now.
    for (unit, machine) in &view.schedule {
        let reason = match view.jobs.get(unit) {
            None => Some("unit destroyed".to_string()),
            Some(job) if job.target == TargetState::Inactive => Some("unit unloaded".into()),
            Some(job) if job.req.global || is_template(unit) => Some("not schedulable".into()),
            Some(job) => match view.machines.get(machine) {
                None => Some(format!("machine {machine} is gone")),
                Some(md) if !machine_ok(&job.req, machine, md) => Some(format!(
                    "machine {machine} no longer meets its requirements"
                )),
                Some(_) => None,
            },
        };
        match reason {
            Some(reason) => out.push(Decision::Unschedule {
                unit: unit.clone(),
                machine: machine.clone(),
                reason,
            }),
            None => {
                placed.insert(unit.clone(), machine.clone());
                if let Some(set) = by_machine.get_mut(machine.as_str()) {
                    set.insert(unit.clone());
                }
            }
        }
    }
    // MachineOf whose peer left the machine.
    loop {
        let broken: Vec<(String, String)> = placed
            .iter()
            .filter(|(u, m)| {
                view.jobs.get(*u).is_some_and(|j| {
                    j.req
                        .machine_of
                        .iter()
                        .any(|peer| placed.get(peer) != Some(*m))
                })
            })
            .map(|(u, m)| (u.clone(), m.clone()))
            .collect();
        if broken.is_empty() {
            break;
        }
        for (u, m) in broken {
            placed.remove(&u);
            if let Some(set) = by_machine.get_mut(m.as_str()) {
                set.remove(&u);
            }
            out.push(Decision::Unschedule {
                unit: u,
                machine: m,
                reason: "its MachineOf unit moved".into(),
            });
        }
    }

    // Place what is not placed, in passes so that MachineOf peers placed later still count.
    let mut pending: Vec<&String> = view
        .jobs
        .iter()
        .filter(|(name, job)| {
            job.target != TargetState::Inactive
                && !job.req.global
                && !is_template(name)
                && !placed.contains_key(*name)
        })
        .map(|(name, _)| name)
        .collect();
    let mut reasons: BTreeMap<String, String> = BTreeMap::new();
    // Units with Conflicts or Replaces: the only ones a plain unit can clash with.
    let ruled: BTreeSet<&str> = view
        .jobs
        .iter()
        .filter(|(_, j)| has_rules(&j.req))
        .map(|(n, _)| n.as_str())
        .collect();
    // Each pass places at least one unit and a unit is only displaced by one that replaces it
    // (never in a cycle), so this ends; the bound is a guard, not the expected end.
    let mut passes = 2 * view.jobs.len() + 2;
    loop {
        let mut progress = false;
        let mut still = Vec::new();
        for name in pending {
            let job = &view.jobs[name];
            match choose(view, name, job, &placed, &by_machine, &ruled) {
                Ok(machine) => {
                    // Units it replaces leave the machine.
                    let evicted: Vec<String> = by_machine[machine.as_str()]
                        .iter()
                        .filter(|other| evicts(view, name, job, other))
                        .cloned()
                        .collect();
                    // Units placed with an evicted one (MachineOf) leave with it.
                    let mut evict: Vec<(String, String)> = evicted
                        .into_iter()
                        .map(|o| (o, format!("replaced by {name}")))
                        .collect();
                    while let Some((other, reason)) = evict.pop() {
                        if placed.get(&other) != Some(&machine) {
                            continue;
                        }
                        placed.remove(&other);
                        if let Some(set) = by_machine.get_mut(machine.as_str()) {
                            set.remove(&other);
                        }
                        out.retain(
                            |d| !matches!(d, Decision::Schedule { unit, .. } if *unit == other),
                        );
                        if view.schedule.get(&other) == Some(&machine) {
                            out.push(Decision::Unschedule {
                                unit: other.clone(),
                                machine: machine.clone(),
                                reason,
                            });
                        }
                        evict.extend(
                            placed
                                .iter()
                                .filter(|(u, m)| {
                                    **m == machine
                                        && view
                                            .jobs
                                            .get(*u)
                                            .is_some_and(|j| j.req.machine_of.contains(&other))
                                })
                                .map(|(u, _)| {
                                    (u.clone(), format!("its MachineOf unit {other} left"))
                                }),
                        );
                        still.push(
                            view.jobs
                                .get_key_value(&other)
                                .map(|(k, _)| k)
                                .unwrap_or(name),
                        );
                    }
                    placed.insert(name.clone(), machine.clone());
                    if let Some(set) = by_machine.get_mut(machine.as_str()) {
                        set.insert(name.clone());
                    }
                    reasons.remove(name);
                    out.push(Decision::Schedule {
                        unit: name.clone(),
                        machine,
                    });
                    progress = true;
                }
                Err(why) => {
                    reasons.insert(name.clone(), why);
                    still.push(name);
                }
            }
        }
        still.sort();
        still.dedup();
        pending = still
            .into_iter()
            .filter(|n| !placed.contains_key(*n))
            .collect();
        passes -= 1;
        if !progress || pending.is_empty() || passes == 0 {
            break;
        }
    }
    for name in pending {
        let reason = reasons
            .remove(name)
            .unwrap_or_else(|| "no eligible machine".into());
        out.push(Decision::Unschedulable {
            unit: name.clone(),
            reason,
        });
    }
    out
}

/// The eligible machine with the fewest units, or why there is none.
fn choose(
    view: &View,
    name: &str,
    job: &Job,
    placed: &BTreeMap<String, String>,
    by_machine: &BTreeMap<&str, BTreeSet<String>>,
    ruled: &BTreeSet<&str>,
) -> Result<String, String> {
    if view.machines.is_empty() {
        return Err("no machines in the cluster".into());
    }
    // MachineOf pins the unit to its peers' machine.
    let mut pinned: Option<&String> = None;
    for peer in &job.req.machine_of {
        match placed.get(peer) {
            None => return Err(format!("waiting for MachineOf unit {peer} to be scheduled")),
            Some(m) if pinned.is_some_and(|p| p != m) => {
                return Err("its MachineOf units are on different machines".into())
            }
            Some(m) => pinned = Some(m),
        }
    }
    let mut best: Option<(usize, &str)> = None;
    let mut why = "no machine matches its MachineID/MachineMetadata";
    let mut cycle: Option<String> = None;
    for (machine, md) in &view.machines {
        if pinned.is_some_and(|p| p != machine) || !machine_ok(&job.req, machine, md) {
            continue;
        }
        let units = &by_machine[machine.as_str()];
        let clashes = |other: &String| {
            view.jobs.get(other).is_some_and(|o| {
                conflicts(name, &job.req, other, &o.req) && !evicts(view, name, job, other)
            })
        };
        // A unit without Conflicts/Replaces can only clash with units that have them.
        let clash = if has_rules(&job.req) {
            units.iter().any(clashes)
        } else {
            units
                .iter()
                .filter(|u| ruled.contains(u.as_str()))
                .any(clashes)
        };
        if clash {
            why = match units
                .iter()
                .find(|o| job.req.replaces.contains(o) && replaces_transitively(view, o, name))
            {
                Some(o) => {
                    cycle = Some(o.clone());
                    "cycle"
                }
                None => "every eligible machine runs a unit it conflicts with",
            };
            continue;
        }
        let load = units.len();
        if best.is_none_or(|(l, _)| load < l) {
            best = Some((load, machine));
        }
    }
    best.map(|(_, m)| m.to_string()).ok_or_else(|| match cycle {
        Some(o) if why == "cycle" => format!(
            "it and {o} replace each other (a Replaces cycle), so neither displaces the other \
             and every eligible machine runs one"
        ),
        _ => why.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unit::{parse, requirements};
    use proptest::prelude::*;

    fn job(name: &str, xfleet: &str) -> (String, Job) {
        let text = format!("[Service]\nExecStart=/bin/true\n[X-Fleet]\n{xfleet}\n");
        let req = requirements(&parse(&text).unwrap(), name).unwrap();
        (
            name.to_string(),
            Job {
                target: TargetState::Launched,
                req,
            },
        )
    }

    fn machines(list: &[(&str, &str)]) -> BTreeMap<String, BTreeMap<String, String>> {
        list.iter()
            .map(|(id, md)| {
                let md = md
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap();
                        (k.to_string(), v.to_string())
                    })
                    .collect();
                (id.to_string(), md)
            })
            .collect()
    }

    fn placements(d: &[Decision]) -> BTreeMap<String, String> {
        d.iter()
            .filter_map(|d| match d {
                Decision::Schedule { unit, machine } => Some((unit.clone(), machine.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn spreads_over_the_least_loaded() {
        let view = View {
            jobs: (0..6).map(|i| job(&format!("u{i}.service"), "")).collect(),
            machines: machines(&[("a", ""), ("b", ""), ("c", "")]),
            schedule: BTreeMap::new(),
        };
        let p = placements(&plan(&view));
        assert_eq!(p.len(), 6);
        for m in ["a", "b", "c"] {
            assert_eq!(p.values().filter(|v| *v == m).count(), 2);
        }
    }

    #[test]
    fn machine_id_metadata_and_negation() {
        let view = View {
            jobs: [
                job("pinned.service", "MachineID=b"),
                job("eu.service", "MachineMetadata=region=eu region=asia"),
                job("notssd.service", "MachineMetadata=disk!=ssd"),
            ]
            .into(),
            machines: machines(&[
                ("a", "region=us,disk=ssd"),
                ("b", "region=eu,disk=ssd"),
                ("c", ""),
            ]),
            schedule: BTreeMap::new(),
        };
        let p = placements(&plan(&view));
        assert_eq!(p["pinned.service"], "b");
        assert_eq!(p["eu.service"], "b");
        assert_eq!(p["notssd.service"], "c");
    }

    #[test]
    fn conflicts_and_unsatisfiable_are_reported_not_looped() {
        let view = View {
            jobs: [
                job("web@1.service", "Conflicts=web@*.service"),
                job("web@2.service", "Conflicts=web@*.service"),
                job("web@3.service", "Conflicts=web@*.service"),
                job("nowhere.service", "MachineID=zzz"),
            ]
            .into(),
            machines: machines(&[("a", ""), ("b", "")]),
            schedule: BTreeMap::new(),
        };
        let d = plan(&view);
        let p = placements(&d);
        assert_eq!(p.len(), 2);
        assert_ne!(p["web@1.service"], p["web@2.service"]);
        let stuck: Vec<_> = d
            .iter()
            .filter_map(|d| match d {
                Decision::Unschedulable { unit, reason } => Some((unit.as_str(), reason.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(stuck.len(), 2);
        assert!(stuck
            .iter()
            .any(|(u, r)| *u == "web@3.service" && r.contains("conflicts")));
        assert!(stuck
            .iter()
            .any(|(u, r)| *u == "nowhere.service" && r.contains("MachineID")));
    }

    #[test]
    fn machine_of_follows_its_peer_even_when_sorted_first() {
        let view = View {
            jobs: [
                job("a-sidekick.service", "MachineOf=z-main.service"),
                job("z-main.service", ""),
            ]
            .into(),
            machines: machines(&[("m1", ""), ("m2", "")]),
            schedule: [("z-main.service".to_string(), "m2".to_string())].into(),
        };
        let p = placements(&plan(&view));
        assert_eq!(p["a-sidekick.service"], "m2");
        // Peer not placed yet in the same pass.
        let view = View {
            schedule: BTreeMap::new(),
            ..view
        };
        let p = placements(&plan(&view));
        assert_eq!(p["a-sidekick.service"], p["z-main.service"]);
    }

    #[test]
    fn lost_machine_units_move_and_inactive_ones_leave() {
        let (n1, j1) = job("one.service", "");
        let (n2, mut j2) = job("two.service", "");
        j2.target = TargetState::Inactive;
        let view = View {
            jobs: [(n1, j1), (n2, j2)].into(),
            machines: machines(&[("b", "")]),
            schedule: [
                ("one.service".to_string(), "a".to_string()),
                ("two.service".to_string(), "b".to_string()),
                ("gone.service".to_string(), "b".to_string()),
            ]
            .into(),
        };
        let d = plan(&view);
        assert!(d.contains(&Decision::Schedule {
            unit: "one.service".into(),
            machine: "b".into()
        }));
        let removed: BTreeSet<_> = d
            .iter()
            .filter_map(|d| match d {
                Decision::Unschedule { unit, .. } => Some(unit.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            removed,
            ["gone.service", "one.service", "two.service"].into()
        );
    }

    #[test]
    fn replaces_evicts_and_globals_templates_are_not_placed() {
        let view = View {
            jobs: [
                job("new.service", "Replaces=old.service\nMachineID=a"),
                job("old.service", ""),
                job("g.service", "Global=true"),
                job("t@.service", ""),
            ]
            .into(),
            machines: machines(&[("a", ""), ("b", "")]),
            schedule: [("old.service".to_string(), "a".to_string())].into(),
        };
        let d = plan(&view);
        let p = placements(&d);
        assert_eq!(p["new.service"], "a");
        assert_eq!(p["old.service"], "b");
        assert!(!p.contains_key("g.service") && !p.contains_key("t@.service"));
        assert!(d.iter().any(
            |x| matches!(x, Decision::Unschedule { unit, reason, .. } if unit == "old.service" && reason.contains("replaced"))
        ));
    }

    #[test]
    fn units_that_replace_each_other_end_the_pass_and_say_why() {
        // Before, one eligible machine made them evict each other forever.
        let view = View {
            jobs: [
                job("a.service", "Replaces=b.service"),
                job("b.service", "Replaces=a.service"),
            ]
            .into(),
            machines: machines(&[("m", "")]),
            schedule: BTreeMap::new(),
        };
        let d = plan(&view);
        let p = placements(&d);
        assert_eq!(p.len(), 1, "{d:?}");
        let left = if p.contains_key("a.service") {
            "b.service"
        } else {
            "a.service"
        };
        assert!(d.iter().any(|x| matches!(x,
            Decision::Unschedulable { unit, reason } if unit == left && reason.contains("Replaces cycle"))),
            "{d:?}");
        // The next pass keeps it that way.
        let again = plan(&View {
            schedule: p,
            ..view
        });
        assert!(
            again
                .iter()
                .all(|d| matches!(d, Decision::Unschedulable { .. })),
            "{again:?}"
        );
    }

    proptest! {
        /// Whatever the input, a pass never places a unit twice, never on an unknown machine,
        /// never breaks a conflict it created, and a second pass over its result is quiet.
        #[test]
        fn plans_are_consistent_and_stable(
            units in proptest::collection::vec((0u8..6, 0u8..3), 0..20),
            nmachines in 0usize..5,
        ) {
            let ms: Vec<(String, String)> =
                (0..nmachines).map(|i| (format!("m{i}"), format!("zone=z{}", i % 2))).collect();
            let view = View {
                jobs: units
                    .iter()
                    .enumerate()
                    .map(|(i, (kind, zone))| {
                        let x = match kind {
                            0 => String::new(),
                            1 => "Conflicts=c*".to_string(),
                            2 => format!("MachineMetadata=zone=z{zone}"),
                            3 => "MachineOf=u0.service".to_string(),
                            // Replaces, cycles included (u0 and u1 may replace each other).
                            4 => format!("Replaces=u{zone}.service"),
                            _ => format!("Replaces=u{}.service\nMachineID=m0", (i + 1) % 3),
                        };
                        let name = if *kind == 1 { format!("c{i}.service") } else { format!("u{i}.service") };
                        job(&name, &x)
                    })
                    .collect(),
                machines: ms.iter().map(|(id, md)| (id.clone(), machines(&[(id, md)])[id].clone())).collect(),
                schedule: BTreeMap::new(),
            };
            let d = plan(&view);
            let p = placements(&d);
            let mut seen = BTreeSet::new();
            for dec in &d {
                if let Decision::Schedule { unit, machine } = dec {
                    prop_assert!(seen.insert(unit.clone()), "{unit} placed twice");
                    prop_assert!(view.machines.contains_key(machine));
                }
            }
            for (a, ma) in &p {
                for (b, mb) in &p {
                    if a < b && ma == mb {
                        prop_assert!(!conflicts(a, &view.jobs[a].req, b, &view.jobs[b].req));
                    }
                }
            }
            let again = plan(&View { schedule: p, ..view });
            prop_assert!(again.iter().all(|d| matches!(d, Decision::Unschedulable { .. })), "{again:?}");
        }
    }
}
