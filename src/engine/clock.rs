//! Where the engine reads the time: the system clock, or a test's.
//!
//! Invariants: everything the engine decides by the time (creation times, schedules, the
//! minimum interval) reads the engine's [`Clock`], so a test can move it; records keep times in
//! RFC 3339 (UTC).

use std::sync::Arc;
use std::time::SystemTime;

/// The time source of an engine; points' creation times, schedules and the minimum interval
/// between creations follow it.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl Clock {
    pub fn new(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now))
    }
    pub fn now(&self) -> SystemTime {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new(SystemTime::now)
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// Current time in RFC 3339 with milliseconds (Azure's `timeCreated` shape).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
