//! `forget`: which snapshots a retention policy removes. The plan is a pure function of the
//! snapshot list, the options and the clock, shared by `cairn forget` and the nightly job,
//! so both decide alike; applying it deletes through [`ExclusiveLock::delete_snapshot`].

use std::collections::HashSet;

use cairn_format::{Id, Snapshot};
use serde::Serialize;

use crate::lock::MaintenanceView;
use crate::retention::{apply_policy, group, Decision, GroupBy, GroupKey, Policy};
use crate::snapshots::{resolve, SnapshotFilter};
use crate::Result;

/// What to forget.
#[derive(Debug, Clone, Default)]
pub struct ForgetOptions {
    /// Retention rules (empty: only `ids` are removed).
    pub policy: Policy,
    /// Which snapshots the policy looks at.
    pub filter: SnapshotFilter,
    /// How they are grouped before the policy applies.
    pub group_by: GroupBy,
    /// Snapshots removed by id (or `latest`), whatever the policy says.
    pub ids: Vec<String>,
    /// Let a policy remove every snapshot of a group. Off by default: a policy that keeps
    /// nothing is almost always a mistake (a `--keep-tag` that matches nothing, a typo).
    pub allow_empty_group: bool,
}

/// The decisions for one group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupPlan {
    /// The group.
    pub key: GroupKey,
    /// Newest first; `keep` with the rules that matched.
    pub decisions: Vec<Decision>,
    /// The policy would have removed every snapshot of the group; all are kept instead.
    pub kept_whole_group: bool,
}

/// What applying would remove.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ForgetPlan {
    /// Per group.
    pub groups: Vec<GroupPlan>,
    /// Snapshots to remove, each once.
    pub remove: Vec<Id>,
    /// Things the user should know (a group the policy would have emptied).
    pub warnings: Vec<String>,
}

/// What applying did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ForgetReport {
    /// Snapshots removed.
    pub removed: Vec<Id>,
}

/// A readable name for a group.
pub fn group_label(k: &GroupKey) -> String {
    let mut parts = Vec::new();
    if let Some(h) = &k.host {
        parts.push(format!("host {h}"));
    }
    if let Some(p) = &k.paths {
        parts.push(format!("paths [{}]", p.join(", ")));
    }
    if let Some(t) = &k.tags {
        parts.push(format!("tags [{}]", t.join(",")));
    }
    if parts.is_empty() {
        "all snapshots".into()
    } else {
        parts.join(", ")
    }
}

/// Decide. `snaps` is every snapshot (oldest first, as loaded); `now_nanos` is the clock
/// the `--keep-within*` rules measure from.
pub fn plan(snaps: &[(Id, Snapshot)], opts: &ForgetOptions, now_nanos: i64) -> Result<ForgetPlan> {
    let mut out = ForgetPlan::default();
    let mut remove: Vec<Id> = Vec::new();
    for spec in &opts.ids {
        remove.push(resolve(snaps, spec, &SnapshotFilter::default())?.0);
    }
    if !opts.policy.is_empty() {
        let selected: Vec<(Id, Snapshot)> = snaps
            .iter()
            .filter(|(_, s)| opts.filter.matches(s))
            .cloned()
            .collect();
        for (key, members) in group(selected, opts.group_by) {
            let mut decisions = apply_policy(&members, &opts.policy, now_nanos);
            let emptied = !decisions.is_empty() && decisions.iter().all(|d| !d.keep);
            let kept_whole_group = emptied && !opts.allow_empty_group;
            if kept_whole_group {
                out.warnings.push(format!(
                    "the policy would remove all {} snapshots of {}; keeping them (allow it with --allow-empty-group)",
                    decisions.len(),
                    group_label(&key)
                ));
                for d in &mut decisions {
                    d.keep = true;
                    d.reasons = vec!["group would be emptied".into()];
                }
            }
            remove.extend(decisions.iter().filter(|d| !d.keep).map(|d| d.id));
            out.groups.push(GroupPlan {
                key,
                decisions,
                kept_whole_group,
            });
        }
    }
    let mut seen = HashSet::new();
    out.remove = remove.into_iter().filter(|i| seen.insert(*i)).collect();
    Ok(out)
}

/// Remove what `plan` says.
pub fn apply(lock: MaintenanceView<'_>, plan: &ForgetPlan) -> Result<ForgetReport> {
    let mut report = ForgetReport::default();
    for id in &plan.remove {
        lock.delete_snapshot(id)?;
        report.removed.push(*id);
    }
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use cairn_format::Timestamp;

    const DAY: i64 = 86_400_000_000_000;

    fn snap(n: u8, days_ago: i64, host: &str, tag: &str, now: i64) -> (Id, Snapshot) {
        (
            Id([n; 32]),
            Snapshot {
                time: Timestamp {
                    unix_nanos: now - days_ago * DAY,
                    utc_offset_secs: 0,
                },
                parent: None,
                tree: Id([0; 32]),
                paths: vec![b"/data".to_vec()],
                hostname: host.into(),
                username: "u".into(),
                uid: 0,
                gid: 0,
                tags: vec![tag.into()],
                excludes: Vec::new(),
                program_version: "t".into(),
                summary: None,
            },
        )
    }

    fn opts(policy: Policy) -> ForgetOptions {
        ForgetOptions {
            policy,
            ..ForgetOptions::default()
        }
    }

    #[test]
    fn plan_keeps_last_per_group_and_removes_the_rest_once() {
        let now = 1_700_000_000 * 1_000_000_000;
        let snaps: Vec<_> = (0..6)
            .map(|i| {
                snap(
                    i,
                    i64::from(i),
                    if i % 2 == 0 { "a" } else { "b" },
                    "t",
                    now,
                )
            })
            .collect();
        let mut o = opts(Policy {
            last: 1,
            ..Policy::default()
        });
        o.group_by = GroupBy::parse("host").unwrap();
        // An id named explicitly and also removed by the policy appears once.
        o.ids = vec![Id([4; 32]).to_hex()];
        let p = plan(&snaps, &o, now).unwrap();
        assert_eq!(p.groups.len(), 2);
        let mut removed = p.remove.clone();
        removed.sort();
        assert_eq!(
            removed,
            vec![Id([2; 32]), Id([3; 32]), Id([4; 32]), Id([5; 32])]
        );
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn plan_never_empties_a_group_unless_allowed() {
        let now = 1_700_000_000 * 1_000_000_000;
        let snaps: Vec<_> = (0..3)
            .map(|i| snap(i, i64::from(i), "a", "t", now))
            .collect();
        let policy = Policy {
            tags: vec![vec!["no-such-tag".into()]],
            ..Policy::default()
        };
        let p = plan(&snaps, &opts(policy.clone()), now).unwrap();
        assert!(p.remove.is_empty());
        assert!(p.groups[0].kept_whole_group);
        assert_eq!(p.warnings.len(), 1);
        let mut allow = opts(policy);
        allow.allow_empty_group = true;
        assert_eq!(plan(&snaps, &allow, now).unwrap().remove.len(), 3);
    }

    #[test]
    fn plan_honours_the_filter_and_keep_within_daily() {
        let now = 1_700_000_000 * 1_000_000_000;
        let mut snaps: Vec<_> = (0..8)
            .map(|i| snap(i, i64::from(i), "a", "x", now))
            .collect();
        snaps.push(snap(50, 30, "a", "other", now));
        let mut o = opts(Policy {
            within_daily: crate::retention::Duration::parse("3d").unwrap(),
            ..Policy::default()
        });
        o.filter.tags = vec!["x".into()];
        let p = plan(&snaps, &o, now).unwrap();
        // Snapshots of the other tag are not looked at; days 0..=3 are kept (one per day
        // within 3 days of the newest).
        assert!(!p.remove.contains(&Id([50; 32])));
        let mut removed = p.remove.clone();
        removed.sort();
        assert_eq!(
            removed,
            (4..8).map(|i| Id([i; 32])).collect::<Vec<_>>(),
            "{:?}",
            p.groups
        );
    }
}
