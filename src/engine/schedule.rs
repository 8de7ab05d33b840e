//! Restore points at regular intervals, and the retention policies that prune them.
//!
//! Invariants:
//! - A collection's schedule lives in its record. After a run, `next_run` is the run's time
//!   plus the interval, so a machine that was off for days takes one catch-up point when it
//!   runs again, never a pile. A run that finds the VM busy leaves `next_run` as it was: the
//!   next tick retries.
//! - Retention decides on points' creation times (the engine's clock), over every point of
//!   the collection however it was made; a point kept by any rule stays. Pruning deletes with
//!   the normal chain delete, so the points that remain read exactly as before.
//! - The 500-point limit holds: a policy that could keep more than 500 points for its VM
//!   (with what the VM's other collections keep or hold) is refused when set, and a run that
//!   would reach the limit prunes first.
//! - A run is claimed before it starts (`next_run` moves on under the store lock), so two
//!   schedulers on one store (a mount and `run-due`) never both take it.
//! - Every run, prune and failure is logged and kept in the collection (`last_run`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Engine;
use super::create::CreateRequest;
use super::error::{Error, ErrorKind, Result};
use super::policy::MAX_POINTS_PER_VM;
use super::progress::Silent;
use crate::store::records::{CollectionRecord, RetentionPolicy, ScheduleRecord, ScheduledRun};

/// Shortest schedule interval.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest schedule interval (a year), so run times stay far from the calendar's end.
pub const MAX_INTERVAL: Duration = Duration::from_secs(366 * 86_400);

/// A keep-rule of a retention policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Rule {
    pub const ALL: [Rule; 6] = [
        Rule::Last,
        Rule::Hourly,
        Rule::Daily,
        Rule::Weekly,
        Rule::Monthly,
        Rule::Yearly,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rule::Last => "last",
            Rule::Hourly => "hourly",
            Rule::Daily => "daily",
            Rule::Weekly => "weekly",
            Rule::Monthly => "monthly",
            Rule::Yearly => "yearly",
        }
    }

    fn count(self, p: &RetentionPolicy) -> Option<u32> {
        match self {
            Rule::Last => p.last,
            Rule::Hourly => p.hourly,
            Rule::Daily => p.daily,
            Rule::Weekly => p.weekly,
            Rule::Monthly => p.monthly,
            Rule::Yearly => p.yearly,
        }
    }

    fn slot(self, p: &mut RetentionPolicy) -> &mut Option<u32> {
        match self {
            Rule::Last => &mut p.last,
            Rule::Hourly => &mut p.hourly,
            Rule::Daily => &mut p.daily,
            Rule::Weekly => &mut p.weekly,
            Rule::Monthly => &mut p.monthly,
            Rule::Yearly => &mut p.yearly,
        }
    }

    /// The period `t` falls in (UTC): equal for two times of one hour, day, ISO week (from
    /// Monday), month or year. `Last` has no periods: every point is its own.
    fn period(self, t: SystemTime, index: usize) -> (u64, u64) {
        let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let days = secs / 86_400;
        // "YYYY-MM-…": the calendar from humantime rather than by hand.
        let date = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs));
        let date = date.to_string();
        let year: u64 = date.get(..4).and_then(|y| y.parse().ok()).unwrap_or(0);
        let month: u64 = date.get(5..7).and_then(|m| m.parse().ok()).unwrap_or(0);
        match self {
            Rule::Last => (0, index as u64),
            Rule::Hourly => (0, secs / 3600),
            Rule::Daily => (0, days),
            // 1970-01-01 was a Thursday: shifting by three days puts Mondays on week starts.
            Rule::Weekly => (0, (days + 3) / 7),
            Rule::Monthly => (year, month),
            Rule::Yearly => (year, 0),
        }
    }
}

/// What retention decided for one point: the rules that keep it (none: it is deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub point: String,
    pub created: SystemTime,
    pub kept_by: Vec<Rule>,
}

impl Decision {
    pub fn kept(&self) -> bool {
        !self.kept_by.is_empty()
    }
}

/// Parses an interval such as `30s`, `15m`, `1h`, `1d` or `1w` (humantime units).
pub fn parse_interval(text: &str) -> Result<Duration> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        Error::InvalidArgument(format!(
            "schedule interval '{text}' is not a duration like 30s, 15m, 1h, 1d or 1w: {e}"
        ))
    })?;
    if d < MIN_INTERVAL {
        return Err(Error::InvalidArgument(format!(
            "schedule interval '{text}' is shorter than {}",
            humantime::format_duration(MIN_INTERVAL)
        )));
    }
    if d > MAX_INTERVAL {
        return Err(Error::InvalidArgument(format!(
            "schedule interval '{text}' is longer than {}",
            humantime::format_duration(MAX_INTERVAL)
        )));
    }
    Ok(Duration::from_secs(d.as_secs()))
}

/// Parses keep-rules such as `last=24,hourly=48,daily=7,weekly=4,monthly=6,yearly=2`.
pub fn parse_policy(text: &str) -> Result<RetentionPolicy> {
    let bad = |why: String| Error::InvalidArgument(format!("retention policy '{text}': {why}"));
    let mut policy = RetentionPolicy::default();
    for part in text.split(',').map(str::trim) {
        let (rule, count) = part
            .split_once('=')
            .ok_or_else(|| bad(format!("'{part}' is not RULE=COUNT")))?;
        let rule = Rule::ALL
            .into_iter()
            .find(|r| r.name() == rule.trim())
            .ok_or_else(|| {
                bad(format!(
                    "unknown rule '{rule}'; the rules are last, hourly, daily, weekly, monthly \
                     and yearly"
                ))
            })?;
        let count: u32 = count
            .trim()
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| bad(format!("{} needs a count of at least 1", rule.name())))?;
        let slot = rule.slot(&mut policy);
        if slot.is_some() {
            return Err(bad(format!("{} is given twice", rule.name())));
        }
        *slot = Some(count);
    }
    Ok(policy)
}

/// The most points `policy` can keep: each rule keeps at most its count.
pub fn policy_bound(policy: &RetentionPolicy) -> u64 {
    Rule::ALL
        .iter()
        .filter_map(|r| r.count(policy))
        .map(u64::from)
        .sum()
}

/// `policy` in the form `parse_policy` reads.
pub fn policy_text(policy: &RetentionPolicy) -> String {
    Rule::ALL
        .iter()
        .filter_map(|r| r.count(policy).map(|n| format!("{}={n}", r.name())))
        .collect::<Vec<_>>()
        .join(",")
}

/// Applies `policy` to `points` (name, creation time, in creation order): each rule keeps the
/// newest point of each of its most recent N periods that hold points.
pub fn decide(points: &[(String, SystemTime)], policy: &RetentionPolicy) -> Vec<Decision> {
    let mut decisions: Vec<Decision> = points
        .iter()
        .map(|(name, created)| Decision {
            point: name.clone(),
            created: *created,
            kept_by: Vec::new(),
        })
        .collect();
    // Newest first: by time, then by creation order.
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by(|&a, &b| points[b].1.cmp(&points[a].1).then(b.cmp(&a)));
    for rule in Rule::ALL {
        let Some(count) = rule.count(policy) else {
            continue;
        };
        let mut periods = 0;
        let mut last = None;
        for &i in &order {
            let period = rule.period(points[i].1, i);
            if last == Some(period) {
                continue;
            }
            if periods == count {
                break;
            }
            last = Some(period);
            periods += 1;
            decisions[i].kept_by.push(rule);
        }
    }
    decisions
}

/// What one scheduled run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    pub collection: String,
    pub run: ScheduledRun,
}

/// The name of a point scheduled at `t`: its UTC time, sortable (`2026-11-26T14-00-00Z`).
pub fn point_name(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace(':', "-")
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn parse_time(t: &str) -> SystemTime {
    humantime::parse_rfc3339_weak(t).unwrap_or(UNIX_EPOCH)
}

impl Engine {
    /// Sets a collection's schedule: a point every `interval` (None: no schedule), kept by
    /// `retain` (None: all). Refuses a policy that could keep more than 500 points for the VM.
    pub fn set_schedule(
        &self,
        collection: &str,
        interval: Option<Duration>,
        retain: Option<RetentionPolicy>,
    ) -> Result<CollectionRecord> {
        if let Some(policy) = &retain {
            self.check_policy(collection, policy)?;
        }
        let now = self.now();
        self.update_collection(collection, |c, _| {
            c.schedule = interval.map(|i| ScheduleRecord {
                interval_secs: i.as_secs(),
                retain,
                // A new schedule runs at once; a changed one keeps its next run.
                next_run: c
                    .schedule
                    .as_ref()
                    .map_or_else(|| rfc3339(now), |s| s.next_run.clone()),
                last_run: c.schedule.as_ref().and_then(|s| s.last_run.clone()),
            });
            Ok(())
        })
    }

    /// Refuses `policy` for `collection` when, with what the VM's other collections keep (their
    /// policies' bounds, or the points they hold), the VM could exceed the point limit.
    pub fn check_policy(&self, collection: &str, policy: &RetentionPolicy) -> Result<()> {
        let cat = self.catalog()?;
        let coll = cat.collection(collection)?;
        let mut total = policy_bound(policy);
        let mut parts = vec![format!("{} here", total)];
        for other in cat
            .collections
            .iter()
            .filter(|c| c.vm_id == coll.vm_id && c.id != coll.id)
        {
            // What it holds until its next prune, or what its policy keeps, whichever is more.
            let held = cat.points_in(other.id).count() as u64;
            let n = match other.schedule.as_ref().and_then(|s| s.retain.as_ref()) {
                Some(p) => policy_bound(p).max(held),
                None => held,
            };
            total += n;
            parts.push(format!("{n} in '{}'", other.name));
        }
        // A creation comes before its prune: the kept points plus the new one must fit.
        if total >= MAX_POINTS_PER_VM as u64 {
            return Err(Error::InvalidArgument(format!(
                "retention policy '{}' could keep {total} restore points for the VM of \
                 collection '{collection}' ({}); with the point a run adds before pruning, that \
                 reaches the limit of {MAX_POINTS_PER_VM}; lower its counts",
                policy_text(policy),
                parts.join(", ")
            )));
        }
        Ok(())
    }

    /// What the collection's retention policy decides now, point by point (oldest first).
    pub fn retention(&self, collection: &str) -> Result<Vec<Decision>> {
        let cat = self.catalog()?;
        let coll = cat.collection(collection)?;
        let policy = coll
            .schedule
            .as_ref()
            .and_then(|s| s.retain)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "collection '{collection}' has no retention policy; set one with `rpfs \
                     collection set {collection} --schedule INTERVAL --retain POLICY`"
                ))
            })?;
        let mut points: Vec<_> = cat.points_in(coll.id).collect();
        points.sort_by_key(|p| p.seq);
        let points: Vec<(String, SystemTime)> = points
            .iter()
            .map(|p| (p.name.clone(), parse_time(&p.created)))
            .collect();
        Ok(decide(&points, &policy))
    }

    /// Applies the collection's retention policy: deletes (oldest first) every point no rule
    /// keeps, unless `dry_run`. Returns the decisions and the points deleted.
    pub fn prune(&self, collection: &str, dry_run: bool) -> Result<(Vec<Decision>, Vec<String>)> {
        let decisions = self.retention(collection)?;
        let mut deleted = Vec::new();
        if !dry_run {
            for d in decisions.iter().filter(|d| !d.kept()) {
                self.delete_point(collection, &d.point)?;
                tracing::info!("pruned {collection}/{}", d.point);
                deleted.push(d.point.clone());
            }
        }
        Ok((decisions, deleted))
    }

    /// Runs every schedule that is due by the engine's clock, once.
    pub fn run_due(&self) -> Result<Vec<RunReport>> {
        let now = self.now();
        let cat = self.catalog()?;
        let mut reports = Vec::new();
        // Points per VM, kept current through this pass's own runs.
        let mut held: std::collections::HashMap<uuid::Uuid, usize> =
            std::collections::HashMap::new();
        for c in &cat.collections {
            let Some(s) = &c.schedule else { continue };
            if parse_time(&s.next_run) > now {
                continue;
            }
            let count = held
                .entry(c.vm_id)
                .or_insert_with(|| cat.points_of_vm(c.vm_id).count());
            let Some(report) = self.run_one(c, s, now, *count)? else {
                continue;
            };
            if report.run.result == "Succeeded" {
                *count += 1;
            }
            *count -= report.run.pruned.len().min(*count);
            reports.push(report);
        }
        Ok(reports)
    }

    /// One scheduled run of collection `c` (whose VM holds `held` points): prune first if the VM
    /// is at the limit, create, prune, and record the outcome.
    fn run_one(
        &self,
        c: &CollectionRecord,
        s: &ScheduleRecord,
        now: SystemTime,
        held: usize,
    ) -> Result<Option<RunReport>> {
        // Claim the run: move `next_run` on under the store lock, unless another scheduler (a
        // second daemon, or `run-due` beside the mount) already has.
        let observed = s.next_run.clone();
        let next = now
            .checked_add(Duration::from_secs(s.interval_secs))
            .map_or_else(|| observed.clone(), rfc3339);
        let claim = next.clone();
        let claimed = self.update_collection(&c.name, |c, vm| match &mut c.schedule {
            Some(s) if s.next_run == observed => {
                s.next_run = claim;
                Ok(())
            }
            _ => Err(Error::Busy {
                vm: vm.name.clone(),
            }),
        });
        match claimed {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Busy => return Ok(None),
            Err(e) => return Err(e),
        }
        let name = point_name(now);
        let mut pruned = Vec::new();
        let prune = |pruned: &mut Vec<String>| -> Result<()> {
            if s.retain.is_some() {
                pruned.extend(self.prune(&c.name, false)?.1);
            }
            Ok(())
        };
        let first = if held >= MAX_POINTS_PER_VM {
            prune(&mut pruned)
        } else {
            Ok(())
        };
        let created = first.and_then(|()| {
            self.create_point(
                &CreateRequest {
                    collection: c.name.clone(),
                    name: name.clone(),
                    exclude: Vec::new(),
                    consistency: None,
                },
                &Silent,
            )
        });
        // Busy means the point was not made: a prune that meets another operation after the
        // creation is a failed prune of a made point, and the run is not repeated.
        let (result, error, retry) = match created {
            Ok(_) => match prune(&mut pruned) {
                Ok(()) => ("Succeeded", None, false),
                Err(e) => ("Succeeded", Some(format!("pruning afterwards: {e}")), false),
            },
            Err(e) if e.kind() == ErrorKind::Busy => ("Busy", Some(e.to_string()), true),
            Err(e) => ("Failed", Some(e.to_string()), false),
        };
        match &error {
            None => tracing::info!(
                "scheduled point {}/{name} created; pruned {}",
                c.name,
                if pruned.is_empty() {
                    "nothing".to_string()
                } else {
                    pruned.join(", ")
                }
            ),
            Some(e) => tracing::warn!("scheduled point {}/{name}: {result}: {e}", c.name),
        }
        let run = ScheduledRun {
            at: rfc3339(now),
            point: name,
            result: result.into(),
            error,
            pruned,
        };
        let recorded = run.clone();
        self.update_collection(&c.name, move |c, _| {
            if let Some(s) = &mut c.schedule {
                s.last_run = Some(recorded);
                // A busy run gives its claim back, so the next tick retries it.
                if retry && s.next_run == next {
                    s.next_run = observed;
                }
            }
            Ok(())
        })?;
        Ok(Some(RunReport {
            collection: c.name.clone(),
            run,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn policies_parse_and_print_back() {
        let p = parse_policy("last=24,hourly=48,daily=7,weekly=4,monthly=6,yearly=2").expect("ok");
        assert_eq!(p.hourly, Some(48));
        assert_eq!(policy_bound(&p), 91);
        assert_eq!(
            policy_text(&p),
            "last=24,hourly=48,daily=7,weekly=4,monthly=6,yearly=2"
        );
        for bad in [
            "",
            "daily",
            "daily=0",
            "daily=-1",
            "daily=x",
            "fortnightly=2",
            "daily=1,daily=2",
        ] {
            let e = parse_policy(bad).expect_err(bad);
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}: {e}");
        }
    }

    #[test]
    fn intervals_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_interval("1h").expect("1h"), Duration::from_secs(3600));
        assert_eq!(parse_interval("2s").expect("2s"), Duration::from_secs(2));
        assert_eq!(
            parse_interval("1w").expect("1w"),
            Duration::from_secs(7 * 86400)
        );
        for bad in ["0", "0s", "-1h", "1 parsec", "", "500ms", "2y", "10000y"] {
            assert_eq!(
                parse_interval(bad).expect_err(bad).kind(),
                ErrorKind::InvalidArgument,
                "{bad}"
            );
        }
    }

    #[test]
    fn names_sort_like_times_and_are_valid() {
        let a = point_name(at(1_700_000_000));
        let b = point_name(at(1_700_003_600));
        assert_eq!(a, "2023-11-14T22-13-20Z");
        assert!(a < b);
        crate::engine::names::validate("restore point", &a).expect("valid name");
    }

    #[test]
    fn each_rule_keeps_the_newest_of_its_recent_periods() {
        // Every 6 hours for 20 days from a Monday 00:00 UTC (2024-01-01).
        let start = 1_704_067_200;
        let points: Vec<(String, SystemTime)> = (0..80)
            .map(|i| (format!("p{i}"), at(start + i * 6 * 3600)))
            .collect();
        let d = decide(
            &points,
            &parse_policy("last=2,daily=3,weekly=2").expect("policy"),
        );
        let kept: Vec<(&str, Vec<Rule>)> = d
            .iter()
            .filter(|d| d.kept())
            .map(|d| (d.point.as_str(), d.kept_by.clone()))
            .collect();
        assert_eq!(
            kept,
            vec![
                // Sunday 18:00 of the first full week.
                ("p55", vec![Rule::Weekly]),
                ("p71", vec![Rule::Daily]),
                ("p75", vec![Rule::Daily]),
                ("p78", vec![Rule::Last]),
                ("p79", vec![Rule::Last, Rule::Daily, Rule::Weekly]),
            ]
        );
    }
}
