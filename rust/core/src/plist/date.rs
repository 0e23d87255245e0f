//! Calendar arithmetic for plist dates (seconds since 2001-01-01T00:00:00Z, proleptic
//! Gregorian calendar, no leap seconds).

/// A calendar date and time of day, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

/// Days from 1970-01-01 to the given date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// 2001-01-01 in days since 1970-01-01.
const EPOCH_2001: i64 = 11_323;

pub fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// Whole seconds since 2001-01-01 for a valid calendar time.
pub fn seconds_from_civil(c: &Civil) -> i64 {
    (days_from_civil(c.year, c.month, c.day) - EPOCH_2001) * 86_400
        + i64::from(c.hour) * 3600
        + i64::from(c.minute) * 60
        + i64::from(c.second)
}

/// The calendar time of a whole number of seconds since 2001-01-01; `None` when `secs` has
/// a fraction or lies outside years 1–9999 (what Python's datetime can hold).
pub fn civil_from_seconds(secs: f64) -> Option<Civil> {
    if !secs.is_finite() || secs.fract() != 0.0 || secs.abs() > 4e11 {
        return None;
    }
    // Within ±4e11 the float is an exact integer.
    #[allow(clippy::cast_possible_truncation)]
    let secs = secs as i64;
    let days = secs.div_euclid(86_400) + EPOCH_2001;
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    if !(1..=9999).contains(&year) {
        return None;
    }
    let rem = u32::try_from(rem).ok()?;
    Some(Civil {
        year,
        month,
        day,
        hour: rem / 3600,
        minute: rem / 60 % 60,
        second: rem % 60,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        let c = Civil {
            year: 2001,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
        };
        assert_eq!(seconds_from_civil(&c), 0);
        let c = Civil {
            year: 2024,
            month: 2,
            day: 29,
            hour: 12,
            minute: 34,
            second: 56,
        };
        let s = seconds_from_civil(&c);
        assert_eq!(s, 730_902_896);
        assert_eq!(civil_from_seconds(s as f64), Some(c));
        let first = Civil {
            year: 1,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
        };
        assert_eq!(
            civil_from_seconds(seconds_from_civil(&first) as f64),
            Some(first)
        );
        assert_eq!(civil_from_seconds(0.5), None);
        for days in (-800_000..3_000_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
