//! Retention policies with restic's semantics, so policies carried over from restic keep
//! exactly the same snapshots.
//!
//! - Snapshots of a group are taken newest first.
//! - Rules are OR-ed: a snapshot is kept if any rule wants it.
//! - `--keep-last/hourly/daily/weekly/monthly/yearly N` each keep the newest snapshot of each
//!   bucket (hour, day, ISO week, month, year in the snapshot's own recorded UTC offset), for
//!   the first N buckets that hold a snapshot; each rule has its own counter; `-1` = unlimited.
//!   When a rule still has count left at the group's oldest snapshot, that one is kept too.
//! - `--keep-within D` keeps everything newer than (newest snapshot − D), where D is
//!   `NyNmNdNh` and the date arithmetic normalizes like Go's `AddDate` (Mar 31 − 1 month =
//!   Mar 3), as restic does; `--keep-within-{hourly,…} D` keep the newest of each bucket
//!   within D.
//! - `--keep-tag a,b` keeps snapshots that carry all of a and b (rule repeatable).

use std::collections::BTreeMap;
use std::fmt;

use cairn_format::{Id, Snapshot, Timestamp};
use serde::Serialize;

use crate::util::to_zoned;
use crate::{Error, Result};

/// A `NyNmNdNh` duration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Duration {
    /// Years.
    pub years: i32,
    /// Months.
    pub months: i32,
    /// Days.
    pub days: i32,
    /// Hours.
    pub hours: i32,
}

impl Duration {
    /// Parse `2y5m7d3h` (any subset, in any order; digits before each unit).
    pub fn parse(s: &str) -> Result<Duration> {
        let mut d = Duration::default();
        let mut num = String::new();
        if s.is_empty() {
            return Err(Error::Invalid("empty duration".into()));
        }
        for c in s.chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let n: i32 = num.parse().map_err(|_| {
                Error::Invalid(format!("invalid duration {s:?}: expected e.g. 2y5m7d3h"))
            })?;
            num.clear();
            match c {
                'y' => d.years = n,
                'm' => d.months = n,
                'd' => d.days = n,
                'h' => d.hours = n,
                _ => {
                    return Err(Error::Invalid(format!(
                        "invalid duration {s:?}: unknown unit {c:?} (use y, m, d, h)"
                    )))
                }
            }
        }
        if !num.is_empty() {
            return Err(Error::Invalid(format!(
                "invalid duration {s:?}: number {num} has no unit"
            )));
        }
        Ok(d)
    }

    /// All zero.
    pub fn is_zero(&self) -> bool {
        *self == Duration::default()
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut any = false;
        for (n, u) in [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if n != 0 {
                write!(f, "{n}{u}")?;
                any = true;
            }
        }
        if !any {
            f.write_str("0h")?;
        }
        Ok(())
    }
}

/// A retention policy. Counts: 0 = rule off, -1 = unlimited.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Policy {
    /// `--keep-last`.
    pub last: i64,
    /// `--keep-hourly`.
    pub hourly: i64,
    /// `--keep-daily`.
    pub daily: i64,
    /// `--keep-weekly`.
    pub weekly: i64,
    /// `--keep-monthly`.
    pub monthly: i64,
    /// `--keep-yearly`.
    pub yearly: i64,
    /// `--keep-within`.
    pub within: Duration,
    /// `--keep-within-hourly`.
    pub within_hourly: Duration,
    /// `--keep-within-daily`.
    pub within_daily: Duration,
    /// `--keep-within-weekly`.
    pub within_weekly: Duration,
    /// `--keep-within-monthly`.
    pub within_monthly: Duration,
    /// `--keep-within-yearly`.
    pub within_yearly: Duration,
    /// `--keep-tag` lists.
    pub tags: Vec<Vec<String>>,
}

/// `--keep-tag` values (`a,b` keeps snapshots with both tags) as tag lists.
pub fn parse_keep_tags(values: &[String]) -> Vec<Vec<String>> {
    values
        .iter()
        .map(|t| {
            t.split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

impl Policy {
    /// No rule at all.
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.within.is_zero()
            && self.within_hourly.is_zero()
            && self.within_daily.is_zero()
            && self.within_weekly.is_zero()
            && self.within_monthly.is_zero()
            && self.within_yearly.is_zero()
            && self.tags.is_empty()
    }
}

/// Parse a count: `N` or `unlimited`.
pub fn parse_count(s: &str) -> Result<i64> {
    if s == "unlimited" {
        return Ok(-1);
    }
    match s.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(n),
        // restic accepts -1 for unlimited too.
        Ok(-1) => Ok(-1),
        _ => Err(Error::Invalid(format!(
            "invalid count {s:?}: a number or `unlimited`"
        ))),
    }
}

/// The decision for one snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    /// Snapshot id.
    pub id: Id,
    /// Kept?
    pub keep: bool,
    /// Which rules matched (empty when removed).
    pub reasons: Vec<String>,
}

#[derive(Clone, Copy)]
enum Bucket {
    Always,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

/// The bucket value of `t` in its own UTC offset.
fn bucket(kind: Bucket, t: &Timestamp, nr: usize) -> i64 {
    let Some(z) = to_zoned(t) else {
        return nr as i64;
    };
    let (y, m, d, h) = (
        i64::from(z.year()),
        i64::from(z.month()),
        i64::from(z.day()),
        i64::from(z.hour()),
    );
    match kind {
        Bucket::Always => nr as i64,
        Bucket::Hour => y * 1_000_000 + m * 10_000 + d * 100 + h,
        Bucket::Day => y * 10_000 + m * 100 + d,
        Bucket::Week => {
            let iso = z.date().iso_week_date();
            i64::from(iso.year()) * 100 + i64::from(iso.week())
        }
        Bucket::Month => y * 100 + m,
        Bucket::Year => y,
    }
}

/// `t − d` with Go `AddDate` normalization (day overflow rolls over), in `t`'s own offset,
/// as nanoseconds since the epoch.
fn sub_duration(t: &Timestamp, d: &Duration) -> i64 {
    let Some(z) = to_zoned(t) else {
        return t.unix_nanos;
    };
    let mut year = i64::from(z.year()) - i64::from(d.years);
    let mut month0 = i64::from(z.month()) - 1 - i64::from(d.months);
    year += month0.div_euclid(12);
    month0 = month0.rem_euclid(12);
    let day_offset = i64::from(z.day()) - 1 - i64::from(d.days);
    let Ok(first) = jiff::civil::Date::new(year as i16, (month0 + 1) as i8, 1) else {
        return i64::MIN;
    };
    let Ok(date) = first.checked_add(jiff::Span::new().days(day_offset)) else {
        return i64::MIN;
    };
    let dt = date.to_datetime(z.time());
    let Ok(zz) = dt.to_zoned(z.time_zone().clone()) else {
        return i64::MIN;
    };
    let nanos = zz.timestamp().as_nanosecond() as i64;
    nanos.saturating_sub(i64::from(d.hours) * 3_600_000_000_000)
}

/// Apply `policy` to one group. `snaps` may be in any order; decisions come newest first.
/// `now_nanos` bounds "latest" (a snapshot from the future does not move the window).
pub fn apply_policy(snaps: &[(Id, Snapshot)], policy: &Policy, now_nanos: i64) -> Vec<Decision> {
    let mut list: Vec<&(Id, Snapshot)> = snaps.iter().collect();
    list.sort_by(|a, b| {
        b.1.time
            .unix_nanos
            .cmp(&a.1.time.unix_nanos)
            .then(b.0.cmp(&a.0))
    });
    if policy.is_empty() {
        return list
            .iter()
            .map(|(id, _)| Decision {
                id: *id,
                keep: true,
                reasons: vec!["policy is empty".into()],
            })
            .collect();
    }
    let latest = list
        .iter()
        .filter(|(_, s)| s.time.unix_nanos < now_nanos)
        .map(|(_, s)| s.time)
        .max_by_key(|t| t.unix_nanos)
        .unwrap_or(Timestamp {
            unix_nanos: i64::MIN,
            utc_offset_secs: 0,
        });
    let mut buckets = [
        (policy.last, Bucket::Always, None::<i64>, "last snapshot"),
        (policy.hourly, Bucket::Hour, None, "hourly snapshot"),
        (policy.daily, Bucket::Day, None, "daily snapshot"),
        (policy.weekly, Bucket::Week, None, "weekly snapshot"),
        (policy.monthly, Bucket::Month, None, "monthly snapshot"),
        (policy.yearly, Bucket::Year, None, "yearly snapshot"),
    ];
    let mut within = [
        (
            policy.within_hourly,
            Bucket::Hour,
            None::<i64>,
            "hourly within",
        ),
        (policy.within_daily, Bucket::Day, None, "daily within"),
        (policy.within_weekly, Bucket::Week, None, "weekly within"),
        (policy.within_monthly, Bucket::Month, None, "monthly within"),
        (policy.within_yearly, Bucket::Year, None, "yearly within"),
    ];
    let n = list.len();
    let mut out = Vec::with_capacity(n);
    for (nr, (id, s)) in list.iter().enumerate() {
        let mut reasons = Vec::new();
        for tags in &policy.tags {
            if tags.iter().all(|t| s.tags.contains(t)) {
                reasons.push(format!("has tags {}", tags.join(",")));
            }
        }
        if !policy.within.is_zero()
            && latest.unix_nanos != i64::MIN
            && s.time.unix_nanos > sub_duration(&latest, &policy.within)
        {
            reasons.push(format!("within {}", policy.within));
        }
        for b in &mut buckets {
            if b.0 > 0 || b.0 == -1 {
                let val = bucket(b.1, &s.time, nr);
                let oldest = nr == n - 1;
                if Some(val) != b.2 || oldest {
                    let reason = if Some(val) == b.2 {
                        format!("oldest {}", b.3)
                    } else {
                        b.3.to_owned()
                    };
                    b.2 = Some(val);
                    if b.0 > 0 {
                        b.0 -= 1;
                    }
                    reasons.push(reason);
                }
            }
        }
        for b in &mut within {
            if !b.0.is_zero()
                && latest.unix_nanos != i64::MIN
                && s.time.unix_nanos > sub_duration(&latest, &b.0)
            {
                let val = bucket(b.1, &s.time, nr);
                if Some(val) != b.2 {
                    b.2 = Some(val);
                    reasons.push(format!("{} {}", b.3, b.0));
                }
            }
        }
        out.push(Decision {
            id: *id,
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    out
}

/// How snapshots are grouped before the policy applies.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct GroupBy {
    /// By host.
    pub host: bool,
    /// By path set.
    pub paths: bool,
    /// By tag set.
    pub tags: bool,
}

impl GroupBy {
    /// Parse `host,paths,tags` (empty string = one group).
    pub fn parse(s: &str) -> Result<GroupBy> {
        let mut g = GroupBy::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "host" => g.host = true,
                "paths" => g.paths = true,
                "tags" => g.tags = true,
                other => {
                    return Err(Error::Invalid(format!(
                        "unknown --group-by field {other:?} (host, paths, tags)"
                    )))
                }
            }
        }
        Ok(g)
    }
}

/// The key of a group, for display.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct GroupKey {
    /// Host, when grouped by host.
    pub host: Option<String>,
    /// Paths, when grouped by paths.
    pub paths: Option<Vec<String>>,
    /// Tags, when grouped by tags.
    pub tags: Option<Vec<String>>,
}

/// Split snapshots into groups.
pub fn group(snaps: Vec<(Id, Snapshot)>, by: GroupBy) -> BTreeMap<GroupKey, Vec<(Id, Snapshot)>> {
    let mut out: BTreeMap<GroupKey, Vec<(Id, Snapshot)>> = BTreeMap::new();
    for (id, s) in snaps {
        let mut paths: Vec<String> = s
            .paths
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        paths.sort();
        let mut tags = s.tags.clone();
        tags.sort();
        let key = GroupKey {
            host: by.host.then(|| s.hostname.clone()),
            paths: by.paths.then_some(paths),
            tags: by.tags.then_some(tags),
        };
        out.entry(key).or_default().push((id, s));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            Duration::parse("2y5m7d3h").unwrap(),
            Duration {
                years: 2,
                months: 5,
                days: 7,
                hours: 3
            }
        );
        assert_eq!(Duration::parse("36h").unwrap().hours, 36);
        assert!(Duration::parse("5").is_err());
        assert!(Duration::parse("5w").is_err());
        assert!(Duration::parse("").is_err());
    }

    #[test]
    fn go_add_date_normalization() {
        // 2024-03-31 minus 1 month is 2024-03-02 in Go (Feb 31 normalizes to Mar 2 in a leap year).
        let t = crate::util::parse_time("2024-03-31T12:00:00+00:00[UTC]").unwrap();
        let got = sub_duration(
            &t,
            &Duration {
                months: 1,
                ..Duration::default()
            },
        );
        let want = crate::util::parse_time("2024-03-02T12:00:00+00:00[UTC]").unwrap();
        assert_eq!(got, want.unix_nanos);
    }
}
