//! Schedules and retention: an hourly schedule over 400 simulated days (an injected clock, no
//! sleeping) leaves exactly the points an independent computation of the policy keeps, never
//! more than 500, each reading as its generation did; `prune --dry-run` says what `prune`
//! does; bad schedules and policies change nothing; a busy VM is retried at the next tick;
//! missed runs give one catch-up point; the mount daemon runs a 2-second schedule.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rpfs::engine::schedule::{parse_policy, point_name};
use rpfs::engine::vms::VmSpec;
use rpfs::engine::{Clock, Engine, OpenOptions};
use rpfs::store::LocalStorage;
use rpfs::store::records::RetentionPolicy;

use crate::common::cli::{assert_mentions, expect_exit, point_names};
use crate::common::images::{KIB, random_image};
use crate::common::mount::{MountGuard, fuse_or_skip, names_in};
use crate::common::store::{TestStore, assert_unchanged, create, read_image};
use crate::common::sys::{env_count, rng, seed, wait_until};

const HOUR: u64 = 3600;
/// 2025-03-01T00:00:00Z, a Saturday: the simulation crosses month, year and ISO-week borders.
const T0: u64 = 1_740_787_200;
const POLICY: &str = "last=24,hourly=48,daily=7,weekly=4,monthly=6,yearly=2";
const BLOCK: usize = 4096;
const BLOCKS: usize = 4;

/// A clock reading `secs` (seconds since the epoch), which the test moves by hand.
fn clock_of(secs: &Arc<AtomicU64>) -> Clock {
    let s = secs.clone();
    Clock::new(move || UNIX_EPOCH + Duration::from_secs(s.load(Ordering::SeqCst)))
}

/// A clock at T0 the test moves by hand.
fn clock() -> (Clock, Arc<AtomicU64>) {
    let secs = Arc::new(AtomicU64::new(T0));
    (clock_of(&secs), secs)
}

/// Generation `g` writes block `g % BLOCKS` with a pattern of `g`: the disk at generation `h`
/// follows from `h` alone.
fn pattern(g: u64) -> Vec<u8> {
    (0..BLOCK)
        .map(|i| (g as usize * 31 + i * 7) as u8)
        .collect()
}

fn content_at(h: u64) -> Vec<u8> {
    let mut disk = vec![0u8; BLOCK * BLOCKS];
    for (b, chunk) in disk.chunks_mut(BLOCK).enumerate() {
        // The newest generation up to `h` that wrote block b.
        let b = b as u64;
        if h >= b {
            let g = h - (h - b) % BLOCKS as u64;
            chunk.copy_from_slice(&pattern(g));
        }
    }
    disk
}

fn write_generation(disk: &Path, g: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .expect("disk");
    f.write_all_at(&pattern(g), (g % BLOCKS as u64) * BLOCK as u64)
        .expect("write");
}

/// Days since 1970-01-01 to (year, month), by the civil-from-days algorithm (Howard Hinnant),
/// independent of how rpfs finds months.
fn year_month(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month)
}

/// The hours (generations) the policy keeps when the last of `hours` hourly points is the
/// newest: for each rule, group every point by its period, take the N newest periods, keep
/// the newest point of each.
fn expected_kept(hours: u64) -> BTreeSet<u64> {
    type Key = fn(u64) -> (i64, i64);
    let rules: [(usize, Key); 6] = [
        (24, |h| (0, h as i64)),
        (48, |h| (0, ((T0 + h * HOUR) / HOUR) as i64)),
        (7, |h| (0, ((T0 + h * HOUR) / 86_400) as i64)),
        // ISO weeks start on Monday; 1970-01-05 was the first Monday.
        (4, |h| {
            (0, (((T0 + h * HOUR) / 86_400) as i64 - 4).div_euclid(7))
        }),
        (6, |h| {
            let (y, m) = year_month(((T0 + h * HOUR) / 86_400) as i64);
            (y, i64::from(m))
        }),
        (2, |h| (year_month(((T0 + h * HOUR) / 86_400) as i64).0, 0)),
    ];
    let mut keep = BTreeSet::new();
    for (n, key) in rules {
        let mut newest: BTreeMap<(i64, i64), u64> = BTreeMap::new();
        for h in 0..hours {
            let e = newest.entry(key(h)).or_insert(h);
            *e = (*e).max(h);
        }
        keep.extend(newest.values().rev().take(n));
    }
    keep
}

/// VM `vm` with one disk `d` (at `dir/d.img`, holding `content`), on `engine`; returns its path.
fn vm_with_disk(
    engine: &Engine,
    dir: &Path,
    content: &[u8],
    pre_script: Option<String>,
) -> PathBuf {
    let disk = dir.join("d.img");
    std::fs::write(&disk, content).expect("disk");
    engine
        .add_vm(&VmSpec {
            name: "vm".into(),
            disks: vec![("d".into(), disk.clone())],
            pre_script,
            ..VmSpec::default()
        })
        .expect("vm");
    disk
}

/// Collection `c` of `vm`, with a point due every hour, pruned by `retain`.
fn hourly_collection(engine: &Engine, retain: Option<RetentionPolicy>) {
    engine
        .create_collection("c", "vm", None)
        .expect("collection");
    engine
        .set_schedule("c", Some(Duration::from_secs(HOUR)), retain)
        .expect("schedule");
}

fn shm_store() -> (tempfile::TempDir, Engine, Arc<AtomicU64>) {
    // tmpfs where there is one: thousands of creations and deletions, each fsynced.
    let dir = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")
    } else {
        tempfile::tempdir()
    }
    .expect("tempdir");
    std::fs::create_dir(dir.path().join("store")).expect("store");
    let engine = Engine::init(
        Arc::new(LocalStorage::new(dir.path().join("store"))),
        BLOCK as u32,
    )
    .expect("init");
    let (clock, secs) = clock();
    (dir, engine.with_clock(clock), secs)
}

#[test]
fn an_hourly_schedule_over_400_days_keeps_exactly_what_the_policy_says() {
    let days = env_count("RPFS_SCHEDULE_DAYS", 400) as u64;
    let (dir, engine, secs) = shm_store();
    let disk = vm_with_disk(&engine, dir.path(), &vec![0u8; BLOCK * BLOCKS], None);
    hourly_collection(&engine, Some(parse_policy(POLICY).expect("policy")));
    let hours = days * 24;
    let mut most = 0;
    for h in 0..hours {
        secs.store(T0 + h * HOUR, Ordering::SeqCst);
        write_generation(&disk, h);
        let reports = engine.run_due().expect("run due");
        assert_eq!(reports.len(), 1, "hour {h}: one run");
        assert_eq!(
            reports[0].run.result, "Succeeded",
            "hour {h}: {:?}",
            reports[0].run
        );
        // Nothing is due until the next hour (checked every few hours: each check reads the
        // whole catalog).
        if h % 5 == 0 {
            secs.store(T0 + h * HOUR + HOUR - 1, Ordering::SeqCst);
            assert!(engine.run_due().expect("run due").is_empty(), "hour {h}");
        }
        let n = engine.catalog().expect("catalog").points.len();
        assert!(n <= 500, "hour {h}: {n} points");
        most = most.max(n);
    }
    let want: BTreeSet<String> = expected_kept(hours)
        .into_iter()
        .map(|h| point_name(UNIX_EPOCH + Duration::from_secs(T0 + h * HOUR)))
        .collect();
    let cat = engine.catalog().expect("catalog");
    let got: BTreeSet<String> = cat.points.iter().map(|p| p.name.clone()).collect();
    assert_eq!(
        got.symmetric_difference(&want).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "kept points differ from the policy's ({} kept, {} expected)",
        got.len(),
        want.len()
    );
    eprintln!(
        "{hours} hourly points over {days} days: {} kept, at most {most} at once",
        got.len()
    );
    // Every point left reads as its generation did, chain deletes notwithstanding.
    let reopened = Engine::open(
        Arc::new(LocalStorage::new(dir.path().join("store"))),
        OpenOptions::default(),
    )
    .expect("reopen");
    for h in expected_kept(hours) {
        let name = point_name(UNIX_EPOCH + Duration::from_secs(T0 + h * HOUR));
        assert!(
            read_image(&reopened, "c", &name, "d") == content_at(h),
            "point {name} (generation {h}) reads differently"
        );
    }
}

#[test]
fn missed_runs_give_one_catch_up_point_and_a_busy_vm_is_retried() {
    let (dir, engine, secs) = shm_store();
    let marker = dir.path().join("in-pre-script");
    vm_with_disk(
        &engine,
        dir.path(),
        &[1u8; BLOCK],
        Some(format!(
            "touch '{m}'; sleep 1.5; rm -f '{m}'",
            m = marker.display()
        )),
    );
    hourly_collection(&engine, None);
    assert_eq!(engine.run_due().expect("first").len(), 1);
    // Three days off: one catch-up point, then nothing until an hour later.
    secs.fetch_add(3 * 86_400, Ordering::SeqCst);
    assert_eq!(engine.run_due().expect("catch up").len(), 1);
    assert!(engine.run_due().expect("again").is_empty());
    assert_eq!(engine.catalog().expect("catalog").points.len(), 2);

    // An hour later, a CLI creation holds the VM: the scheduled run records Busy and leaves
    // the run due; the next tick creates the point.
    secs.fetch_add(HOUR, Ordering::SeqCst);
    let mut manual = std::process::Command::new(env!("CARGO_BIN_EXE_rpfs"))
        .args(["point", "create", "c", "manual"])
        .env("RPFS_STORE", dir.path().join("store"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("rpfs point create");
    wait_until(
        "the CLI creation's pre-script",
        Duration::from_secs(10),
        || marker.exists(),
    );
    let busy = engine.run_due().expect("busy run");
    assert_eq!(busy[0].run.result, "Busy", "{busy:?}");
    let recorded = engine
        .catalog()
        .expect("catalog")
        .collection("c")
        .expect("c")
        .clone();
    let s = recorded.schedule.expect("schedule");
    assert_eq!(s.last_run.expect("recorded").result, "Busy");
    assert!(
        manual.wait().expect("wait").success(),
        "the CLI creation failed"
    );
    let retried = engine.run_due().expect("retry");
    assert_eq!(retried[0].run.result, "Succeeded", "{retried:?}");
    assert_eq!(engine.catalog().expect("catalog").points.len(), 4);
}

/// A CLI store with VM `vm` (one small disk) and collection `c`.
fn cli_store() -> TestStore {
    let ts = TestStore::new(4096);
    let disk = ts.path("d.img");
    random_image(&disk, 16 * KIB as usize, &mut rng(seed()));
    ts.vm("vm", &[("d", &disk)], "c");
    ts
}

#[test]
fn bad_schedules_and_policies_are_refused_and_change_nothing() {
    let ts = cli_store();
    ts.engine.create_collection("c2", "vm", None).expect("c2");
    expect_exit(
        ts.cli().args([
            "collection",
            "set",
            "c2",
            "--schedule",
            "1h",
            "--retain",
            "last=300",
        ]),
        0,
    );
    let before = ts.snapshot();
    for (args, words) in [
        (vec!["--schedule", "0"], vec!["'0'"]),
        (vec!["--schedule", "0s"], vec!["shorter than 1s"]),
        (vec!["--schedule=-1h"], vec!["'-1h'"]),
        (vec!["--schedule", "3 fortnights"], vec!["not a duration"]),
        (
            vec!["--schedule", "1h", "--retain", "daily=0"],
            vec!["at least 1"],
        ),
        (
            vec!["--schedule", "1h", "--retain", "daily=-2"],
            vec!["at least 1"],
        ),
        (
            vec!["--schedule", "1h", "--retain", "hourly"],
            vec!["RULE=COUNT"],
        ),
        (
            vec!["--schedule", "1h", "--retain", "fortnightly=2"],
            vec!["unknown rule"],
        ),
        (
            vec!["--schedule", "1h", "--retain", "daily=7,daily=8"],
            vec!["twice"],
        ),
        // 300 kept by c2's policy plus 201 here would pass the limit.
        (
            vec!["--schedule", "1h", "--retain", "last=101,daily=100"],
            vec!["501", "300 in 'c2'", "limit of 500"],
        ),
        (vec!["--retain", "daily=7"], vec!["no schedule"]),
        (
            vec!["--schedule", "off", "--retain", "daily=7"],
            vec!["--schedule off"],
        ),
        (
            vec!["--schedule", "1h", "--exclude-disk", "nope"],
            vec!["nope"],
        ),
    ] {
        let mut cmd = ts.cli();
        cmd.args(["collection", "set", "c"]).args(&args);
        let code = if words[0] == "nope" { 3 } else { 2 };
        let (_, err) = expect_exit(&mut cmd, code);
        assert_mentions(&err, &words);
        assert_unchanged(&before, &ts.snapshot(), &format!("{args:?}"));
    }
    // And the minimum interval: a second creation within it is refused with exit 12.
    expect_exit(
        ts.cli().args(["vm", "set", "vm", "--min-interval", "1h"]),
        0,
    );
    expect_exit(ts.cli().args(["point", "create", "c", "p1"]), 0);
    let before = ts.snapshot();
    let (_, err) = expect_exit(ts.cli().args(["point", "create", "c", "p2"]), 12);
    assert_mentions(&err, &["VM 'vm'", "every 1h", "retry in"]);
    assert_unchanged(&before, &ts.snapshot(), "throttled creation");
    expect_exit(
        ts.cli().args(["vm", "set", "vm", "--min-interval", "off"]),
        0,
    );
    expect_exit(ts.cli().args(["point", "create", "c", "p2"]), 0);
}

/// `rpfs collection set c --schedule INTERVAL --retain POLICY`, which must succeed.
fn schedule(ts: &TestStore, interval: &str, policy: &str) {
    expect_exit(
        ts.cli().args([
            "collection",
            "set",
            "c",
            "--schedule",
            interval,
            "--retain",
            policy,
        ]),
        0,
    );
}

#[test]
fn prune_dry_run_prints_what_prune_then_does() {
    let ts = cli_store();
    for i in 0..6 {
        expect_exit(ts.cli().args(["point", "create", "c", &format!("p{i}")]), 0);
    }
    schedule(&ts, "1d", "last=2");
    let before = ts.snapshot();
    let (dry, _) = expect_exit(ts.cli().args(["prune", "c", "--dry-run"]), 0);
    assert_unchanged(&before, &ts.snapshot(), "dry run");
    let (done, _) = expect_exit(ts.cli().args(["prune", "c"]), 0);
    let decisions = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.contains('\t'))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(decisions(&dry), decisions(&done));
    assert_eq!(decisions(&done).len(), 6);
    assert!(dry.contains("would delete 4 of 6"), "{dry}");
    assert!(done.contains("deleted 4 of 6"), "{done}");
    assert_eq!(point_names(&ts), ["c/p4", "c/p5"]);
    expect_exit(ts.cli().args(["check", "--read-data"]), 0);
}

#[test]
fn the_mount_daemon_runs_due_schedules() {
    if !fuse_or_skip("the_mount_daemon_runs_due_schedules") {
        return;
    }
    let ts = cli_store();
    schedule(&ts, "2s", "last=2");
    // Without the scheduler nothing is created.
    {
        let _m = MountGuard::new(&ts.store_path(), &["--no-schedule"]);
        std::thread::sleep(Duration::from_millis(2500));
        assert!(point_names(&ts).is_empty());
    }
    let m = MountGuard::new(&ts.store_path(), &[]);
    let started = SystemTime::now();
    wait_until("three scheduled runs", Duration::from_secs(20), || {
        let json = std::fs::read(m.path("c/collection.json")).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap_or_default();
        let run = &v["rpfs"]["schedule"]["lastRun"];
        run["result"] == "Succeeded" && !run["pruned"].is_null()
    });
    assert!(started.elapsed().expect("time") < Duration::from_secs(20));
    // Pruned to the policy, visible through the mount.
    let listed = names_in(&m.path("c"));
    let points: Vec<&String> = listed
        .iter()
        .filter(|n| !matches!(n.as_str(), "collection.json" | "latest"))
        .collect();
    assert!((1..=3).contains(&points.len()), "{listed:?}");
}

#[test]
fn a_run_at_the_limit_prunes_first_and_records_the_limit_error() {
    let (dir, engine, secs) = shm_store();
    vm_with_disk(&engine, dir.path(), &[3u8; BLOCK], None);
    engine.create_collection("manual", "vm", None).expect("c1");
    engine.create_collection("c", "vm", None).expect("c2");
    for i in 0..497 {
        create(&engine, "manual", &format!("m{i}"));
    }
    // 497 held elsewhere plus at most 2 here, plus the one a run adds before it prunes: allowed;
    // 3 here would reach the limit.
    let refused = engine
        .set_schedule(
            "c",
            Some(Duration::from_secs(HOUR)),
            Some(parse_policy("last=3").expect("policy")),
        )
        .expect_err("501 could be kept");
    assert_mentions(&refused.to_string(), &["500", "497 in 'manual'"]);
    engine
        .set_schedule(
            "c",
            Some(Duration::from_secs(HOUR)),
            Some(parse_policy("last=2").expect("policy")),
        )
        .expect("500 at most");
    for h in 0..2 {
        secs.store(T0 + h * HOUR, Ordering::SeqCst);
        let r = engine.run_due().expect("run");
        assert_eq!(r[0].run.result, "Succeeded", "{r:?}");
    }
    assert_eq!(engine.catalog().expect("catalog").points.len(), 499);
    // A manual point fills the VM. At the limit, pruning first frees nothing (the policy keeps
    // both of its points), so the run fails, and says why.
    create(&engine, "manual", "m-last");
    secs.store(T0 + 2 * HOUR, Ordering::SeqCst);
    let r = engine.run_due().expect("run");
    assert_eq!(r[0].run.result, "Failed");
    assert_mentions(
        r[0].run.error.as_deref().unwrap_or(""),
        &["500 restore points", "limit"],
    );
    let cat = engine.catalog().expect("catalog");
    assert_eq!(cat.points.len(), 500);
    let last = cat.collection("c").expect("c").schedule.clone().expect("s");
    assert_eq!(last.last_run.expect("recorded").result, "Failed");
    // Not retried every tick: the next run is an interval later.
    assert_eq!(
        last.next_run,
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(T0 + 3 * HOUR))
            .to_string()
    );
}

#[test]
fn two_schedulers_on_one_store_take_each_run_once() {
    let (dir, engine, secs) = shm_store();
    vm_with_disk(&engine, dir.path(), &[5u8; BLOCK], None);
    hourly_collection(&engine, None);
    // A second engine on the same store and clock, as a mount daemon beside `rpfs run-due`.
    let other = Engine::open(
        Arc::new(LocalStorage::new(dir.path().join("store"))),
        OpenOptions::default(),
    )
    .expect("second engine")
    .with_clock(clock_of(&secs));
    for h in 0..12u64 {
        secs.store(T0 + h * HOUR, Ordering::SeqCst);
        let a = engine.clone();
        let b = other.clone();
        let ta = std::thread::spawn(move || a.run_due().expect("a"));
        let tb = std::thread::spawn(move || b.run_due().expect("b"));
        let runs: Vec<_> = [ta, tb]
            .into_iter()
            .flat_map(|t| t.join().expect("thread"))
            .collect();
        // One took it; the other found it claimed or saw it not due, or met the VM busy and
        // gave the claim back, to retry.
        let made = runs.iter().filter(|r| r.run.result == "Succeeded").count();
        assert_eq!(made, 1, "hour {h}: {runs:?}");
        assert_eq!(
            engine.catalog().expect("catalog").points.len() as u64,
            h + 1,
            "hour {h}"
        );
    }
}
