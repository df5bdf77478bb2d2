//! Table-driven retention tests: `forget` policies against the decisions of real restic.
//!
//! `data/forget_restic_0.14.json` holds a fixed list of ~100 snapshots (two hosts, tags, UTC
//! offsets +00:00/+01:00/+02:00/-04:00/-05:00/+05:30, DST changes, month/year/ISO-week
//! boundaries, bursts and gaps) and, for 50+ policies, which of them restic 0.14.0 kept (K),
//! removed (R) or did not select (-). Regenerate it with `python3 scripts/gen-forget-fixture.py`
//! (see the script's docstring).
//!
//! restic 0.14 predates the rule "a rule that still has count left at the group's oldest
//! snapshot keeps that snapshot too", so cairn may keep exactly that one extra snapshot per
//! group, with only `oldest …` reasons; which rules give it is checked independently here.
//!
//! The rest are small hand-checked cases: sub-second and identical timestamps, snapshots from
//! the future, offsets deciding the day/week, `unlimited`, parse errors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use cairn_engine::retention::{
    apply_policy, group, parse_count, Decision, Duration, GroupBy, Policy,
};
use cairn_engine::util::to_zoned;
use cairn_engine::SnapshotFilter;
use cairn_format::{Id, Snapshot, Timestamp};
use serde::Deserialize;

const FIXTURE: &str = include_str!("data/forget_restic_0.14.json");
/// The one path every fixture snapshot backed up (restic recorded a temp dir; only equality
/// matters for grouping).
const PATH: &[u8] = b"/data";
const NANOS: i64 = 1_000_000_000;
const HOUR: i64 = 3600 * NANOS;
const DAY: i64 = 24 * HOUR;

#[derive(Deserialize)]
struct Fixture {
    restic_version: String,
    now_unix: i64,
    entries: Vec<Entry>,
    policies: Vec<FixturePolicy>,
}

#[derive(Deserialize)]
struct Entry {
    time: String,
    unix: i64,
    offset: i32,
    host: String,
    tags: Vec<String>,
}

#[derive(Deserialize)]
struct FixturePolicy {
    name: String,
    args: Vec<String>,
    result: String,
}

/// A parsed `forget` command line: what `cli/src/maint.rs` builds from the same flags.
struct Command {
    policy: Policy,
    group_by: GroupBy,
    filter: SnapshotFilter,
}

fn parse_command(args: &[String]) -> Command {
    let mut policy = Policy::default();
    let mut group_by = "host,paths".to_owned(); // restic's and cairn's default
    let mut filter = SnapshotFilter::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let v = it
            .next()
            .unwrap_or_else(|| panic!("flag {flag} without a value in {args:?}"));
        let count = || parse_count(v).unwrap_or_else(|e| panic!("{flag} {v}: {e}"));
        let dur = || Duration::parse(v).unwrap_or_else(|e| panic!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--keep-last" => policy.last = count(),
            "--keep-hourly" => policy.hourly = count(),
            "--keep-daily" => policy.daily = count(),
            "--keep-weekly" => policy.weekly = count(),
            "--keep-monthly" => policy.monthly = count(),
            "--keep-yearly" => policy.yearly = count(),
            "--keep-within" => policy.within = dur(),
            "--keep-within-hourly" => policy.within_hourly = dur(),
            "--keep-within-daily" => policy.within_daily = dur(),
            "--keep-within-weekly" => policy.within_weekly = dur(),
            "--keep-within-monthly" => policy.within_monthly = dur(),
            "--keep-within-yearly" => policy.within_yearly = dur(),
            "--keep-tag" => policy.tags.push(
                v.split(',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            "--group-by" => group_by = v.clone(),
            "--tag" => filter.tags.push(v.clone()),
            "--host" => filter.hosts.push(v.clone()),
            other => panic!("unknown flag {other} in {args:?}"),
        }
    }
    Command {
        policy,
        group_by: GroupBy::parse(&group_by).unwrap(),
        filter,
    }
}

fn id_of(i: usize) -> Id {
    Id::of_object(format!("forget-policy-test-snapshot-{i}").as_bytes())
}

fn ts(unix_nanos: i64, utc_offset_secs: i32) -> Timestamp {
    Timestamp {
        unix_nanos,
        utc_offset_secs,
    }
}

/// `2024-06-10T23:30:00-05:00` (whole seconds, explicit offset) → Timestamp.
fn at(s: &str) -> Timestamp {
    let (dt, off) = s.split_at(s.len() - 6);
    let sign = match &off[..1] {
        "+" => 1,
        "-" => -1,
        _ => panic!("no offset in {s}"),
    };
    let off_secs =
        sign * (off[1..3].parse::<i32>().unwrap() * 3600 + off[4..6].parse::<i32>().unwrap() * 60);
    let civil: jiff::civil::DateTime = dt.parse().unwrap();
    let z = civil
        .to_zoned(jiff::tz::TimeZone::fixed(
            jiff::tz::Offset::from_seconds(off_secs).unwrap(),
        ))
        .unwrap();
    ts(z.timestamp().as_nanosecond() as i64, off_secs)
}

fn rfc3339(t: &Timestamp) -> String {
    to_zoned(t)
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

fn snapshot(time: Timestamp, host: &str, tags: &[String]) -> Snapshot {
    let mut tags = tags.to_vec();
    tags.sort();
    Snapshot {
        time,
        parent: None,
        tree: Id::of_object(b"tree"),
        paths: vec![PATH.to_vec()],
        hostname: host.to_owned(),
        username: "root".to_owned(),
        uid: 0,
        gid: 0,
        tags,
        excludes: Vec::new(),
        program_version: "cairn test".to_owned(),
        summary: None,
    }
}

fn load() -> (Fixture, Vec<(Id, Snapshot)>) {
    let fx: Fixture = serde_json::from_str(FIXTURE).unwrap();
    let snaps: Vec<(Id, Snapshot)> = fx
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let t = ts(e.unix * NANOS, e.offset);
            // The fixture's three spellings of the time must agree.
            assert_eq!(
                rfc3339(&t),
                e.time,
                "entry {i}: unix/offset do not match the time text"
            );
            assert_eq!(at(&e.time), t, "entry {i}");
            (id_of(i), snapshot(t, &e.host, &e.tags))
        })
        .collect();
    (fx, snaps)
}

/// What one policy decided for every input snapshot.
struct Outcome {
    /// Per input index: the decision, or None when the filter did not select it.
    decisions: Vec<Option<Decision>>,
    /// Per input index: (group number, is the group's oldest snapshot).
    place: Vec<Option<(usize, bool)>>,
    /// Groups, each as input indices newest first.
    groups: Vec<Vec<usize>>,
}

fn run(snaps: &[(Id, Snapshot)], cmd: &Command, now_nanos: i64) -> Outcome {
    let index: HashMap<Id, usize> = snaps
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (*id, i))
        .collect();
    let selected: Vec<(Id, Snapshot)> = snaps
        .iter()
        .filter(|(_, s)| cmd.filter.matches(s))
        .cloned()
        .collect();
    let mut out = Outcome {
        decisions: vec![None; snaps.len()],
        place: vec![None; snaps.len()],
        groups: Vec::new(),
    };
    for (gi, (_key, members)) in group(selected, cmd.group_by).into_iter().enumerate() {
        let decisions = apply_policy(&members, &cmd.policy, now_nanos);
        assert_eq!(decisions.len(), members.len(), "one decision per snapshot");
        let order: Vec<usize> = decisions.iter().map(|d| index[&d.id]).collect();
        assert_eq!(
            order.iter().collect::<BTreeSet<_>>().len(),
            order.len(),
            "a snapshot decided twice"
        );
        for w in order.windows(2) {
            assert!(
                snaps[w[0]].1.time.unix_nanos >= snaps[w[1]].1.time.unix_nanos,
                "decisions not newest first"
            );
        }
        for (pos, d) in decisions.into_iter().enumerate() {
            let i = index[&d.id];
            assert_eq!(
                d.keep,
                !d.reasons.is_empty(),
                "keep flag and reasons disagree for #{i}"
            );
            out.place[i] = Some((gi, pos + 1 == order.len()));
            out.decisions[i] = Some(d);
        }
        out.groups.push(order);
    }
    out
}

/// The bucket of `t` for a count rule, computed here independently of forget.rs.
fn bucket(rule: &str, t: &Timestamp) -> Option<(i32, i32, i32, i32)> {
    let z = to_zoned(t).unwrap();
    let (y, m, d, h) = (
        i32::from(z.year()),
        i32::from(z.month()),
        i32::from(z.day()),
        i32::from(z.hour()),
    );
    match rule {
        "last" => None, // every snapshot is its own bucket
        "hourly" => Some((y, m, d, h)),
        "daily" => Some((y, m, d, 0)),
        "weekly" => {
            let w = z.date().iso_week_date();
            Some((i32::from(w.year()), i32::from(w.week()), 0, 0))
        }
        "monthly" => Some((y, m, 0, 0)),
        "yearly" => Some((y, 0, 0, 0)),
        _ => unreachable!(),
    }
}

/// The `oldest … snapshot` reasons the group's oldest snapshot must carry (restic > 0.14): a
/// count rule that has count left there although the snapshot shares the bucket of the newer
/// one.
fn expected_oldest_reasons(
    snaps: &[(Id, Snapshot)],
    group_newest_first: &[usize],
    policy: &Policy,
) -> BTreeSet<String> {
    let mut want = BTreeSet::new();
    let n = group_newest_first.len();
    if n < 2 {
        return want;
    }
    let rules = [
        ("last", policy.last),
        ("hourly", policy.hourly),
        ("daily", policy.daily),
        ("weekly", policy.weekly),
        ("monthly", policy.monthly),
        ("yearly", policy.yearly),
    ];
    for (rule, count) in rules {
        if count == 0 || rule == "last" {
            continue;
        }
        let keys: Vec<_> = group_newest_first
            .iter()
            .map(|&i| bucket(rule, &snaps[i].1.time))
            .collect();
        let used = (0..n - 1)
            .filter(|&k| k == 0 || keys[k] != keys[k - 1])
            .count() as i64;
        if keys[n - 1] == keys[n - 2] && (count == -1 || used < count) {
            want.insert(format!("oldest {rule} snapshot"));
        }
    }
    want
}

fn describe(snaps: &[(Id, Snapshot)], i: usize) -> String {
    let s = &snaps[i].1;
    format!(
        "#{i:<3} {}  {:<5} {:<12}",
        rfc3339(&s.time),
        s.hostname,
        s.tags.join(",")
    )
}

#[test]
fn fixture_is_big_enough() {
    let (fx, snaps) = load();
    assert!(
        fx.restic_version.starts_with("restic 0.14"),
        "{}",
        fx.restic_version
    );
    assert!(snaps.len() >= 100, "{} snapshots", snaps.len());
    assert!(fx.policies.len() >= 30, "{} policies", fx.policies.len());
    let offsets: BTreeSet<i32> = snaps.iter().map(|(_, s)| s.time.utc_offset_secs).collect();
    for want in [0, 7200, -5 * 3600, 5 * 3600 + 1800] {
        assert!(
            offsets.contains(&want),
            "offset {want} missing: {offsets:?}"
        );
    }
    let hosts: BTreeSet<&str> = snaps.iter().map(|(_, s)| s.hostname.as_str()).collect();
    assert!(hosts.len() >= 2);
    let instants: BTreeSet<i64> = snaps.iter().map(|(_, s)| s.time.unix_nanos).collect();
    assert_eq!(
        instants.len(),
        snaps.len(),
        "restic-compared instants must be distinct"
    );
    for p in &fx.policies {
        assert_eq!(p.result.len(), snaps.len(), "policy {:?}", p.name);
    }
}

#[test]
fn policies_match_restic_0_14() {
    let (fx, snaps) = load();
    let now = fx.now_unix * NANOS;
    let mut report = String::new();
    let (mut extras, mut compared) = (Vec::new(), 0usize);
    for p in &fx.policies {
        let cmd = parse_command(&p.args);
        let out = run(&snaps, &cmd, now);
        let mut problems = Vec::new();
        let mut extra_per_group: BTreeMap<usize, usize> = BTreeMap::new();
        for (i, restic) in p.result.chars().enumerate() {
            compared += 1;
            let ours = out.decisions[i].as_ref();
            let ours_c = match ours {
                None => '-',
                Some(d) if d.keep => 'K',
                Some(_) => 'R',
            };
            let reasons = ours.map(|d| d.reasons.join("; ")).unwrap_or_default();
            let line = |why: &str| {
                format!(
                    "  {}  restic {restic}  cairn {ours_c}  [{reasons}]  <- {why}",
                    describe(&snaps, i)
                )
            };
            match (restic, ours_c) {
                (a, b) if a == b => {}
                ('R', 'K') => {
                    let (g, oldest) = out.place[i].unwrap();
                    let d = ours.unwrap();
                    if !oldest {
                        problems.push(line(
                            "kept but restic removes it, and it is not the group's oldest",
                        ));
                    } else if !d.reasons.iter().all(|r| r.starts_with("oldest ")) {
                        problems.push(line(
                            "kept for a reason restic 0.14 would have kept it for too",
                        ));
                    } else {
                        *extra_per_group.entry(g).or_default() += 1;
                        extras.push(format!("{:?} #{i} [{}]", p.name, d.reasons.join("; ")));
                    }
                }
                ('K', _) => problems.push(line("restic keeps it")),
                _ => problems.push(line("selection differs")),
            }
        }
        for (g, n) in &extra_per_group {
            if *n > 1 {
                problems.push(format!(
                    "  group {g}: {n} extra kept snapshots, at most one (the oldest) allowed"
                ));
            }
        }
        // The post-0.14 rule itself, checked independently on every group.
        for members in &out.groups {
            for (pos, &i) in members.iter().enumerate() {
                let d = out.decisions[i].as_ref().unwrap();
                let got: BTreeSet<String> = d
                    .reasons
                    .iter()
                    .filter(|r| r.starts_with("oldest "))
                    .cloned()
                    .collect();
                let want = if pos + 1 == members.len() {
                    expected_oldest_reasons(&snaps, members, &cmd.policy)
                } else {
                    BTreeSet::new()
                };
                if got != want {
                    problems.push(format!(
                        "  {}  `oldest` reasons {got:?}, expected {want:?} (all reasons: {:?})",
                        describe(&snaps, i),
                        d.reasons
                    ));
                }
            }
        }
        if !problems.is_empty() {
            let _ = writeln!(
                report,
                "policy {:?} (forget {}):",
                p.name,
                shell_args(&p.args)
            );
            for l in problems {
                let _ = writeln!(report, "{l}");
            }
        }
    }
    assert!(
        report.is_empty(),
        "cairn's forget differs from restic 0.14:\n{report}"
    );
    assert!(
        !extras.is_empty(),
        "no policy exercised the keep-the-oldest rule"
    );
    eprintln!(
        "{} policies x {} snapshots ({compared} decisions) match restic 0.14; {} extra oldest-snapshot keeps:\n  {}",
        fx.policies.len(),
        snaps.len(),
        extras.len(),
        extras.join("\n  ")
    );
}

fn shell_args(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty() {
                "''".to_owned()
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Decisions by input index, for comparing two runs over differently built inputs.
fn summary(out: &Outcome) -> Vec<Option<(bool, Vec<String>)>> {
    out.decisions
        .iter()
        .map(|d| d.as_ref().map(|d| (d.keep, d.reasons.clone())))
        .collect()
}

#[test]
fn sub_second_shift_and_input_order_change_nothing() {
    let (fx, snaps) = load();
    let now = fx.now_unix * NANOS;
    // All times + 0.123456789 s: every difference and every bucket stays the same.
    let shifted: Vec<(Id, Snapshot)> = snaps
        .iter()
        .map(|(id, s)| {
            let mut s = s.clone();
            s.time.unix_nanos += 123_456_789;
            (*id, s)
        })
        .collect();
    // Reversed and rotated input: apply_policy sorts.
    let mut shuffled: Vec<(Id, Snapshot)> = snaps.iter().rev().cloned().collect();
    shuffled.rotate_left(37);
    let back: HashMap<Id, usize> = snaps
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (*id, i))
        .collect();
    for p in &fx.policies {
        let cmd = parse_command(&p.args);
        let base = summary(&run(&snaps, &cmd, now));
        assert_eq!(
            summary(&run(&shifted, &cmd, now)),
            base,
            "policy {:?} after a sub-second shift",
            p.name
        );
        let mut re = summary(&run(&shuffled, &cmd, now));
        // `run` indexes by input position: map the shuffled positions back.
        let mut fixed = vec![None; re.len()];
        for (pos, (id, _)) in shuffled.iter().enumerate() {
            fixed[back[id]] = re[pos].take();
        }
        assert_eq!(fixed, base, "policy {:?} with shuffled input", p.name);
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-checked cases.

/// Snapshots from `(time, tags)`, ids by position.
fn list(items: &[(Timestamp, &[&str])]) -> Vec<(Id, Snapshot)> {
    items
        .iter()
        .enumerate()
        .map(|(i, (t, tags))| {
            let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
            (id_of(1000 + i), snapshot(*t, "host", &tags))
        })
        .collect()
}

/// Reasons by input position ("" for removed), via apply_policy on one group.
fn reasons(snaps: &[(Id, Snapshot)], policy: &Policy, now: i64) -> Vec<String> {
    let decisions = apply_policy(snaps, policy, now);
    assert_eq!(decisions.len(), snaps.len());
    snaps
        .iter()
        .map(|(id, _)| {
            let d = decisions.iter().find(|d| d.id == *id).unwrap();
            assert_eq!(d.keep, !d.reasons.is_empty());
            d.reasons.join("; ")
        })
        .collect()
}

fn far_future() -> i64 {
    at("2100-01-01T00:00:00+00:00").unix_nanos
}

fn policy(f: impl FnOnce(&mut Policy)) -> Policy {
    let mut p = Policy::default();
    f(&mut p);
    p
}

#[test]
fn oldest_snapshot_kept_while_a_rule_has_count_left() {
    let snaps = list(&[
        (at("2024-05-01T09:00:00+00:00"), &[]), // oldest, same day as the next
        (at("2024-05-01T18:00:00+00:00"), &[]),
        (at("2024-05-02T09:00:00+00:00"), &[]),
    ]);
    let daily = |n| policy(|p| p.daily = n);
    assert_eq!(
        reasons(&snaps, &daily(5), far_future()),
        ["oldest daily snapshot", "daily snapshot", "daily snapshot"]
    );
    assert_eq!(
        reasons(&snaps, &daily(-1), far_future()),
        ["oldest daily snapshot", "daily snapshot", "daily snapshot"]
    );
    // Count used up by the two newer days: the oldest goes (what restic 0.14 always did).
    assert_eq!(
        reasons(&snaps, &daily(2), far_future()),
        ["", "daily snapshot", "daily snapshot"]
    );
    assert_eq!(
        reasons(&snaps, &daily(1), far_future()),
        ["", "", "daily snapshot"]
    );
    // Its own day: a plain daily snapshot.
    let distinct = list(&[
        (at("2024-04-30T09:00:00+00:00"), &[]),
        (at("2024-05-01T18:00:00+00:00"), &[]),
        (at("2024-05-02T09:00:00+00:00"), &[]),
    ]);
    assert_eq!(
        reasons(&distinct, &daily(5), far_future()),
        ["daily snapshot", "daily snapshot", "daily snapshot"]
    );
    // Each rule counts for itself: monthly has count left, daily does not.
    let both = policy(|p| {
        p.daily = 2;
        p.monthly = 3;
    });
    assert_eq!(
        reasons(&snaps, &both, far_future()),
        [
            "oldest monthly snapshot",
            "daily snapshot",
            "daily snapshot; monthly snapshot"
        ]
    );
    // keep-last never needs the rule: every snapshot is its own bucket.
    assert_eq!(
        reasons(&snaps, &policy(|p| p.last = 5), far_future()),
        ["last snapshot", "last snapshot", "last snapshot"]
    );
    // A single snapshot is simply the newest of its bucket.
    assert_eq!(
        reasons(&snaps[..1], &daily(5), far_future()),
        ["daily snapshot"]
    );
}

#[test]
fn identical_timestamps_are_ordered_by_id() {
    let t = at("2024-05-01T12:00:00+02:00");
    let snaps = list(&[(t, &[]), (t, &[]), (t, &[])]);
    let mut ids: Vec<Id> = snaps.iter().map(|(id, _)| *id).collect();
    ids.sort();
    let (low, mid, high) = (ids[0], ids[1], ids[2]);
    let by_id = |snaps: &[(Id, Snapshot)], p: &Policy| -> Vec<(Id, String)> {
        apply_policy(snaps, p, far_future())
            .into_iter()
            .map(|d| (d.id, d.reasons.join("; ")))
            .collect()
    };
    let last1 = policy(|p| p.last = 1);
    let daily5 = policy(|p| p.daily = 5);
    // Ties: the larger id counts as newer; the smallest is the group's oldest.
    assert_eq!(
        by_id(&snaps, &last1),
        [
            (high, "last snapshot".into()),
            (mid, String::new()),
            (low, String::new())
        ]
    );
    assert_eq!(
        by_id(&snaps, &daily5),
        [
            (high, "daily snapshot".into()),
            (mid, String::new()),
            (low, "oldest daily snapshot".into())
        ]
    );
    // Whatever the input order.
    for rot in 0..3 {
        for rev in [false, true] {
            let mut s = snaps.clone();
            s.rotate_left(rot);
            if rev {
                s.reverse();
            }
            assert_eq!(by_id(&s, &last1), by_id(&snaps, &last1));
            assert_eq!(by_id(&s, &daily5), by_id(&snaps, &daily5));
        }
    }
    // keep-within with every snapshot at the latest instant keeps all (strictly after latest - d).
    let within = policy(|p| p.within = Duration::parse("1h").unwrap());
    assert!(apply_policy(&snaps, &within, far_future())
        .iter()
        .all(|d| d.keep));
}

#[test]
fn sub_second_times_in_one_second() {
    let base = at("2024-05-01T12:00:00+00:00").unix_nanos;
    let snaps = list(&[
        (ts(base + 100_000_000, 0), &[]),
        (ts(base + 900_000_000, 0), &[]),
        (ts(base + 500_000_000, 0), &[]),
    ]);
    assert_eq!(
        reasons(&snaps, &policy(|p| p.last = 1), far_future()),
        ["", "last snapshot", ""]
    );
    assert_eq!(
        reasons(&snaps, &policy(|p| p.last = 2), far_future()),
        ["", "last snapshot", "last snapshot"]
    );
    // Same hour: the newest (.9) is the hourly one, .1 is the oldest with count left.
    assert_eq!(
        reasons(&snaps, &policy(|p| p.hourly = 3), far_future()),
        ["oldest hourly snapshot", "hourly snapshot", ""]
    );
    // keep-within works at nanosecond resolution: exactly latest - 1h is out, 1 ns later is in.
    let latest = base + 900_000_000;
    let edge = list(&[
        (ts(latest - HOUR, 0), &[]),
        (ts(latest - HOUR + 1, 0), &[]),
        (ts(latest, 0), &[]),
    ]);
    let within = policy(|p| p.within = Duration::parse("1h").unwrap());
    assert_eq!(
        reasons(&edge, &within, far_future()),
        ["", "within 1h", "within 1h"]
    );
}

#[test]
fn snapshot_from_the_future_does_not_move_the_window() {
    let now = at("2024-06-01T12:00:00+00:00").unix_nanos;
    let snaps = list(&[
        (ts(now - 10 * DAY, 0), &[]),
        (ts(now - 2 * DAY, 0), &[]),
        (ts(now + 5 * DAY, 0), &[]),
    ]);
    let within = policy(|p| p.within = Duration::parse("3d").unwrap());
    // Window: (now - 2d) - 3d = now - 5d, not (now + 5d) - 3d.
    assert_eq!(
        reasons(&snaps, &within, now),
        ["", "within 3d", "within 3d"]
    );
    // The same with the future snapshot moved into the past: it becomes the latest.
    let past = list(&[
        (ts(now - 10 * DAY, 0), &[]),
        (ts(now - 2 * DAY, 0), &[]),
        (ts(now - DAY, 0), &[]),
    ]);
    assert_eq!(reasons(&past, &within, now), ["", "within 3d", "within 3d"]);
    let within_daily = policy(|p| p.within_daily = Duration::parse("3d").unwrap());
    assert_eq!(
        reasons(&snaps, &within_daily, now),
        ["", "daily within 3d", "daily within 3d"]
    );
    // Only future snapshots: no latest, nothing is within anything; nothing panics.
    let future = list(&[(ts(now + DAY, 0), &[]), (ts(now + 2 * DAY, 0), &[])]);
    assert_eq!(reasons(&future, &within, now), ["", ""]);
}

#[test]
fn empty_policy_keeps_everything() {
    let snaps = list(&[
        (at("2024-05-01T09:00:00+00:00"), &[]),
        (at("2024-05-02T09:00:00+00:00"), &["x"]),
    ]);
    assert!(Policy::default().is_empty());
    let d = apply_policy(&snaps, &Policy::default(), far_future());
    assert_eq!(
        d.iter().map(|d| d.id).collect::<Vec<_>>(),
        [snaps[1].0, snaps[0].0],
        "newest first"
    );
    for d in &d {
        assert!(d.keep);
        assert_eq!(d.reasons, ["policy is empty"]);
    }
    // A zero duration or a count of 0 is no rule either.
    let zero = policy(|p| {
        p.within = Duration::parse("0d").unwrap();
        p.daily = 0;
    });
    assert!(zero.is_empty());
    assert!(apply_policy(&[], &policy(|p| p.last = 1), far_future()).is_empty());
}

#[test]
fn unlimited_counts() {
    assert_eq!(parse_count("unlimited").unwrap(), -1);
    assert_eq!(parse_count("-1").unwrap(), -1);
    assert_eq!(parse_count("0").unwrap(), 0);
    assert_eq!(parse_count("7").unwrap(), 7);
    for bad in ["-2", "", "many", "1.5", "Unlimited"] {
        assert!(parse_count(bad).is_err(), "{bad:?}");
    }
    let snaps: Vec<(Id, Snapshot)> = (0..10)
        .map(|i| {
            (
                id_of(2000 + i),
                snapshot(
                    ts(
                        at("2024-01-01T00:00:00+00:00").unix_nanos + i as i64 * HOUR,
                        0,
                    ),
                    "h",
                    &[],
                ),
            )
        })
        .collect();
    let d = apply_policy(&snaps, &policy(|p| p.last = -1), far_future());
    assert!(d.iter().all(|d| d.reasons == ["last snapshot"]), "{d:?}");
    // Unlimited daily over one day: the newest, plus the oldest.
    let mut want = vec![String::new(); 10];
    want[0] = "oldest daily snapshot".into(); // input order: oldest first
    want[9] = "daily snapshot".into();
    assert_eq!(
        reasons(&snaps, &policy(|p| p.daily = -1), far_future()),
        want
    );
}

#[test]
fn iso_week_at_the_year_boundary() {
    let weekly = policy(|p| p.weekly = 10);
    // 2024-12-29 is Sunday of 2024-W52; Monday 2024-12-30 .. Sunday 2025-01-05 is 2025-W01.
    let snaps = list(&[
        (at("2024-12-29T12:00:00+00:00"), &[]),
        (at("2024-12-30T12:00:00+00:00"), &[]),
        (at("2025-01-05T12:00:00+00:00"), &[]),
        (at("2025-01-06T12:00:00+00:00"), &[]),
    ]);
    assert_eq!(
        reasons(&snaps, &weekly, far_future()),
        ["weekly snapshot", "", "weekly snapshot", "weekly snapshot"]
    );
    // 2020-W53 runs from 2020-12-28 to 2021-01-03, across the calendar year.
    let w53 = list(&[
        (at("2020-12-31T12:00:00+00:00"), &[]),
        (at("2021-01-03T12:00:00+00:00"), &[]),
        (at("2021-01-04T12:00:00+00:00"), &[]),
    ]);
    assert_eq!(
        reasons(&w53, &weekly, far_future()),
        [
            "oldest weekly snapshot",
            "weekly snapshot",
            "weekly snapshot"
        ]
    );
    assert_eq!(
        reasons(&w53, &policy(|p| p.weekly = 2), far_future()),
        ["", "weekly snapshot", "weekly snapshot"]
    );
    // Years are calendar years: 2021-01-03 and -04 share 2021, 2020-12-31 is 2020.
    assert_eq!(
        reasons(&w53, &policy(|p| p.yearly = 1), far_future()),
        ["", "", "yearly snapshot"]
    );
    assert_eq!(
        reasons(&w53, &policy(|p| p.yearly = 2), far_future()),
        ["yearly snapshot", "", "yearly snapshot"]
    );
    // The week is that of the snapshot's own offset: 23:30 -05:00 on Sunday 2024-12-29 is
    // Monday 04:30 UTC (2025-W01) but stays in 2024-W52; 02:00 +00:00 Monday is 2025-W01.
    let by_offset = list(&[
        (at("2024-12-20T12:00:00+00:00"), &[]), // 2024-W51
        (at("2024-12-30T02:00:00+00:00"), &[]), // 2025-W01
        (at("2024-12-29T23:30:00-05:00"), &[]), // newest, 2024-W52 locally
    ]);
    assert_eq!(
        reasons(&by_offset, &weekly, far_future()),
        ["weekly snapshot", "weekly snapshot", "weekly snapshot"]
    );
}

#[test]
fn day_is_the_snapshots_own_local_day() {
    let daily = policy(|p| p.daily = 10);
    let older = (at("2024-06-01T12:00:00+00:00"), &[] as &[&str]);
    // 23:30 -05:00 on June 10 is 04:30 UTC on June 11. 04:00 +00:00 on June 11 (30 min earlier)
    // is a different local day: both are the newest of their day.
    let different = list(&[
        older,
        (at("2024-06-11T04:00:00+00:00"), &[]),
        (at("2024-06-10T23:30:00-05:00"), &[]),
    ]);
    assert_eq!(
        reasons(&different, &daily, far_future()),
        ["daily snapshot", "daily snapshot", "daily snapshot"]
    );
    // 23:00 +00:00 on June 10 is a different UTC day from 04:30Z June 11, but the same local day
    // (June 10) as 23:30 -05:00: only the newer is the daily one.
    let same = list(&[
        older,
        (at("2024-06-10T23:00:00+00:00"), &[]),
        (at("2024-06-10T23:30:00-05:00"), &[]),
    ]);
    assert_eq!(
        reasons(&same, &daily, far_future()),
        ["daily snapshot", "", "daily snapshot"]
    );
    // The very same instant written in two offsets is two local days; the tie goes by id.
    let a = at("2024-06-10T23:30:00-05:00");
    let b = at("2024-06-11T04:30:00+00:00");
    assert_eq!(a.unix_nanos, b.unix_nanos);
    let instant = list(&[older, (a, &[]), (b, &[])]);
    assert_eq!(
        reasons(&instant, &daily, far_future()),
        ["daily snapshot", "daily snapshot", "daily snapshot"]
    );
    // Hourly in +05:30: 10:20 and 10:40 local share an hour although they straddle 05:00 UTC
    // (04:50Z and 05:10Z).
    let half = list(&[
        older,
        (at("2024-06-10T10:20:00+05:30"), &[]),
        (at("2024-06-10T10:40:00+05:30"), &[]),
    ]);
    assert_eq!(
        reasons(&half, &policy(|p| p.hourly = 2), far_future()),
        ["hourly snapshot", "", "hourly snapshot"]
    );
}

#[test]
fn keep_within_uses_go_add_date_normalization() {
    // Latest 2024-03-31 10:00 -04:00; minus 1 month = "Feb 31" = Mar 2 10:00 -04:00 (leap year).
    let snaps = list(&[
        (at("2024-03-01T12:00:00-04:00"), &[]),
        (at("2024-03-02T10:00:00-04:00"), &[]), // exactly on the edge: out
        (at("2024-03-02T10:00:01-04:00"), &[]),
        (at("2024-03-31T10:00:00-04:00"), &[]),
    ]);
    let m1 = policy(|p| p.within = Duration::parse("1m").unwrap());
    assert_eq!(
        reasons(&snaps, &m1, far_future()),
        ["", "", "within 1m", "within 1m"]
    );
    // Hours are exact, after the calendar part: 1m2h reaches back to Mar 2 08:00.
    let m1h2 = policy(|p| p.within = Duration::parse("1m2h").unwrap());
    assert_eq!(
        reasons(&snaps, &m1h2, far_future()),
        ["", "within 1m2h", "within 1m2h", "within 1m2h"]
    );
}

#[test]
fn keep_tag_needs_all_tags_of_a_list() {
    let snaps = list(&[
        (at("2024-05-01T09:00:00+00:00"), &["a"]),
        (at("2024-05-02T09:00:00+00:00"), &["a", "b"]),
        (at("2024-05-03T09:00:00+00:00"), &["b", "c"]),
    ]);
    let ab = policy(|p| p.tags = vec![vec!["a".into(), "b".into()]]);
    assert_eq!(reasons(&snaps, &ab, far_future()), ["", "has tags a,b", ""]);
    let a_or_c = policy(|p| p.tags = vec![vec!["a".into()], vec!["c".into()]]);
    assert_eq!(
        reasons(&snaps, &a_or_c, far_future()),
        ["has tags a", "has tags a", "has tags c"]
    );
}

#[test]
fn duration_parsing() {
    assert_eq!(
        Duration::parse("2y5m7d3h").unwrap(),
        Duration {
            years: 2,
            months: 5,
            days: 7,
            hours: 3
        }
    );
    assert_eq!(
        Duration::parse("3h2y").unwrap(),
        Duration {
            years: 2,
            hours: 3,
            ..Duration::default()
        }
    );
    assert_eq!(Duration::parse("36h").unwrap().to_string(), "36h");
    assert_eq!(Duration::parse("1y2m").unwrap().to_string(), "1y2m");
    assert!(Duration::parse("0d").unwrap().is_zero());
    for bad in [
        "",
        "5",
        "5w",
        "y",
        "1y2",
        "-1d",
        "1.5d",
        " 1d",
        "1d ",
        "1D",
        "99999999999d",
        "1 d",
    ] {
        assert!(Duration::parse(bad).is_err(), "{bad:?} should not parse");
    }
}

#[test]
fn group_by_parsing() {
    let g = GroupBy::parse("").unwrap();
    assert!(!g.host && !g.paths && !g.tags);
    let g = GroupBy::parse("host,tags").unwrap();
    assert!(g.host && !g.paths && g.tags);
    assert!(GroupBy::parse("host,foo").is_err());
}
