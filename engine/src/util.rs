//! Small helpers: identity of this process, clocks.

use cairn_format::Timestamp;

/// This machine's host name.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// The tag of a writer in the names of the temporary files it creates (`.tmp-<tag>-…`):
/// `w`, 8 hex digits of the BLAKE3 of its host name, 8 hex digits of its pid. A repository
/// lock records the same host and pid, so a temporary file can be tied to the lock of the
/// process writing it: `prune` removes at once every temporary file whose writer holds no
/// live lock and (on this host) is not running, and never touches a running writer's.
pub fn writer_tag(host: &str, pid: u32) -> String {
    let h = blake3::hash(host.as_bytes());
    let b = h.as_bytes();
    format!("w{:02x}{:02x}{:02x}{:02x}{pid:08x}", b[0], b[1], b[2], b[3])
}

/// [`writer_tag`] of this process.
pub fn my_writer_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| writer_tag(&hostname(), std::process::id()))
}

/// The writer tag in a temporary file's name, if it has one (files of older versions don't).
pub fn temp_file_writer(file_name: &str) -> Option<&str> {
    let rest = file_name.strip_prefix(".tmp-")?;
    let tag = rest.get(..17)?;
    let ok = tag.starts_with('w')
        && tag[1..].bytes().all(|b| b.is_ascii_hexdigit())
        && rest.as_bytes().get(17) == Some(&b'-');
    ok.then_some(tag)
}

/// Whether the writer with `tag` runs (or ran) on this host.
pub fn writer_is_local(tag: &str) -> bool {
    tag.len() == 17 && tag[..9] == my_writer_tag()[..9]
}

/// Whether the writer with `tag` is a process on this host that is still running.
pub fn local_writer_alive(tag: &str) -> bool {
    let mine = my_writer_tag();
    if tag.len() != 17 || tag[..9] != mine[..9] {
        return false;
    }
    let Ok(pid) = u32::from_str_radix(&tag[9..], 16) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None),
        Err(nix::errno::Errno::ESRCH)
    )
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

/// Parse a wait such as `--retry-lock`'s: `0`, `90s`, `5m`, `1h30m`, `2h`, `500ms` (Go's
/// duration syntax, as restic takes it, without fractions).
pub fn parse_wait(s: &str) -> crate::Result<std::time::Duration> {
    let bad = || {
        crate::Error::Invalid(format!(
            "invalid duration {s:?}: use e.g. 0, 30s, 5m, 1h30m"
        ))
    };
    let t = s.trim();
    if t == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let mut total = std::time::Duration::ZERO;
    let mut rest = t;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let one = match unit {
            "h" => std::time::Duration::from_secs(3600),
            "m" => std::time::Duration::from_secs(60),
            "s" => std::time::Duration::from_secs(1),
            "ms" => std::time::Duration::from_millis(1),
            _ => return Err(bad()),
        };
        total = total
            .checked_add(
                one.checked_mul(u32::try_from(n).map_err(|_| bad())?)
                    .ok_or_else(bad)?,
            )
            .ok_or_else(bad)?;
    }
    Ok(total)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn waits() {
        assert_eq!(parse_wait("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_wait("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_wait("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_wait("500ms").unwrap(), Duration::from_millis(500));
        for bad in ["", "5", "m", "5x", "1h-2m", "-1s"] {
            assert!(parse_wait(bad).is_err(), "{bad}");
        }
    }
}
