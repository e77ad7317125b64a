//! Maintenance windows: when a rollout may send deploys. Written like a cron day field
//! plus a time range, one or more separated by `;`, with an optional UTC offset at the end:
//!
//! ```text
//! mon-fri 02:00-05:00
//! sat,sun 00:00-24:00; mon-fri 22:00-06:00 UTC+01:00
//! * 01:30-04:00
//! ```
//!
//! A range whose end is before its start runs past midnight (and belongs to the day it
//! starts on). Times are in the window's offset (UTC by default): devices do not report
//! their time zone, so a fleet spread over several zones gets one window per zone
//! (one rollout per zone's label selector).

use std::fmt;

const MINUTES_PER_DAY: i64 = 24 * 60;
const MINUTES_PER_WEEK: i64 = 7 * MINUTES_PER_DAY;
const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
/// Most ranges in one window: enough for any weekly plan written by hand.
const MAX_RANGES: usize = 32;

/// One allowed range: on the days set in `days` (bit 0 = Monday), from `start` for `len`
/// minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    days: u8,
    start: u16,
    len: u16,
}

/// A parsed maintenance window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    text: String,
    ranges: Vec<Range>,
    /// Minutes east of UTC.
    offset_min: i32,
}

/// Why a window does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("maintenance window {text:?}: {why} (write e.g. \"mon-fri 02:00-05:00 UTC+01:00\")")]
pub struct WindowError {
    text: String,
    why: String,
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl serde::Serialize for Window {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Window {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Window {
    /// Parses a window; see the module documentation for the syntax.
    pub fn parse(text: &str) -> Result<Self, WindowError> {
        let fail = |why: String| WindowError {
            text: text.chars().take(200).collect(),
            why,
        };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(fail("it is empty".into()));
        }
        let (body, offset_min) = split_offset(trimmed).map_err(&fail)?;
        let mut ranges = Vec::new();
        for part in body.split(';').map(str::trim) {
            let mut words = part.split_whitespace();
            let (Some(days), Some(times), None) = (words.next(), words.next(), words.next()) else {
                return Err(fail(format!("{part:?} is not \"DAYS HH:MM-HH:MM\"")));
            };
            let days = parse_days(days).map_err(&fail)?;
            let (start, end) = times
                .split_once('-')
                .ok_or_else(|| fail(format!("{times:?} is not HH:MM-HH:MM")))?;
            let start = parse_time(start).map_err(&fail)?;
            let end = parse_time(end).map_err(&fail)?;
            if start == end {
                return Err(fail(format!("{times:?} is empty")));
            }
            let len = if end > start {
                end - start
            } else {
                24 * 60 - start + end
            };
            ranges.push(Range { days, start, len });
        }
        if ranges.len() > MAX_RANGES {
            return Err(fail(format!("more than {MAX_RANGES} ranges")));
        }
        Ok(Self {
            text: trimmed.to_owned(),
            ranges,
            offset_min,
        })
    }

    /// Is `now_ms` (Unix milliseconds) inside the window?
    pub fn contains(&self, now_ms: i64) -> bool {
        let m = self.week_minute(now_ms);
        self.ranges.iter().any(|r| covers(r, m))
    }

    /// The next time the window opens after `now_ms` (or `now_ms` when it is open).
    pub fn next_open_ms(&self, now_ms: i64) -> i64 {
        if self.contains(now_ms) {
            return now_ms;
        }
        let into_minute = now_ms.rem_euclid(60_000);
        let base = now_ms - into_minute;
        let m = self.week_minute(now_ms);
        // Every range starts at a whole minute, so the first open minute within a week is
        // the next opening.
        for step in 1..=MINUTES_PER_WEEK {
            let at = (m + step).rem_euclid(MINUTES_PER_WEEK);
            if self.ranges.iter().any(|r| covers(r, at)) {
                return base + step * 60_000;
            }
        }
        // Unreachable for a parsed window (every range has a day and a length); a week
        // later is a safe answer either way.
        base + MINUTES_PER_WEEK * 60_000
    }

    /// Minutes since Monday 00:00 in the window's offset.
    fn week_minute(&self, now_ms: i64) -> i64 {
        let minutes = now_ms.div_euclid(60_000) + i64::from(self.offset_min);
        // 1970-01-01 was a Thursday: day 3 counting Monday as 0.
        (minutes + 3 * MINUTES_PER_DAY).rem_euclid(MINUTES_PER_WEEK)
    }
}

/// Does range `r` cover minute `m` of the week?
fn covers(r: &Range, m: i64) -> bool {
    (0..7).any(|day| {
        if r.days & (1 << day) == 0 {
            return false;
        }
        let start = day * MINUTES_PER_DAY + i64::from(r.start);
        let since = (m - start).rem_euclid(MINUTES_PER_WEEK);
        since < i64::from(r.len)
    })
}

fn split_offset(text: &str) -> Result<(&str, i32), String> {
    let Some((body, last)) = text.rsplit_once(char::is_whitespace) else {
        return Ok((text, 0));
    };
    let upper = last.to_ascii_uppercase();
    let Some(rest) = upper.strip_prefix("UTC") else {
        return Ok((text, 0));
    };
    if rest.is_empty() {
        return Ok((body.trim_end(), 0));
    }
    let (sign, hm) = match rest.split_at(1) {
        ("+", hm) => (1, hm),
        ("-", hm) => (-1, hm),
        _ => return Err(format!("{last:?} is not an offset like UTC+01:00")),
    };
    let minutes = parse_time(hm).ok().filter(|m| *m <= 14 * 60);
    let minutes = minutes.ok_or_else(|| format!("{last:?} is not an offset like UTC+01:00"))?;
    Ok((body.trim_end(), sign * i32::from(minutes)))
}

fn parse_days(field: &str) -> Result<u8, String> {
    if field == "*" {
        return Ok(0x7f);
    }
    let day = |name: &str| -> Result<u8, String> {
        let lower = name.to_ascii_lowercase();
        DAY_NAMES
            .iter()
            .position(|d| *d == lower)
            .and_then(|i| u8::try_from(i).ok())
            .ok_or_else(|| format!("{name:?} is not a day (mon … sun, or *)"))
    };
    let mut mask = 0u8;
    for item in field.split(',') {
        match item.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (day(from)?, day(to)?);
                let mut d = from;
                loop {
                    mask |= 1 << d;
                    if d == to {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => mask |= 1 << day(item)?,
        }
    }
    Ok(mask)
}

/// `HH:MM`, 00:00 to 24:00, as minutes.
fn parse_time(text: &str) -> Result<u16, String> {
    let bad = || format!("{text:?} is not a time HH:MM");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u16 = h.parse().map_err(|_| bad())?;
    let m: u16 = m.parse().map_err(|_| bad())?;
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Monday 2026-12-07 00:00 UTC.
    const MONDAY: i64 = 1_796_601_600_000;
    const HOUR: i64 = 3_600_000;

    #[test]
    fn the_reference_monday_is_a_monday() {
        let w = Window::parse("mon 00:00-01:00").unwrap();
        assert!(w.contains(MONDAY));
        assert!(!w.contains(MONDAY - 1));
        assert!(!w.contains(MONDAY + HOUR));
    }

    #[test]
    fn ranges_days_midnight_and_offsets() {
        let w = Window::parse("mon-fri 22:00-06:00").unwrap();
        assert!(w.contains(MONDAY + 23 * HOUR));
        assert!(
            w.contains(MONDAY + 24 * HOUR + 5 * HOUR),
            "runs past midnight"
        );
        assert!(
            !w.contains(MONDAY + 3 * HOUR),
            "Monday 03:00 belongs to Sunday's night"
        );
        assert!(
            w.contains(MONDAY + 5 * 24 * HOUR + 2 * HOUR),
            "Saturday 02:00, from Friday"
        );
        assert!(!w.contains(MONDAY + 5 * 24 * HOUR + 23 * HOUR));
        let east = Window::parse("mon 02:00-03:00 UTC+02:00").unwrap();
        assert!(east.contains(MONDAY), "02:00 at UTC+2 is 00:00 UTC");
        assert!(!east.contains(MONDAY + 2 * HOUR));
        let wrap = Window::parse("sun-tue 10:00-11:00; * 23:30-23:45 utc").unwrap();
        assert!(wrap.contains(MONDAY + 10 * HOUR));
        assert!(wrap.contains(MONDAY - 14 * HOUR), "Sunday 10:00");
        assert!(wrap.contains(MONDAY + 3 * 24 * HOUR + 23 * HOUR + 40 * 60_000));
        let all = Window::parse("* 00:00-24:00").unwrap();
        assert!(all.contains(MONDAY + 17 * HOUR + 123));
    }

    #[test]
    fn the_next_opening() {
        let w = Window::parse("tue 02:00-03:00").unwrap();
        assert_eq!(w.next_open_ms(MONDAY + 30_000), MONDAY + 26 * HOUR);
        assert_eq!(w.next_open_ms(MONDAY + 26 * HOUR), MONDAY + 26 * HOUR);
        assert_eq!(
            w.next_open_ms(MONDAY + 27 * HOUR),
            MONDAY + (7 * 24 + 26) * HOUR,
            "a week later"
        );
    }

    #[test]
    fn bad_windows_are_named() {
        for bad in [
            "",
            "mon",
            "mon 02:00",
            "funday 01:00-02:00",
            "mon 25:00-26:00",
            "mon 01:00-01:00",
            "mon 1:0-2:00",
            "mon 01:00-02:00 UTC+15:00",
            "mon 01:00-02:00 UTC*01:00",
            "mon 01:00-02:00 extra",
        ] {
            let e = Window::parse(bad).unwrap_err();
            assert!(e.to_string().contains("maintenance window"), "{bad:?}: {e}");
        }
    }
}
