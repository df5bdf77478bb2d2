//! `forget`: which snapshots a retention policy removes. The plan is a pure function of the
//! snapshot list, the options and the clock, shared by `cairn forget` and the nightly job,
//! so both decide alike; applying it deletes through [`ExclusiveLock::delete_snapshot`].

use std::collections::HashSet;

use cairn_format::{Id, Snapshot};
use serde::Serialize;

use crate::lock::ExclusiveLock;
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
pub fn apply(lock: &ExclusiveLock<'_>, plan: &ForgetPlan) -> Result<ForgetReport> {
    let mut report = ForgetReport::default();
    for id in &plan.remove {
        lock.delete_snapshot(id)?;
        report.removed.push(*id);
    }
    Ok(report)
}
