//! Small helpers: identity of this process, clocks.

use cairn_format::Timestamp;

/// This machine's host name.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// The effective user's name, or the uid as text.
pub fn username() -> String {
    let uid = nix::unistd::geteuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

/// Now, with the local UTC offset.
pub fn now_timestamp() -> Timestamp {
    let now = jiff::Zoned::now();
    Timestamp {
        unix_nanos: now.timestamp().as_nanosecond() as i64,
        utc_offset_secs: now.offset().seconds(),
    }
}

/// Format a timestamp in its own offset, `YYYY-MM-DD HH:MM:SS`.
pub fn format_timestamp(t: &Timestamp) -> String {
    to_zoned(t)
        .map(|z| z.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| t.unix_nanos.to_string())
}

/// RFC 3339 with offset.
pub fn rfc3339(t: &Timestamp) -> String {
    to_zoned(t)
        .map(|z| z.strftime("%Y-%m-%dT%H:%M:%S%.f%:z").to_string())
        .unwrap_or_else(|| t.unix_nanos.to_string())
}

/// The timestamp as a zoned datetime in its recorded fixed offset.
pub fn to_zoned(t: &Timestamp) -> Option<jiff::Zoned> {
    let ts = jiff::Timestamp::from_nanosecond(i128::from(t.unix_nanos)).ok()?;
    let off = jiff::tz::Offset::from_seconds(t.utc_offset_secs).ok()?;
    Some(ts.to_zoned(jiff::tz::TimeZone::fixed(off)))
}

/// Parse `--time` values: RFC 3339 / `YYYY-MM-DD HH:MM:SS` (local time).
pub fn parse_time(s: &str) -> Option<Timestamp> {
    if let Ok(ts) = s.parse::<jiff::Zoned>() {
        return Some(Timestamp {
            unix_nanos: ts.timestamp().as_nanosecond() as i64,
            utc_offset_secs: ts.offset().seconds(),
        });
    }
    if let Ok(ts) = s.parse::<jiff::Timestamp>() {
        let z = ts.to_zoned(jiff::tz::TimeZone::system());
        return Some(Timestamp {
            unix_nanos: ts.as_nanosecond() as i64,
            utc_offset_secs: z.offset().seconds(),
        });
    }
    let dt = s.parse::<jiff::civil::DateTime>().ok()?;
    let z = dt.to_zoned(jiff::tz::TimeZone::system()).ok()?;
    Some(Timestamp {
        unix_nanos: z.timestamp().as_nanosecond() as i64,
        utc_offset_secs: z.offset().seconds(),
    })
}
