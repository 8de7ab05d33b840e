//! Crashes during a format 2 deletion that frees shared pages: VM B is a clone of VM A's disk,
//! each then changed a little and given points, so deleting A's points frees the pages only A
//! used, keeps those B still references, and repacks the packs holding both. The deletion is
//! cut at every one of its steps, by a simulated power cut (`rpfs::testing::crashsim`, each
//! file system call of the traced run) and by kill -9 (`rpfs::testing::fault`: every storage
//! operation from the Nth on fails, so what was done stays and nothing more happens). After
//! each cut the store must open (recovery runs) with every committed point of A and B reading
//! as captured (a point whose deletion committed is gone, any other intact), no page a
//! committed map references may be gone, and once the next sweep ran the packs must hold
//! exactly the referenced pages: what the crash left behind is freed. A real `rpfs` process
//! killed with SIGKILL mid-deletion is checked the same way.
//!
//! `RPFS_CRASH_STATES` sets the number of power-cut states per step (default 4), `RPFS_KILLS`
//! the number of SIGKILLs (default 24).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use rpfs::engine::progress::Silent;
use rpfs::engine::{Engine, OpenOptions};
use rpfs::store::LocalStorage;
use rpfs::testing::crashsim::{self, Sabotage, Trace};
use rpfs::testing::fault::{Fault, FaultyStorage, Persistence};
use tempfile::TempDir;

use crate::common::images::write_sparse;
use crate::common::store::{
    Expected, TestStore, all_points, owe_sweep, page_account, point_matches, snapshot,
};
use crate::common::sys::{env_count, rng, seed};

const PAGE: usize = 4096;
/// Pages of A's disk (512 KiB) and of the frames (16 KiB).
const PAGES: usize = 128;
const FRAME: u32 = 16 << 10;

/// A store with VMs A and B sharing most pages, and what each point must read.
struct Shared {
    _dir: TempDir,
    store: PathBuf,
    points: Expected,
}

/// Replaces with new random ones the pages `i` of `content` with `i % every == 2`, and a
/// fraction of the others chosen at random; in the file at `path` too.
fn change_pages(path: &Path, content: &mut [u8], every: usize, fraction: f64, rng: &mut StdRng) {
    let pages = content.len() / PAGE;
    let random: Vec<usize> = (0..((pages as f64 * fraction) as usize))
        .map(|_| rng.random_range(0..pages))
        .collect();
    for p in (0..pages).filter(|i| i % every == 2).chain(random) {
        rng.fill_bytes(&mut content[p * PAGE..(p + 1) * PAGE]);
    }
    write_sparse(path, content);
}

/// A: template pages (some zero, some recurring) and random ones; a/p1; every eighth page and
/// 8% more changed; a/p2. B: a clone of A's disk as it was at a/p1; every sixteenth page (all
/// among A's changes, so deleting a/p1 surely frees pages in frames that keep others) and 5%
/// more changed, b/q1; 10% more, b/q2.
fn shared_store(seed: u64) -> Shared {
    let mut rng = rng(seed);
    let ts = TestStore::paged(FRAME);
    let (a_disk, b_disk) = (ts.path("a.img"), ts.path("b.img"));
    let mut a = vec![0u8; PAGES * PAGE];
    for (i, page) in a.chunks_mut(PAGE).enumerate() {
        match i % 4 {
            0 => {}
            1 => page.fill((i % 3) as u8 + 1),
            _ => rng.fill_bytes(page),
        }
    }
    write_sparse(&a_disk, &a);
    ts.vm("a", &[("d", &a_disk)], "a");
    let mut points = Expected::new();
    let disk = |c: &[u8]| BTreeMap::from([("d".to_string(), c.to_vec())]);
    ts.create("a", "p1");
    points.insert("a/p1".into(), disk(&a));
    let mut b = a.clone();
    write_sparse(&b_disk, &b);
    change_pages(&a_disk, &mut a, 8, 0.08, &mut rng);
    ts.create("a", "p2");
    points.insert("a/p2".into(), disk(&a));
    ts.vm("b", &[("d", &b_disk)], "b");
    for (q, every, fraction) in [("q1", 16, 0.05), ("q2", PAGES, 0.1)] {
        change_pages(&b_disk, &mut b, every, fraction, &mut rng);
        ts.create("b", q);
        points.insert(format!("b/{q}"), disk(&b));
    }
    let account = page_account(&ts.store_path(), &ts.engine);
    assert!(account.exact(), "the setup store is not exact: {account:?}");
    let store = ts.store_path();
    let TestStore { dir, engine } = ts;
    drop(engine);
    Shared {
        _dir: dir,
        store,
        points,
    }
}

/// A deletion to cut, and the points it deletes (newest first, as they are deleted).
struct Case {
    what: &'static str,
    victims: &'static [&'static str],
    op: fn(&Engine) -> rpfs::engine::Result<()>,
}

fn cases() -> [Case; 2] {
    [
        Case {
            what: "delete a/p1",
            victims: &["a/p1"],
            op: |e| e.delete_point("a", "p1").map(drop),
        },
        Case {
            what: "delete collection a",
            victims: &["a/p2", "a/p1"],
            op: |e| e.delete_collection("a", true).map(drop),
        },
    ]
}

/// Opens the crashed store (recovering it) and checks it: every point not among `victims`
/// present and intact, any victim present intact, no referenced page gone, `check` clean; then
/// the next sweep leaves the packs holding exactly the referenced pages.
fn examine(
    store: &Path,
    points: &Expected,
    victims: &[&str],
    read_data: bool,
) -> Result<(), String> {
    let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        examine_inner(store, points, victims, read_data)
    }));
    verdict.unwrap_or_else(|p| {
        Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into()))
    })
}

fn examine_inner(
    store: &Path,
    points: &Expected,
    victims: &[&str],
    read_data: bool,
) -> Result<(), String> {
    let open = || {
        Engine::open(Arc::new(LocalStorage::new(store)), OpenOptions::default())
            .map_err(|e| format!("open failed: {e}"))
    };
    let engine = open()?;
    let cat = engine.catalog().map_err(|e| format!("catalog: {e}"))?;
    if !cat.damaged.is_empty() {
        return Err(format!("damaged records: {:?}", cat.damaged));
    }
    let present = all_points(&engine);
    let verify = |engine: &Engine| -> Result<(), String> {
        for (p, disks) in points {
            let there = present.contains(p);
            if !there && !victims.contains(&p.as_str()) {
                return Err(format!("committed point {p} lost"));
            }
            if there && !point_matches(engine, p, disks) {
                return Err(format!("point {p} does not read back as captured"));
            }
        }
        if let Some(p) = present.iter().find(|p| !points.contains_key(*p)) {
            return Err(format!("unexpected point {p}"));
        }
        Ok(())
    };
    verify(&engine)?;
    let report = engine
        .check(read_data, &Silent)
        .map_err(|e| format!("check: {e}"))?;
    if !report.problems.is_empty() {
        return Err(format!("check: {:?}", report.problems));
    }
    let account = page_account(store, &engine);
    if !account.missing.is_empty() {
        return Err(format!(
            "pages still referenced were freed: {:?}",
            account.missing
        ));
    }
    // Recovery finished the deletion, sweep included: nothing is left to free.
    if !account.exact() {
        return Err(format!(
            "after recovery {} pages are unreferenced (e.g. {:?}), leftovers {:?}",
            account.unreferenced.len(),
            account.unreferenced.first(),
            account.leftovers
        ));
    }
    drop(engine);
    // And the next sweep (the store's debt marker makes the next open run one) changes
    // nothing a point reads, and leaves the packs exact.
    owe_sweep(store);
    let engine = open()?;
    verify(&engine)?;
    let account = page_account(store, &engine);
    if !account.exact() {
        return Err(format!("after the next sweep: {account:?}"));
    }
    Ok(())
}

fn states() -> usize {
    env_count("RPFS_CRASH_STATES", 4)
}

/// What a kill left in the store at `dir`: every file with its content, an operation marker
/// only by its presence (it records when the operation started).
fn state_key(dir: &Path) -> u128 {
    let files: Vec<(String, u128)> = snapshot(dir)
        .into_iter()
        .map(|(k, v)| {
            let h = match k.ends_with("pending.json") {
                true => 0,
                false => xxhash_rust::xxh3::xxh3_128(&v),
            };
            (k, h)
        })
        .collect();
    xxhash_rust::xxh3::xxh3_128(format!("{files:?}").as_bytes())
}

#[test]
fn power_cuts_at_every_step_of_a_shared_delete_free_only_the_unreferenced() {
    let seed = seed();
    for case in cases() {
        let shared = shared_store(seed);
        let work = tempfile::tempdir().expect("tempdir");
        let initial = work.path().join("initial");
        crashsim::copy_tree(&shared.store, &initial).expect("copy");
        let live = work.path().join("live");
        crashsim::copy_tree(&initial, &live).expect("copy");
        let trace = Arc::new(Trace::new());
        let storage = crashsim::traced_storage(&live, trace.clone(), Sabotage::None);
        let engine =
            Engine::open(Arc::new(storage), OpenOptions::default()).expect("open traced store");
        assert!(trace.take().is_empty(), "opening a clean store wrote");
        (case.op)(&engine).expect("the deletion");
        drop(engine);
        let events = trace.take();
        let start = Instant::now();
        let mut rng = StdRng::seed_from_u64(seed);
        for upto in 0..=events.len() {
            for s in 0..states() {
                let state = work.path().join(format!("state{upto}-{s}"));
                let mut pick = |k: usize| rng.random_range(0..k);
                crashsim::crash_state(&initial, &events, upto, &mut pick, &state).expect("state");
                // The end: the deletion returned, so every victim must be gone.
                let victims: &[&str] = case.victims;
                examine(&state, &shared.points, victims, upto % 8 == 0)
                    .and_then(|()| {
                        let present = all_points(&crate::common::store::open(&state));
                        match upto == events.len() && victims.iter().any(|v| present.contains(&v.to_string())) {
                            true => Err("a victim survived the completed deletion".into()),
                            false => Ok(()),
                        }
                    })
                    .unwrap_or_else(|e| {
                        panic!(
                            "{}: seed {seed}, power cut after {upto} of {} events (last: {:?}): {e}",
                            case.what,
                            events.len(),
                            events.get(upto.wrapping_sub(1))
                                .map(|e| format!("{e:?}").chars().take(120).collect::<String>())
                        )
                    });
                let _ = std::fs::remove_dir_all(&state);
            }
        }
        eprintln!(
            "{}: power cut at each of {} events ({} states each), all recovered in {:?}",
            case.what,
            events.len(),
            states(),
            start.elapsed()
        );
    }
}

#[test]
fn kills_at_every_step_of_a_shared_delete_free_only_the_unreferenced() {
    let seed = seed();
    for case in cases() {
        let shared = shared_store(seed);
        let work = tempfile::tempdir().expect("tempdir");
        // How many storage operations the whole deletion makes.
        let total = {
            let dir = work.path().join("count");
            crashsim::copy_tree(&shared.store, &dir).expect("copy");
            let faulty = FaultyStorage::new(Arc::new(LocalStorage::new(&dir)));
            let engine =
                Engine::open(Arc::new(faulty.clone()), OpenOptions::default()).expect("open");
            let before = faulty.operations();
            (case.op)(&engine).expect("the deletion");
            faulty.operations() - before
        };
        let start = Instant::now();
        // A kill at a read leaves the same store as a kill at the next write: examine each
        // distinct state once.
        let mut seen = BTreeSet::new();
        for n in 0..=total {
            let dir = work.path().join(format!("kill{n}"));
            crashsim::copy_tree(&shared.store, &dir).expect("copy");
            let faulty = FaultyStorage::new(Arc::new(LocalStorage::new(&dir)));
            let engine =
                Engine::open(Arc::new(faulty.clone()), OpenOptions::default()).expect("open");
            faulty.fail_after(n, Fault::Io, Persistence::FromThenOn);
            let done =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (case.op)(&engine)));
            drop(engine);
            let finished = faulty.injected() == 0 && matches!(done, Ok(Ok(())));
            if seen.insert(state_key(&dir)) {
                examine(&dir, &shared.points, case.victims, seen.len() % 8 == 0).unwrap_or_else(
                    |e| {
                        panic!(
                            "{}: seed {seed}, killed at operation {n} of {total}: {e}",
                            case.what
                        )
                    },
                );
            }
            if finished {
                let present = all_points(&crate::common::store::open(&dir));
                assert!(
                    case.victims
                        .iter()
                        .all(|v| !present.contains(&v.to_string())),
                    "{}: the deletion finished but a victim is still there",
                    case.what
                );
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        eprintln!(
            "{}: killed at each of {total} operations ({} distinct states), all recovered in {:?}",
            case.what,
            seen.len(),
            start.elapsed()
        );
    }
}

/// `rpfs collection delete --force a` killed with SIGKILL at random moments, on copies of the
/// shared store.
#[test]
fn killed_shared_deletions_free_only_the_unreferenced() {
    let seed = seed();
    let shared = shared_store(seed);
    let work = tempfile::tempdir().expect("tempdir");
    let args = ["collection", "delete", "--force", "a"];
    let run = |dir: &Path| {
        Command::new(assert_cmd::cargo::cargo_bin("rpfs"))
            .args(args)
            .env("RPFS_STORE", dir)
            .env_remove("RPFS_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rpfs")
    };
    // Time a whole run, and one that only opens the store.
    let timing = work.path().join("timing");
    crashsim::copy_tree(&shared.store, &timing).expect("copy");
    let t = Instant::now();
    assert!(
        run(&timing).wait().expect("wait").success(),
        "{args:?} failed"
    );
    let op = t.elapsed();
    let mut rng = rng(seed);
    let kills = env_count("RPFS_KILLS", 24);
    let mut mid = 0;
    for i in 0..kills {
        let dir = work.path().join(format!("k{i}"));
        crashsim::copy_tree(&shared.store, &dir).expect("copy");
        let mut child = run(&dir);
        std::thread::sleep(
            op.mul_f64(rng.random_range(0.0..1.1))
                .max(Duration::from_millis(1)),
        );
        let _ = child.kill();
        let _ = child.wait();
        mid += usize::from(snapshot(&dir).keys().any(|k| k.ends_with("pending.json")));
        examine(&dir, &shared.points, &["a/p2", "a/p1"], i % 4 == 0)
            .unwrap_or_else(|e| panic!("seed {seed}, kill {i}: {e}"));
        let _ = std::fs::remove_dir_all(&dir);
    }
    eprintln!("{kills} kills of {args:?}, {mid} mid-operation");
}

/// The shared store's points are all there and its packs exact before anything is cut (the
/// premise of the tests above), and deleting A really repacks and frees.
#[test]
fn deleting_a_frees_its_own_pages_and_keeps_the_shared_ones() {
    let shared = shared_store(seed());
    let engine = crate::common::store::open(&shared.store);
    let before = page_account(&shared.store, &engine);
    engine.delete_collection("a", true).expect("delete a");
    let after = page_account(&shared.store, &engine);
    assert!(after.exact(), "{after:?}");
    assert_eq!(after.referenced, after.present);
    assert!(
        after.present < before.present && after.present > 0,
        "pages {} before, {} after",
        before.present,
        after.present
    );
    for p in ["b/q1", "b/q2"] {
        assert!(point_matches(&engine, p, &shared.points[p]), "{p}");
    }
}

/// An engine that read the packs before a deletion repacked them (a mount daemon, say) reads
/// every remaining point correctly after it: nothing it cached of a pack's old layout (frame
/// tables, fingerprints) is used once the pack was rewritten. Without a block cache, so every
/// read resolves through the tables.
#[test]
fn a_live_engine_reads_the_same_after_its_own_deletion_repacked() {
    let shared = shared_store(seed());
    let options = OpenOptions {
        cache_bytes: 0,
        ..OpenOptions::default()
    };
    let engine =
        Engine::open(Arc::new(LocalStorage::new(&shared.store)), options).expect("open store");
    for (p, disks) in &shared.points {
        assert!(point_matches(&engine, p, disks), "{p} before");
    }
    engine.delete_point("a", "p1").expect("delete a/p1");
    for (p, disks) in shared.points.iter().filter(|(p, _)| *p != "a/p1") {
        assert!(point_matches(&engine, p, disks), "{p} after the repack");
    }
}
