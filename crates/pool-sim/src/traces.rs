//! Demand traces: when each matchmaker request arrives and how long its game session lasts.
//! The built-in traces are seeded Poisson processes with a rate that varies over time; a
//! studio's own demand comes in as a CSV ([`parse_csv`]).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// One matchmaker request: when it asks for capacity, and how long the game session lasts
/// once it has a VM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    /// Seconds from the start of the trace.
    pub at: i64,
    /// Session length in seconds.
    pub session: i64,
}

/// A named demand trace.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Its name.
    pub name: String,
    /// Its requests, in time order.
    pub requests: Vec<Request>,
    /// The period its demand repeats with, in seconds, as the studio would know it (an
    /// hourly event, a daily cycle); vmpool is also run with it as
    /// `VMPOOL_DEMAND_PERIOD_SECS`. 0: none.
    pub period_secs: u64,
}

impl Trace {
    /// The time of the last arrival.
    pub fn last_arrival(&self) -> i64 {
        self.requests.last().map_or(0, |r| r.at)
    }
}

const HOUR: i64 = 3600;
const DAY: i64 = 24 * HOUR;

/// Poisson arrivals with a rate (requests per minute) that varies over time, sessions of
/// 20 minutes +-25%.
pub fn trace(
    name: impl Into<String>,
    seconds: i64,
    seed: u64,
    rate_per_min: impl Fn(i64) -> f64,
) -> Trace {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut requests = Vec::new();
    for t in 0..seconds {
        // Thinning: the chance of an arrival in this one-second slot (at most one per
        // second below 60 per minute; above, the expected count is split over the slot).
        let rate = rate_per_min(t) / 60.0;
        let whole = rate.floor();
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a small non-negative count"
        )]
        let mut n = whole as u32;
        if rng.random::<f64>() < rate - whole {
            n += 1;
        }
        for _ in 0..n {
            requests.push(Request {
                at: t,
                session: rng.random_range(900..=1500),
            });
        }
    }
    Trace {
        name: name.into(),
        requests,
        period_secs: 0,
    }
}

/// Today's three traces: steady demand, a 10x spike, and a daily cycle.
pub fn standard_traces() -> Vec<Trace> {
    vec![steady(), spike(), daily()]
}

/// Every built-in trace: the three of [`standard_traces`], a week, a launch day and short
/// bursts.
pub fn all_traces() -> Vec<Trace> {
    vec![steady(), spike(), daily(), week(), launch(), bursts(DAY)]
}

/// The built-in trace called `name`.
pub fn named(name: &str) -> Option<Trace> {
    all_traces().into_iter().find(|t| t.name == name)
}

/// 1 request per minute for 6 hours.
pub fn steady() -> Trace {
    trace("steady", 6 * HOUR, 1, |_| 1.0)
}

/// 1 request per minute for 6 hours, 10 per minute for 10 minutes at hour 2.
pub fn spike() -> Trace {
    trace("spike", 6 * HOUR, 2, |t| {
        if (2 * HOUR..2 * HOUR + 600).contains(&t) {
            10.0
        } else {
            1.0
        }
    })
}

/// 0.2 to 2 requests per minute over 24 hours.
pub fn daily() -> Trace {
    trace("daily", DAY, 3, |t| {
        let phase = (t as f64) / (DAY as f64) * std::f64::consts::TAU;
        1.1 - 0.9 * phase.cos()
    })
}

/// The rate of [`week`] at `t` seconds from Monday 00:00, per minute: a quiet night
/// (0.2/min), an evening peak around 20:00 (2/min on weekdays), and on Saturday and Sunday a
/// longer, higher peak (3/min) that starts in the afternoon.
pub fn week_rate(t: i64) -> f64 {
    let day = (t / DAY) % 7;
    let hour = (t % DAY) as f64 / HOUR as f64;
    let bump = |centre: f64, width: f64| (-((hour - centre) / width).powi(2) / 2.0).exp();
    if day >= 5 {
        0.3 + 2.7 * bump(19.0, 3.5)
    } else {
        0.2 + 1.8 * bump(20.0, 2.0)
    }
}

/// A week with evening peaks and weekend peaks: demand repeats daily.
pub fn week() -> Trace {
    Trace {
        period_secs: 86_400,
        ..trace("week", 7 * DAY, 4, week_rate)
    }
}

/// The rate of [`launch`] at `t`, per minute: 1/min for an hour, a ramp to 20x that over
/// the next hour, then a decay (3 h time constant) over the rest of the day towards 2/min.
pub fn launch_rate(t: i64) -> f64 {
    let h = t as f64 / HOUR as f64;
    if h < 1.0 {
        1.0
    } else if h < 2.0 {
        1.0 + 19.0 * (h - 1.0)
    } else {
        2.0 + 18.0 * (-(h - 2.0) / 3.0).exp()
    }
}

/// A launch day: ramping to 20x the normal rate in an hour and decaying over the day.
pub fn launch() -> Trace {
    trace("launch", DAY, 5, launch_rate)
}

/// Short bursts on a low base: 0.2 requests per minute, and every hour (from minute 30) a
/// burst of 50 requests within 5 seconds. Demand repeats hourly.
pub fn bursts(seconds: i64) -> Trace {
    let mut t = trace("bursts", seconds, 6, |_| 0.2);
    t.period_secs = 3600;
    let mut rng = StdRng::seed_from_u64(60);
    let mut start = HOUR / 2;
    while start < seconds {
        for _ in 0..50 {
            t.requests.push(Request {
                at: start + rng.random_range(0..5),
                session: rng.random_range(900..=1500),
            });
        }
        start += HOUR;
    }
    t.requests.sort_by_key(|r| r.at);
    t
}

/// Reads a studio's demand: one request per line, `timestamp, session_seconds`, where the
/// timestamp is seconds from the start (a number) or an RFC 3339 time (then the earliest is
/// the start). A first line `timestamp,session_seconds` is a header; blank lines and lines
/// starting with `#` are skipped. Requests need not be in order. A malformed line is an
/// error of one line that names it.
pub fn parse_csv(name: &str, text: &str) -> Result<Trace, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut rows: Vec<(u64, Stamp, i64)> = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            format!("line {line}: {e}")
        })?;
        let line = record.position().map_or(0, |p| p.line());
        let at = |msg: String| format!("line {line}: {msg}");
        if record.len() != 2 {
            return Err(at(format!(
                "expected 2 fields (timestamp, session_seconds), found {}",
                record.len()
            )));
        }
        let (stamp, session) = (&record[0], &record[1]);
        if i == 0 && stamp.eq_ignore_ascii_case("timestamp") {
            continue;
        }
        let stamp = Stamp::parse(stamp).map_err(at)?;
        let session = seconds(session).filter(|s| *s > 0.0).ok_or_else(|| {
            at(format!(
                "session_seconds {session:?} is not a positive number"
            ))
        })?;
        #[expect(
            clippy::cast_possible_truncation,
            reason = "bounded to a year of seconds"
        )]
        let session = session.ceil().min(365.0 * DAY as f64) as i64;
        rows.push((line, stamp, session));
    }
    let Some((_, first, _)) = rows.first() else {
        return Err("line 1: no requests in the file".into());
    };
    let rfc = matches!(first, Stamp::Time(_));
    let origin = rows
        .iter()
        .filter_map(|(_, s, _)| match s {
            Stamp::Time(t) => Some(*t),
            Stamp::Secs(_) => None,
        })
        .min();
    let mut requests = Vec::with_capacity(rows.len());
    for (line, stamp, session) in rows {
        let at = match (stamp, origin) {
            (Stamp::Secs(s), _) if !rfc => s,
            (Stamp::Time(t), Some(o)) if rfc => (t - o).whole_seconds(),
            _ => {
                return Err(format!(
                    "line {line}: mixes RFC 3339 times and seconds from the start"
                ));
            }
        };
        requests.push(Request { at, session });
    }
    requests.sort_by_key(|r| r.at);
    Ok(Trace {
        name: name.to_owned(),
        requests,
        period_secs: 0,
    })
}

enum Stamp {
    Secs(i64),
    Time(OffsetDateTime),
}

impl Stamp {
    fn parse(raw: &str) -> Result<Stamp, String> {
        if let Some(s) = seconds(raw).filter(|s| *s >= 0.0) {
            #[expect(
                clippy::cast_possible_truncation,
                reason = "bounded to ten years of seconds"
            )]
            return Ok(Stamp::Secs(s.min(3650.0 * DAY as f64).floor() as i64));
        }
        OffsetDateTime::parse(raw, &Rfc3339)
            .map(Stamp::Time)
            .map_err(|_| {
                format!("timestamp {raw:?} is neither seconds from the start nor an RFC 3339 time")
            })
    }
}

fn seconds(raw: &str) -> Option<f64> {
    raw.parse::<f64>().ok().filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_are_reproducible_and_follow_their_rates() {
        let a = trace("t", 3600, 9, |_| 2.0);
        let b = trace("t", 3600, 9, |_| 2.0);
        assert_eq!(a.requests, b.requests);
        assert!(
            (90..=150).contains(&a.requests.len()),
            "{}",
            a.requests.len()
        );
        // Above one per second the rate still holds.
        let fast = trace("f", 600, 9, |_| 120.0);
        assert!((1100..=1300).contains(&fast.requests.len()));
    }

    #[test]
    fn the_new_traces_have_their_shapes() {
        // Launch: 20x the first hour's rate at its peak.
        assert!((launch_rate(1800) - 1.0).abs() < 1e-9);
        assert!((launch_rate(2 * HOUR) - 20.0).abs() < 1e-9);
        assert!(launch_rate(12 * HOUR) < 3.0);
        // Week: evenings above nights, weekend evenings above weekday ones.
        assert!(week_rate(20 * HOUR) > 5.0 * week_rate(4 * HOUR));
        assert!(week_rate(5 * DAY + 19 * HOUR) > week_rate(19 * HOUR));
        // Bursts: 50 requests within 5 s each hour.
        let b = bursts(2 * HOUR);
        let first = b
            .requests
            .iter()
            .filter(|r| (1800..1805).contains(&r.at))
            .count();
        assert!(first >= 50, "{first}");
    }

    #[test]
    fn a_csv_replays_in_seconds_or_rfc3339() {
        let t = parse_csv(
            "s",
            "timestamp,session_seconds\n10, 600\n0,1200.5\n\n# note\n",
        )
        .unwrap();
        assert_eq!(
            t.requests,
            [
                Request {
                    at: 0,
                    session: 1201
                },
                Request {
                    at: 10,
                    session: 600
                }
            ]
        );
        let t = parse_csv(
            "r",
            "2026-01-05T10:00:30Z,600\n2026-01-05T10:00:00Z,900\n2026-01-05T11:00:00+01:00,60\n",
        )
        .unwrap();
        let ats: Vec<i64> = t.requests.iter().map(|r| r.at).collect();
        assert_eq!(ats, [0, 0, 30]);
    }

    #[test]
    fn a_malformed_csv_is_one_line_naming_the_line() {
        for (text, line, what) in [
            ("0,600\n5,abc\n", "line 2:", "session_seconds"),
            ("0,600\n5\n", "line 2:", "2 fields"),
            ("0,600\nyesterday,60\n", "line 2:", "timestamp"),
            ("0,600\n1,-5\n", "line 2:", "positive"),
            ("0,600\n2026-01-05T10:00:00Z,60\n", "line 2:", "mixes"),
            ("# only a comment\n", "line 1:", "no requests"),
            ("0,600\n\"1,60\n", "line 2:", ""),
        ] {
            let err = parse_csv("x", text).unwrap_err();
            assert!(err.starts_with(line), "{text:?}: {err}");
            assert!(err.contains(what), "{text:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
