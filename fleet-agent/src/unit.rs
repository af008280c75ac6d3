//! Unit files: systemd's INI dialect parsed into fleet's option list, unit-name rules, templates,
//! and the `[X-Fleet]` scheduling options.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

/// One `Name=Value` line of a unit file, as fleet's API carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitOption {
    /// The option's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The `[Section]` it is in.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub section: String,
    /// Its value (continuation lines joined with a space). Empty (`Environment=`) is left out
    /// of the JSON, as fleet's schema leaves out every empty field.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

/// A unit file that cannot be used, with the line it failed on where there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Text that is not a section header, an option, a comment or a blank line.
    #[error("line {line}: {msg}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// A name systemd would refuse.
    #[error("invalid unit name {name:?}: {msg}")]
    Name {
        /// The name given.
        name: String,
        /// Why it is refused.
        msg: String,
    },
    /// An `[X-Fleet]` option fleet does not know, or a bad value.
    #[error("[X-Fleet] {0}")]
    Fleet(String),
}

/// Parses a unit file into its options, in file order.
pub fn parse(text: &str) -> Result<Vec<UnitOption>, UnitError> {
    let mut out = Vec::new();
    let mut section: Option<String> = None;
    let mut lines = text.lines().enumerate();
    while let Some((i, raw)) = lines.next() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let err = |msg: &str| UnitError::Syntax {
            line: i + 1,
            msg: msg.to_string(),
        };
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .ok_or_else(|| err("section header without ']'"))?;
            if name.is_empty() || name.contains(['[', ']']) {
                return Err(err("invalid section name"));
            }
            section = Some(name.to_string());
            continue;
        }
        let Some(sec) = &section else {
            return Err(err("option outside of any [Section]"));
        };
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| err("expected Name=Value"))?;
        let key = key.trim();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(err(&format!("invalid option name {key:?}")));
        }
        let mut value = value.trim().to_string();
        // A trailing backslash continues the value on the next line.
        while value.ends_with('\\') {
            value.pop();
            let Some((_, next)) = lines.next() else { break };
            let next = next.trim();
            if next.starts_with('#') || next.starts_with(';') {
                continue;
            }
            value = format!("{} {}", value.trim_end(), next);
        }
        out.push(UnitOption {
            section: sec.clone(),
            name: key.to_string(),
            value,
        });
    }
    Ok(out)
}

/// Renders options back into a unit file (sections in first-seen order).
pub fn render(options: &[UnitOption]) -> String {
    let mut sections: Vec<(&str, Vec<&UnitOption>)> = Vec::new();
    for o in options {
        match sections.iter_mut().find(|(s, _)| *s == o.section) {
            Some((_, v)) => v.push(o),
            None => sections.push((&o.section, vec![o])),
        }
    }
    let mut out = String::new();
    for (i, (sec, opts)) in sections.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "[{sec}]");
        for o in opts {
            let _ = writeln!(out, "{}={}", o.name, o.value);
        }
    }
    out
}

/// A unit's hash as fleet computes it: hex SHA-1 of its rendering ([`render`] is go-systemd's
/// `Serialize`), so both fleetctls show the same HASH for the same unit.
pub fn hash(options: &[UnitOption]) -> String {
    let digest = Sha1::digest(render(options).as_bytes());
    digest.iter().fold(String::with_capacity(40), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Unit types fleet schedules.
const SUFFIXES: &[&str] = &[
    "service",
    "socket",
    "timer",
    "path",
    "mount",
    "automount",
    "device",
    "swap",
    "target",
];

/// Checks a unit name the way systemd does (`unit_name_is_valid`) and that fleet can run it.
pub fn validate_name(name: &str) -> Result<(), UnitError> {
    let bad = |msg: &str| UnitError::Name {
        name: name.to_string(),
        msg: msg.to_string(),
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > 255 {
        return Err(bad("longer than 255 characters"));
    }
    let (stem, suffix) = name
        .rsplit_once('.')
        .ok_or_else(|| bad("no unit type suffix"))?;
    if !SUFFIXES.contains(&suffix) {
        return Err(bad(&format!("unknown unit type .{suffix}")));
    }
    if stem.is_empty() {
        return Err(bad("empty name before the suffix"));
    }
    if let Some(c) = stem
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ":-_.\\@".contains(*c)))
    {
        return Err(bad(&format!("character {c:?} is not allowed")));
    }
    if let Some((prefix, instance)) = stem.split_once('@') {
        if prefix.is_empty() {
            return Err(bad("empty template prefix before '@'"));
        }
        if instance.contains('@') {
            return Err(bad("more than one '@'"));
        }
    }
    Ok(())
}

/// `name@instance.suffix` split into its template `name@.suffix` and instance.
pub fn template_of(name: &str) -> Option<(String, String)> {
    let (stem, suffix) = name.rsplit_once('.')?;
    let (prefix, instance) = stem.split_once('@')?;
    if instance.is_empty() {
        return None;
    }
    Some((format!("{prefix}@.{suffix}"), instance.to_string()))
}

/// Whether `name` is a template (`name@.service`), which is stored but never scheduled.
pub fn is_template(name: &str) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(stem, _)| stem.ends_with('@'))
}

/// One `MachineMetadata=` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataRule {
    /// The key.
    pub key: String,
    /// The value it must (or, negated, must not) have.
    pub value: String,
    /// `key!=value`.
    pub negated: bool,
}

/// The scheduling requirements of a unit, from its `[X-Fleet]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    /// Machine IDs it may run on (any of; empty = any machine).
    pub machine_id: Vec<String>,
    /// Units it must share a machine with.
    pub machine_of: Vec<String>,
    /// Metadata rules: for each key, any positive value matches; negations must all hold.
    pub metadata: Vec<MetadataRule>,
    /// Globs of units it may not share a machine with.
    pub conflicts: Vec<String>,
    /// Runs on every (matching) machine.
    pub global: bool,
    /// Units it takes the place of: they may not share its machine.
    pub replaces: Vec<String>,
}

/// Expands the systemd specifiers fleet supports in `[X-Fleet]` (`%n`, `%N`, `%p`, `%i`, `%%`).
pub fn expand_specifiers(value: &str, unit: &str) -> String {
    let stem = unit.rsplit_once('.').map_or(unit, |(s, _)| s);
    let (prefix, instance) = stem.split_once('@').unwrap_or((stem, ""));
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push_str(unit),
            Some('N') => out.push_str(stem),
            Some('p') => out.push_str(prefix),
            Some('i') => out.push_str(instance),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Reads the `[X-Fleet]` options of unit `unit` (for specifiers); unknown ones and bad values
/// are errors. fleet's older names (`X-ConditionMachineID`, `X-Conflicts`, ...) are accepted.
pub fn requirements(options: &[UnitOption], unit: &str) -> Result<Requirements, UnitError> {
    let mut r = Requirements::default();
    for o in options.iter().filter(|o| o.section == "X-Fleet") {
        let expanded = expand_specifiers(&o.value, unit);
        let values = || expanded.split_whitespace().map(str::to_string);
        let name = match o.name.as_str() {
            "X-ConditionMachineID" => "MachineID",
            "X-ConditionMachineOf" => "MachineOf",
            "X-ConditionMachineMetadata" => "MachineMetadata",
            "X-Conflicts" => "Conflicts",
            n => n,
        };
        match name {
            "MachineID" => r.machine_id.extend(values()),
            "MachineOf" => {
                for v in values() {
                    validate_name(&v).map_err(|e| UnitError::Fleet(format!("MachineOf: {e}")))?;
                    r.machine_of.push(v);
                }
            }
            "MachineMetadata" => {
                for v in values() {
                    let (k, val, negated) = if let Some((k, val)) = v.split_once("!=") {
                        (k, val, true)
                    } else if let Some((k, val)) = v.split_once('=') {
                        (k, val, false)
                    } else {
                        return Err(UnitError::Fleet(format!(
                            "MachineMetadata {v:?}: expected key=value or key!=value"
                        )));
                    };
                    if k.is_empty() {
                        return Err(UnitError::Fleet(format!(
                            "MachineMetadata {v:?}: empty key"
                        )));
                    }
                    r.metadata.push(MetadataRule {
                        key: k.to_string(),
                        value: val.to_string(),
                        negated,
                    });
                }
            }
            "Conflicts" => r.conflicts.extend(values()),
            "Global" => {
                r.global = match expanded.trim() {
                    "true" | "yes" | "1" | "on" => true,
                    "false" | "no" | "0" | "off" => false,
                    v => return Err(UnitError::Fleet(format!("Global={v:?} is not a boolean"))),
                }
            }
            "Replaces" => r.replaces.extend(values()),
            other => return Err(UnitError::Fleet(format!("unknown option {other}"))),
        }
    }
    if r.global && (!r.machine_of.is_empty() || !r.machine_id.is_empty() || !r.replaces.is_empty())
    {
        return Err(UnitError::Fleet(
            "Global=true cannot be combined with MachineID, MachineOf or Replaces".into(),
        ));
    }
    Ok(r)
}

impl Requirements {
    /// Whether a machine's metadata satisfies the `MachineMetadata` rules.
    pub fn metadata_matches(&self, metadata: &BTreeMap<String, String>) -> bool {
        let mut wanted: BTreeMap<&str, bool> = BTreeMap::new();
        for rule in &self.metadata {
            let actual = metadata.get(&rule.key);
            if rule.negated {
                if actual == Some(&rule.value) {
                    return false;
                }
            } else {
                let hit = actual == Some(&rule.value);
                let e = wanted.entry(&rule.key).or_insert(false);
                *e |= hit;
            }
        }
        wanted.values().all(|hit| *hit)
    }
}

/// Shell-style glob match (`*`, `?`), as fleet's Conflicts uses.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hashes the original fleetctl v1.0.0 printed (`list-unit-files --full`) for these files
    /// (scripts/capture-original-fleetctl.sh).
    #[test]
    fn hashes_are_the_original_fleets() {
        let hello = "[Unit]\nDescription=Hello\n[Service]\nEnvironment=\nExecStart=/bin/sh -c \"while true; do echo hello; sleep 1; done\"\n[X-Fleet]\nMachineMetadata=role=web\n";
        let again = hello.replace("hello; sleep 1", "hello again; sleep 1");
        let web = "[Service]\nExecStart=/bin/sh -c \"echo web %i; sleep 1000\"\n";
        for (text, want) in [
            (
                hello.to_string(),
                "bf2e10ca2811850e32188c83e5c28d13f59e914d",
            ),
            (again, "224820c986c4bc1db63b734b793870204370617b"),
            (web.to_string(), "685b4eddcae8f3dc641af6d62c4ebe6e58095f83"),
        ] {
            assert_eq!(hash(&parse(&text).unwrap()), want, "{text}");
        }
    }
    use proptest::prelude::*;

    const HELLO: &str = "[Unit]\nDescription=Hello\n\n[Service]\n# comment\nExecStart=/bin/sh -c \\\n  'echo hi'\n\n[X-Fleet]\nConflicts=hello*.service\nMachineMetadata=region=us region=eu disk!=hdd\n";

    #[test]
    fn parses_sections_options_and_continuations() {
        let opts = parse(HELLO).unwrap();
        assert_eq!(opts.len(), 4);
        assert_eq!(opts[1].value, "/bin/sh -c 'echo hi'");
        assert_eq!(opts[2].section, "X-Fleet");
        let r = requirements(&opts, "hello.service").unwrap();
        assert_eq!(r.conflicts, vec!["hello*.service"]);
        assert_eq!(r.metadata.len(), 3);
    }

    #[test]
    fn syntax_errors_name_the_line() {
        assert_eq!(
            parse("ExecStart=/bin/true\n").unwrap_err(),
            UnitError::Syntax {
                line: 1,
                msg: "option outside of any [Section]".into()
            }
        );
        assert!(matches!(
            parse("[Unit\n"),
            Err(UnitError::Syntax { line: 1, .. })
        ));
        assert!(matches!(
            parse("[Unit]\nno equals sign\n"),
            Err(UnitError::Syntax { line: 2, .. })
        ));
        assert!(matches!(
            parse("[Unit]\n=x\n"),
            Err(UnitError::Syntax { line: 2, .. })
        ));
    }

    #[test]
    fn unknown_fleet_options_and_bad_values_are_refused() {
        let o = |n: &str, v: &str| {
            vec![UnitOption {
                section: "X-Fleet".into(),
                name: n.into(),
                value: v.into(),
            }]
        };
        let req = |n: &str, v: &str| requirements(&o(n, v), "web@2.service");
        assert!(req("MachineIDs", "x").is_err());
        assert!(req("Global", "maybe").is_err());
        assert!(req("MachineMetadata", "novalue").is_err());
        assert!(req("MachineOf", "bad name").is_err());
        assert!(req("Global", "true").unwrap().global);
        assert_eq!(
            req("X-Conflicts", "%p@*.service").unwrap().conflicts,
            vec!["web@*.service"]
        );
        assert_eq!(
            req("MachineOf", "db@%i.service").unwrap().machine_of,
            vec!["db@2.service"]
        );
    }

    #[test]
    fn metadata_rules() {
        let r = requirements(&parse(HELLO).unwrap(), "hello.service").unwrap();
        let md = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(r.metadata_matches(&md(&[("region", "eu")])));
        assert!(r.metadata_matches(&md(&[("region", "us"), ("disk", "ssd")])));
        assert!(!r.metadata_matches(&md(&[("region", "us"), ("disk", "hdd")])));
        assert!(!r.metadata_matches(&md(&[("region", "asia")])));
        assert!(!r.metadata_matches(&md(&[])));
    }

    #[test]
    fn names() {
        for ok in [
            "a.service",
            "web@1.service",
            "web@.service",
            "x:y-z_1.socket",
            "a.timer",
        ] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            "a",
            "a.foo",
            ".service",
            "a b.service",
            "a/b.service",
            "@x.service",
            "a@b@c.service",
        ] {
            assert!(validate_name(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            template_of("web@3.service"),
            Some(("web@.service".into(), "3".into()))
        );
        assert_eq!(template_of("web@.service"), None);
        assert!(is_template("web@.service"));
        assert!(!is_template("web@1.service"));
    }

    #[test]
    fn globs() {
        assert!(glob_match("hello*.service", "hello@1.service"));
        assert!(glob_match("*", "x"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(!glob_match("web.service", "web2.service"));
    }

    proptest! {
        #[test]
        fn render_parse_round_trips(
            opts in proptest::collection::vec(
                ("(Unit|Service|X-Fleet)", "[A-Za-z][A-Za-z0-9]{0,8}", "[a-z0-9 /=.-]{0,20}"),
                0..12,
            )
        ) {
            let opts: Vec<UnitOption> = opts
                .into_iter()
                .map(|(s, n, v)| UnitOption { section: s, name: n, value: v.trim().to_string() })
                .collect();
            let again = parse(&render(&opts)).unwrap();
            // Rendering groups options by section; within a section order is kept.
            for sec in ["Unit", "Service", "X-Fleet"] {
                let a: Vec<_> = opts.iter().filter(|o| o.section == sec).collect();
                let b: Vec<_> = again.iter().filter(|o| o.section == sec).collect();
                prop_assert_eq!(a, b);
            }
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,200}") {
            let _ = parse(&text);
        }
    }
}
