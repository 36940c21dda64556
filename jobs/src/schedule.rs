//! Schedules: a cron expression in an IANA time zone, and the instants it fires at.
//!
//! Parsing is croner's (5 fields, or 6 with seconds first; `@hourly`-style shorthands; names,
//! ranges, lists, steps; `L`, `W`, `#`), with two checks of ours in front: a name must sit in its
//! own field (croner would read `MON` in the month field as January), and the expression must
//! fire at least once. croner then only answers "which wall-clock times match" — on naive local
//! times — and this module maps those to instants with one rule for every schedule:
//!
//! - a local time that occurs twice (the clock falls back) fires once, at its first occurrence;
//! - a local time that never occurs (the clock springs forward) fires at the first instant after
//!   the gap — and all the times of one gap coalesce into that one fire.
//!
//! (croner applies the rule only to schedules with fixed hours, minutes and seconds; with ours a
//! `*/15` schedule does not fire twice per quarter hour in the repeated hour.)

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

use crate::JobsError;

pub const MAX_EXPRESSION: usize = 256;

/// Loop bound of the searches: a repeated hour walked second by second is 3600 steps; the
/// longest repeated interval in the tz database is well under three hours.
const MAX_STEPS: usize = 20_000;

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

const SHORTHANDS: [(&str, &str); 7] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * SUN"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

/// A parsed, validated schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    expression: String,
    tz: Tz,
    cron: Cron,
}

fn bad(field: &str, reason: impl Into<String>) -> JobsError {
    JobsError::Invalid {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// An IANA time zone name (`Europe/Berlin`, `UTC`, `America/New_York`).
pub fn parse_zone(name: &str) -> Result<Tz, JobsError> {
    name.parse::<Tz>().map_err(|_| {
        bad(
            "time_zone",
            format!(
                "{:?} is not an IANA time zone name (such as \"UTC\" or \"Europe/Berlin\")",
                truncate(name)
            ),
        )
    })
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// croner's messages start with a capital letter and end with a period; ours do neither.
fn tidy(msg: &str) -> String {
    let msg = msg.trim().trim_end_matches('.');
    let mut c = msg.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Refuses letters outside the fields that take them: croner replaces names anywhere in the
/// expression, so `0 9 * MON *` would otherwise mean January.
fn check_names(fields: &[&str]) -> Result<(), String> {
    let offset = fields.len() - 5;
    let what = [
        "second",
        "minute",
        "hour",
        "day of month",
        "month",
        "day of week",
    ];
    for (i, field) in fields.iter().enumerate() {
        // Five fields have no second: they start at the minute.
        let name_of = what[i + 1 - offset];
        let upper = field.to_ascii_uppercase();
        let words = upper
            .split(|c: char| !c.is_ascii_alphabetic())
            .filter(|w| !w.is_empty());
        for w in words {
            let ok = match name_of {
                "month" => MONTHS.contains(&w),
                "day of week" => WEEKDAYS.contains(&w) || w == "L",
                "day of month" => w.chars().all(|c| c == 'L' || c == 'W'),
                _ => false,
            };
            if !ok {
                return Err(format!(
                    "{w:?} is not allowed in the {name_of} field (field {} of {})",
                    i + 1,
                    fields.len()
                ));
            }
        }
    }
    Ok(())
}

impl Schedule {
    /// Parses `expression` in the zone named `zone`; errors name the field (`schedule` or
    /// `time_zone`).
    pub fn new(expression: &str, zone: &str) -> Result<Self, JobsError> {
        let tz = parse_zone(zone)?;
        if expression.len() > MAX_EXPRESSION {
            return Err(bad(
                "schedule",
                format!("is longer than {MAX_EXPRESSION} bytes"),
            ));
        }
        if let Some(c) = expression
            .chars()
            .find(|c| !(c.is_ascii_graphic() || *c == ' ' || *c == '\t'))
        {
            return Err(bad(
                "schedule",
                format!("contains the character {c:?}: a cron expression is printable ASCII"),
            ));
        }
        let trimmed = expression.trim();
        let text = if trimmed.starts_with('@') {
            SHORTHANDS
                .iter()
                .find(|(s, _)| s.eq_ignore_ascii_case(trimmed))
                .map(|(_, e)| *e)
                .ok_or_else(|| {
                    bad(
                        "schedule",
                        format!(
                            "{trimmed:?} is not a supported shorthand (use one of {})",
                            SHORTHANDS.map(|(s, _)| s).join(", ")
                        ),
                    )
                })?
        } else {
            trimmed
        };
        let fields: Vec<&str> = text.split_whitespace().collect();
        if !(5..=6).contains(&fields.len()) {
            return Err(bad(
                "schedule",
                format!(
                    "{:?} has {} fields: use 5 (minute hour day-of-month month day-of-week), 6 \
                     (a second first) or a shorthand such as @hourly",
                    truncate(trimmed),
                    fields.len()
                ),
            ));
        }
        check_names(&fields).map_err(|m| bad("schedule", m))?;
        // croner accepts an empty list item (`,`, `1,`, `,5`) as a field that matches nothing,
        // and then searches for the next match without end (found by fuzz/api_bodies).
        if let Some(f) = fields
            .iter()
            .find(|f| f.split(',').any(|item| item.is_empty()))
        {
            return Err(bad(
                "schedule",
                format!(
                    "{:?}: the field {f:?} has an empty list item",
                    truncate(trimmed)
                ),
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(&fields.join(" "))
            .map_err(|e| {
                bad(
                    "schedule",
                    format!(
                        "{:?} is not a valid cron expression: {}",
                        truncate(trimmed),
                        tidy(&e.to_string())
                    ),
                )
            })?;
        // A fixed reference, so that validation does not depend on the day: any matching
        // calendar date recurs within 28 years (a 29 February on a given weekday).
        let reference = chrono::NaiveDate::from_ymd_opt(2001, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .expect("a valid date");
        if cron.find_next_occurrence(&reference, true).is_err() {
            return Err(bad(
                "schedule",
                format!("{:?} never fires (no date matches it)", truncate(trimmed)),
            ));
        }
        Ok(Self {
            expression: trimmed.to_owned(),
            tz,
            cron,
        })
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    pub fn zone(&self) -> Tz {
        self.tz
    }

    /// The first fire instant strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Every matching local time at or before t's own maps to an instant at or before t (the
        // rule keeps the mapping monotonic), so the search starts after it. Inside a repeated
        // hour on its second pass, the times after it map to its first pass: skip those.
        let mut cur = self.local_floor(t);
        for _ in 0..MAX_STEPS {
            let local = self.cron.find_next_occurrence(&cur, false).ok()?;
            let at = self.instant(local);
            if at > t {
                return Some(at);
            }
            cur = local;
        }
        None
    }

    /// The last fire instant at or before `t`.
    pub fn last_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let n = self.local_floor(t);
        // On the second pass of a repeated hour, the local times up to the end of that hour
        // fired (on the first pass) before t: start the backward search there.
        let start = match self.tz.from_local_datetime(&n) {
            LocalResult::Ambiguous(first, second) if second.to_utc() == floor_second(t) => {
                let shift = first.offset().fix().local_minus_utc()
                    - second.offset().fix().local_minus_utc();
                n + Duration::seconds(i64::from(shift))
            }
            _ => n,
        };
        let mut local = self.cron.find_previous_occurrence(&start, true).ok()?;
        for _ in 0..MAX_STEPS {
            let at = self.instant(local);
            if at <= t {
                return Some(at);
            }
            local = self.cron.find_previous_occurrence(&local, false).ok()?;
        }
        None
    }

    /// Counts the fire instants in `[from, to]`, stopping at `cap`.
    pub fn count_between(&self, from: DateTime<Utc>, to: DateTime<Utc>, cap: usize) -> usize {
        let mut n = 0;
        let mut t = from - Duration::nanoseconds(1);
        while n < cap {
            match self.next_after(t) {
                Some(x) if x <= to => {
                    n += 1;
                    t = x;
                }
                _ => break,
            }
        }
        n
    }

    /// t as a local time in the schedule's zone, to the whole second (croner's resolution).
    fn local_floor(&self, t: DateTime<Utc>) -> NaiveDateTime {
        floor_second(t).with_timezone(&self.tz).naive_local()
    }

    /// The instant a matching local time fires at (the rule in the module's documentation).
    fn instant(&self, local: NaiveDateTime) -> DateTime<Utc> {
        match self.tz.from_local_datetime(&local) {
            LocalResult::Single(t) => t.to_utc(),
            LocalResult::Ambiguous(first, _) => first.to_utc(),
            LocalResult::None => self.gap_end(local),
        }
    }

    /// The first instant whose local time is after `local`, a time inside a gap: the transition
    /// that skipped it. Local time rises with the instant except where the clock falls back, and
    /// no zone falls back within hours of springing forward, so a binary search over a window
    /// wider than any UTC offset finds it.
    fn gap_end(&self, local: NaiveDateTime) -> DateTime<Utc> {
        let as_utc = local.and_utc();
        let mut lo = as_utc - Duration::hours(17);
        let mut hi = as_utc + Duration::hours(17);
        let local_of = |t: DateTime<Utc>| t.with_timezone(&self.tz).naive_local();
        while hi - lo > Duration::seconds(1) {
            let mid = floor_second(lo + (hi - lo) / 2);
            if local_of(mid) > local {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    }
}

fn floor_second<T: Timelike + Clone>(t: T) -> T {
    t.clone().with_nanosecond(0).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    /// The first `n` fires after `from` (RFC 3339, UTC).
    fn fires(expr: &str, zone: &str, from: &str, n: usize) -> Vec<String> {
        let s = Schedule::new(expr, zone).unwrap_or_else(|e| panic!("{expr}: {e}"));
        let mut t = utc(from);
        let mut out = Vec::new();
        for _ in 0..n {
            t = s.next_after(t).unwrap();
            out.push(t.format("%Y-%m-%dT%H:%M:%SZ").to_string());
        }
        out
    }

    /// The same fires shown as local times with their offsets.
    fn local_fires(expr: &str, zone: &str, from: &str, n: usize) -> Vec<String> {
        let s = Schedule::new(expr, zone).unwrap();
        let mut t = utc(from);
        let mut out = Vec::new();
        for _ in 0..n {
            t = s.next_after(t).unwrap();
            out.push(
                t.with_timezone(&s.zone())
                    .format("%m-%d %H:%M:%S%:z")
                    .to_string(),
            );
        }
        out
    }

    fn err(expr: &str, zone: &str) -> String {
        Schedule::new(expr, zone).unwrap_err().to_string()
    }

    #[test]
    fn five_and_six_fields_steps_ranges_lists_names() {
        assert_eq!(
            fires("*/15 * * * *", "UTC", "2024-01-01T00:00:00Z", 3),
            [
                "2024-01-01T00:15:00Z",
                "2024-01-01T00:30:00Z",
                "2024-01-01T00:45:00Z"
            ]
        );
        assert_eq!(
            fires("*/20 * * * * *", "UTC", "2024-01-01T00:00:00Z", 4),
            [
                "2024-01-01T00:00:20Z",
                "2024-01-01T00:00:40Z",
                "2024-01-01T00:01:00Z",
                "2024-01-01T00:01:20Z"
            ]
        );
        assert_eq!(
            fires("5,35 * * * * *", "UTC", "2024-01-01T00:00:05Z", 2),
            ["2024-01-01T00:00:35Z", "2024-01-01T00:01:05Z"],
            "6 fields: the first is the second"
        );
        assert_eq!(
            fires("0 9-11 * * *", "UTC", "2024-01-01T09:30:00Z", 3),
            [
                "2024-01-01T10:00:00Z",
                "2024-01-01T11:00:00Z",
                "2024-01-02T09:00:00Z"
            ]
        );
        assert_eq!(
            fires("10-30/10 0 * * *", "UTC", "2024-01-01T00:00:00Z", 4),
            [
                "2024-01-01T00:10:00Z",
                "2024-01-01T00:20:00Z",
                "2024-01-01T00:30:00Z",
                "2024-01-02T00:10:00Z"
            ]
        );
        assert_eq!(
            fires("0 0 1,15 * *", "UTC", "2024-01-01T00:00:00Z", 3),
            [
                "2024-01-15T00:00:00Z",
                "2024-02-01T00:00:00Z",
                "2024-02-15T00:00:00Z"
            ]
        );
        // Names, in any case; weekdays Monday to Friday; months by name. 2024-01-01 is a Monday.
        assert_eq!(
            fires("30 8 * jan,Jul mon-FRI", "UTC", "2024-01-04T12:00:00Z", 3),
            [
                "2024-01-05T08:30:00Z",
                "2024-01-08T08:30:00Z",
                "2024-01-09T08:30:00Z"
            ]
        );
        assert_eq!(
            fires("0 0 * * 0", "UTC", "2024-01-01T00:00:00Z", 1),
            fires("0 0 * * 7", "UTC", "2024-01-01T00:00:00Z", 1),
            "0 and 7 are both Sunday"
        );
    }

    #[test]
    fn shorthands() {
        let from = "2024-01-01T00:30:00Z";
        let first = |e| fires(e, "UTC", from, 1).remove(0);
        assert_eq!(first("@hourly"), "2024-01-01T01:00:00Z");
        assert_eq!(first("@daily"), "2024-01-02T00:00:00Z");
        assert_eq!(first("@midnight"), "2024-01-02T00:00:00Z");
        assert_eq!(first("@weekly"), "2024-01-07T00:00:00Z", "sundays");
        assert_eq!(first("@monthly"), "2024-02-01T00:00:00Z");
        assert_eq!(first("@yearly"), "2025-01-01T00:00:00Z");
        assert_eq!(first("@ANNUALLY"), "2025-01-01T00:00:00Z");
    }

    #[test]
    fn leap_day() {
        assert_eq!(
            fires("0 12 29 2 *", "UTC", "2024-03-01T00:00:00Z", 2),
            ["2028-02-29T12:00:00Z", "2032-02-29T12:00:00Z"]
        );
        assert_eq!(
            fires("0 12 29 feb *", "Europe/Berlin", "2023-06-01T00:00:00Z", 1),
            ["2024-02-29T11:00:00Z"]
        );
        // The last day of February, leap or not.
        assert_eq!(
            fires("0 0 L 2 *", "UTC", "2023-01-01T00:00:00Z", 2),
            ["2023-02-28T00:00:00Z", "2024-02-29T00:00:00Z"]
        );
    }

    #[test]
    fn dst_forward_in_two_zones_fires_at_the_next_valid_instant() {
        // Berlin, 2024-03-31: 02:00 CET becomes 03:00 CEST; 02:30 never happens that day.
        assert_eq!(
            local_fires("30 2 * * *", "Europe/Berlin", "2024-03-29T12:00:00Z", 3),
            [
                "03-30 02:30:00+01:00",
                "03-31 03:00:00+02:00",
                "04-01 02:30:00+02:00"
            ]
        );
        // New York, 2024-03-10: 02:00 EST becomes 03:00 EDT.
        assert_eq!(
            local_fires("30 2 * * *", "America/New_York", "2024-03-09T12:00:00Z", 3),
            [
                "03-10 03:00:00-04:00",
                "03-11 02:30:00-04:00",
                "03-12 02:30:00-04:00"
            ]
        );
        // Every quarter hour across the gap: the gap's times coalesce into one fire at 03:00.
        assert_eq!(
            local_fires("*/15 * * * *", "Europe/Berlin", "2024-03-31T00:40:00Z", 4),
            [
                "03-31 01:45:00+01:00",
                "03-31 03:00:00+02:00",
                "03-31 03:15:00+02:00",
                "03-31 03:30:00+02:00"
            ]
        );
        // Every second: 01:59:59 CET, then 03:00:00 CEST.
        assert_eq!(
            local_fires("* * * * * *", "America/New_York", "2024-03-10T06:59:58Z", 2),
            ["03-10 01:59:59-05:00", "03-10 03:00:00-04:00"]
        );
        // A zone that moves by half an hour: Lord Howe, 2024-10-06 02:00 becomes 02:30.
        assert_eq!(
            local_fires(
                "15 2 * * *",
                "Australia/Lord_Howe",
                "2024-10-04T12:00:00Z",
                2
            ),
            ["10-05 02:15:00+10:30", "10-06 02:30:00+11:00"]
        );
    }

    #[test]
    fn dst_back_in_two_zones_fires_a_repeated_time_once() {
        // Berlin, 2024-10-27: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
        assert_eq!(
            local_fires("30 2 * * *", "Europe/Berlin", "2024-10-26T12:00:00Z", 2),
            ["10-27 02:30:00+02:00", "10-28 02:30:00+01:00"]
        );
        // New York, 2024-11-03: 02:00 EDT becomes 01:00 EST; 01:30 happens twice.
        assert_eq!(
            local_fires("30 1 * * *", "America/New_York", "2024-11-02T12:00:00Z", 2),
            ["11-03 01:30:00-04:00", "11-04 01:30:00-05:00"]
        );
        // Every half hour: the repeated hour is not run a second time.
        assert_eq!(
            local_fires(
                "*/30 * * * *",
                "America/New_York",
                "2024-11-03T04:50:00Z",
                5
            ),
            [
                "11-03 01:00:00-04:00",
                "11-03 01:30:00-04:00",
                "11-03 02:00:00-05:00",
                "11-03 02:30:00-05:00",
                "11-03 03:00:00-05:00"
            ]
        );
        // Asked during the second pass (a daemon started then): the next fire is after the
        // repeated hour, never a time it already had.
        let s = Schedule::new("*/10 * * * *", "Europe/Berlin").unwrap();
        let second_pass = utc("2024-10-27T01:05:00Z"); // 02:05 CET
        assert_eq!(
            s.next_after(second_pass).unwrap(),
            utc("2024-10-27T02:00:00Z"),
            "03:00 CET"
        );
        // And the last fire before it was on the first pass, 02:50 CEST.
        assert_eq!(
            s.last_at_or_before(second_pass).unwrap(),
            utc("2024-10-27T00:50:00Z")
        );
    }

    #[test]
    fn last_at_or_before_mirrors_next_after() {
        let cases = [
            ("*/7 * * * * *", "UTC"),
            ("30 2 * * *", "Europe/Berlin"),
            ("*/15 * * * *", "America/New_York"),
            ("0 0 29 2 *", "UTC"),
        ];
        for (expr, zone) in cases {
            let s = Schedule::new(expr, zone).unwrap();
            for start in [
                "2024-03-30T12:00:00Z",
                "2024-03-10T06:30:00Z",
                "2024-10-27T00:10:00Z",
                "2024-11-03T05:10:00Z",
            ] {
                let mut t = utc(start);
                for _ in 0..6 {
                    let next = s.next_after(t).unwrap();
                    assert_eq!(s.last_at_or_before(next), Some(next), "{expr} {next}");
                    let just_before = next - Duration::milliseconds(1);
                    assert!(
                        s.last_at_or_before(just_before).unwrap() < next,
                        "{expr} {next}"
                    );
                    assert_eq!(s.next_after(just_before), Some(next), "{expr} {next}");
                    t = next;
                }
            }
        }
        let s = Schedule::new("*/7 * * * * *", "UTC").unwrap();
        let t = utc("2024-01-01T00:00:00Z");
        assert_eq!(
            s.count_between(t, t + Duration::seconds(70), 1000),
            11,
            "0, 7, ..., 56, then 0 and 7 of the next minute"
        );
        assert_eq!(s.count_between(t, t + Duration::seconds(70), 3), 3);
    }

    #[test]
    fn invalid_schedules_and_zones_name_the_field() {
        for (expr, needle) in [
            ("", "has 0 fields"),
            ("* * * *", "has 4 fields"),
            ("* * * * * * *", "has 7 fields"),
            ("61 * * * *", "is not a valid cron expression"),
            ("* 24 * * *", "is not a valid cron expression"),
            ("*/1 , * * * *", "empty list item"),
            ("0 1, * * *", "empty list item"),
            ("0 0 31 2 *", "never fires"),
            ("0 0 30 2 *", "never fires"),
            ("@reboot", "not a supported shorthand"),
            ("@every 5m", "not a supported shorthand"),
            ("0 9 * MON *", "\"MON\" is not allowed in the month field"),
            ("0 9 JAN * *", "not allowed in the day of month field"),
            (
                "0 9 * * FOO",
                "\"FOO\" is not allowed in the day of week field",
            ),
            (
                "$(reboot) * * * *",
                "\"REBOOT\" is not allowed in the minute field",
            ),
            ("$((1)) * * * *", "is not a valid cron expression"),
            ("* * * * *;reboot", "\"REBOOT\" is not allowed"),
            ("0\u{0} * * * *", "contains the character"),
            ("0 * * * *\n", "contains the character"),
        ] {
            let e = err(expr, "UTC");
            assert!(e.starts_with("schedule: "), "{expr:?}: {e}");
            assert!(e.contains(needle), "{expr:?}: {e}");
            assert!(!e.ends_with('.'), "{e}");
        }
        assert!(err(&"1,".repeat(200), "UTC").contains("longer than 256"));
        for zone in [
            "",
            "Mars/Olympus_Mons",
            "utc ",
            "Europe/../etc/passwd",
            "+02:00",
        ] {
            let e = err("* * * * *", zone);
            assert!(e.starts_with("time_zone: "), "{zone:?}: {e}");
            assert!(e.contains("IANA"), "{e}");
        }
        // The zone is checked first: a request with both wrong names the zone.
        assert!(err("nope", "Nowhere/Land").starts_with("time_zone: "));
    }
}
