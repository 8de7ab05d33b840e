//! Crash tests: the `rpfs` CLI is killed with SIGKILL at random moments while it creates or
//! deletes a point. After every kill the store must open (running recovery), pass
//! `check --read-data` with no leftovers, show no partial point, and still hold every committed
//! point byte for byte. The mount daemon is killed likewise while `mkdir` or `rmdir` through
//! the mount creates or deletes a point.
//!
//! `RPFS_KILLS` sets the number of kills per test (default 24; `scripts/soak.sh` runs 50).

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;
use rpfs::engine::Engine;
use rpfs::engine::progress::Silent;

use crate::common::images::{KIB, MIB, change_blocks, write_sparse};
use crate::common::mount::{MountGuard, fuse_or_skip};
use crate::common::store::{TestStore, create, read_image};
use crate::common::sys::{env_count, rng, seed};

fn kills() -> usize {
    env_count("RPFS_KILLS", 24)
}

struct Fixture {
    ts: TestStore,
    disk: std::path::PathBuf,
    content: Vec<u8>,
    /// Committed points and their content hash.
    committed: BTreeMap<String, u128>,
}

fn hash(data: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(data)
}

impl Fixture {
    fn new(rng: &mut StdRng) -> Fixture {
        let ts = TestStore::new(64 * KIB as u32);
        let disk = ts.path("disk.img");
        let mut content = vec![0u8; 24 * MIB as usize];
        rand::RngCore::fill_bytes(rng, &mut content[..16 * MIB as usize]);
        write_sparse(&disk, &content);
        ts.vm("vm", &[("disk", &disk)], "c1");
        Fixture {
            ts,
            disk,
            content,
            committed: BTreeMap::new(),
        }
    }

    fn spawn(&self, args: &[&str]) -> Child {
        Command::new(assert_cmd::cargo::cargo_bin("rpfs"))
            .args(args)
            .env("RPFS_STORE", self.ts.store_path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rpfs")
    }

    /// Creates points `<prefix>0`.. in c1, changing 20% of the blocks before each, and records
    /// them as committed.
    fn commit_points(&mut self, prefix: &str, n: usize, rng: &mut StdRng) {
        for i in 0..n {
            change_blocks(&self.disk, &mut self.content, 64 * KIB, 0.2, rng);
            let name = format!("{prefix}{i}");
            self.ts.create("c1", &name);
            self.committed.insert(name, hash(&self.content));
        }
    }

    /// Runs `args` to completion and returns how long it took.
    fn timed(&self, args: &[&str]) -> Duration {
        let start = Instant::now();
        let status = self.spawn(args).wait().expect("wait");
        assert!(status.success(), "{args:?} failed");
        start.elapsed()
    }

    /// Runs `args`, killing it after a random delay within `window`. Returns whether it
    /// finished by itself and whether it left an operation marker (killed mid-operation).
    fn kill_during(
        &self,
        args: &[&str],
        window: (Duration, Duration),
        rng: &mut StdRng,
    ) -> (bool, bool) {
        let mut child = self.spawn(args);
        let delay =
            window.0 + (window.1.saturating_sub(window.0)).mul_f64(rng.random_range(0.0..1.0));
        std::thread::sleep(delay);
        let finished = matches!(child.try_wait(), Ok(Some(_)));
        let _ = child.kill();
        let _ = child.wait();
        let pending = self
            .ts
            .snapshot()
            .keys()
            .any(|k| k.ends_with("pending.json"));
        (finished, pending)
    }

    /// The span in which kills land inside the operation: from the time a command that only
    /// opens the store takes, to a little past the time the operation took.
    fn window(&self, op: Duration) -> (Duration, Duration) {
        let startup = self.timed(&["point", "list"]);
        (startup.mul_f64(0.8), op.mul_f64(1.1).max(startup))
    }

    /// Opens the store (recovery runs), checks it and verifies every committed point.
    fn verify(&self, maybe: Option<(&str, u128)>) -> Engine {
        let engine = self.ts.reopen();
        let report = engine.check(true, &Silent).expect("check runs");
        assert!(
            report.problems.is_empty(),
            "check after crash: {:#?}",
            report.problems
        );
        let cat = engine.catalog().expect("catalog");
        for p in &cat.points {
            let want = match self.committed.get(&p.name) {
                Some(h) => *h,
                None => match maybe {
                    Some((name, h)) if name == p.name => h,
                    _ => panic!("point {} is visible but was never committed", p.name),
                },
            };
            let got = hash(&read_image(&engine, "c1", &p.name, "disk"));
            assert_eq!(got, want, "point {} changed", p.name);
        }
        for name in self.committed.keys() {
            assert!(
                cat.points.iter().any(|p| &p.name == name) || maybe.is_some_and(|(m, _)| m == name),
                "committed point {name} was lost"
            );
        }
        engine
    }

    fn names(engine: &Engine) -> Vec<String> {
        engine
            .catalog()
            .expect("catalog")
            .points
            .into_iter()
            .map(|p| p.name)
            .collect()
    }
}

#[test]
fn killed_creations_never_expose_or_lose_a_point() {
    let mut rng = rng(seed());
    let mut f = Fixture::new(&mut rng);
    let disk = f.disk.clone();
    let op = f.timed(&["point", "create", "c1", "timing"]);
    f.committed.insert("timing".into(), hash(&f.content));
    let window = f.window(op);
    let (mut survived, mut mid) = (0, 0);
    let kills = kills();
    for i in 0..kills {
        change_blocks(&disk, &mut f.content, 64 * KIB, 0.3, &mut rng);
        let name = format!("k{i}");
        let (finished, pending) =
            f.kill_during(&["point", "create", "c1", &name], window, &mut rng);
        mid += usize::from(pending);
        let h = hash(&f.content);
        let engine = f.verify(Some((&name, h)));
        if Fixture::names(&engine).contains(&name) {
            f.committed.insert(name, h);
            survived += 1;
        } else {
            assert!(!finished, "{name} finished but is not there");
        }
    }
    eprintln!(
        "{survived} of {kills} creations committed before the kill, {mid} killed mid-operation"
    );
    assert!(mid > 0, "no kill landed inside a creation");
}

#[test]
fn killed_deletions_never_change_the_other_points() {
    let mut rng = rng(seed());
    let mut f = Fixture::new(&mut rng);
    let disk = f.disk.clone();
    f.commit_points("base", 6, &mut rng);
    let probe = f.committed.keys().next().cloned().expect("a point");
    let op = f.timed(&["point", "delete", &format!("c1/{probe}")]);
    f.committed.remove(&probe);
    let window = f.window(op);
    let (mut deleted, mut mid) = (0, 0);
    let kills = kills();
    for i in 0..kills {
        // Keep the chain long enough, with new data in every point.
        change_blocks(&disk, &mut f.content, 64 * KIB, 0.2, &mut rng);
        let name = format!("n{i}");
        create(&f.ts.reopen(), "c1", &name);
        f.committed.insert(name, hash(&f.content));
        let names: Vec<String> = f.committed.keys().cloned().collect();
        // Alternate first, middle and last of the chain.
        let victim = match i % 3 {
            0 => names[0].clone(),
            1 => names[names.len() / 2].clone(),
            _ => names[names.len() - 1].clone(),
        };
        let target = format!("c1/{victim}");
        let (_, pending) = f.kill_during(&["point", "delete", &target], window, &mut rng);
        mid += usize::from(pending);
        let h = f.committed.remove(&victim).expect("victim");
        let engine = f.verify(Some((&victim, h)));
        if Fixture::names(&engine).contains(&victim) {
            f.committed.insert(victim, h);
        } else {
            deleted += 1;
        }
    }
    eprintln!(
        "{deleted} of {kills} deletions committed before the kill, {mid} killed mid-operation"
    );
    assert!(mid > 0, "no kill landed inside a deletion");
}

#[test]
fn killed_mount_daemons_never_expose_or_lose_a_point() {
    if !fuse_or_skip("killed_mount_daemons_never_expose_or_lose_a_point") {
        return;
    }
    let mut rng = rng(seed());
    let mut f = Fixture::new(&mut rng);
    let disk = f.disk.clone();
    // Time a creation and a deletion through the mount, as the kills will run them.
    let m = MountGuard::new(&f.ts.store_path(), &["--allow-delete"]);
    let start = Instant::now();
    std::fs::create_dir(m.path("c1/timing")).expect("mkdir through the mount");
    let op = start.elapsed();
    std::fs::remove_dir(m.path("c1/timing")).expect("rmdir through the mount");
    drop(m);
    let (mut created, mut deleted, mut mid) = (0, 0, 0);
    let kills = kills();
    for i in 0..kills {
        change_blocks(&disk, &mut f.content, 64 * KIB, 0.3, &mut rng);
        let h = hash(&f.content);
        let m = MountGuard::new(&f.ts.store_path(), &["--allow-delete"]);
        // Alternate creations and deletions.
        let (creating, name, h) = match f.committed.keys().last().cloned() {
            Some(victim) if i % 2 == 1 => {
                let h = f.committed.remove(&victim).expect("victim");
                (false, victim, h)
            }
            _ => (true, format!("m{i}"), h),
        };
        let target = format!("c1/{name}");
        let mut client = Command::new(if creating { "mkdir" } else { "rmdir" })
            .arg(m.path(&target))
            .stderr(Stdio::null())
            .spawn()
            .expect("client");
        std::thread::sleep(op.mul_f64(rng.random_range(0.0..1.2)));
        let _ = Command::new("kill")
            .args(["-9", &m.pid().to_string()])
            .status();
        let _ = client.wait();
        drop(m);
        mid += usize::from(f.ts.snapshot().keys().any(|k| k.ends_with("pending.json")));
        let engine = f.verify(Some((&name, h)));
        if Fixture::names(&engine).contains(&name) {
            created += usize::from(creating);
            f.committed.insert(name, h);
        } else {
            deleted += usize::from(!creating);
        }
    }
    eprintln!(
        "{kills} daemon kills: {created} creations and {deleted} deletions committed first, \
         {mid} killed mid-operation"
    );
    assert!(mid > 0, "no kill landed inside an operation");
}

#[test]
fn killed_collection_deletes_never_change_the_other_collections() {
    let mut rng = rng(seed());
    let mut f = Fixture::new(&mut rng);
    let disk = f.disk.clone();
    f.commit_points("keep", 3, &mut rng);
    let (mut deleted, mut mid) = (0, 0);
    let kills = kills().div_ceil(2);
    let mut window = None;
    for i in 0..kills {
        // A second collection of the same VM, with points interleaved in the chain.
        let coll = format!("gone{i}");
        let engine = f.ts.reopen();
        engine
            .create_collection(&coll, "vm", None)
            .expect("collection");
        let mut doomed = Vec::new();
        for j in 0..3 {
            change_blocks(&disk, &mut f.content, 64 * KIB, 0.2, &mut rng);
            create(&engine, &coll, &format!("x{j}"));
            doomed.push((format!("x{j}"), hash(&f.content)));
        }
        drop(engine);
        let window = *window.get_or_insert_with(|| {
            // Time one collection delete, then recreate what it removed.
            let op = f.timed(&["collection", "delete", &coll, "--force"]);
            f.window(op)
        });
        if i == 0 {
            continue;
        }
        let (_, pending) = f.kill_during(
            &["collection", "delete", &coll, "--force"],
            window,
            &mut rng,
        );
        mid += usize::from(pending);
        // The doomed points may each be there or not; the committed ones must all be.
        let engine = f.ts.reopen();
        let report = engine.check(true, &Silent).expect("check runs");
        assert!(
            report.problems.is_empty(),
            "after a kill: {:#?}",
            report.problems
        );
        let cat = engine.catalog().expect("catalog");
        for name in f.committed.keys() {
            assert!(
                cat.point("c1", name).is_ok(),
                "committed point c1/{name} was lost"
            );
            let got = hash(&read_image(&engine, "c1", name, "disk"));
            assert_eq!(got, f.committed[name], "c1/{name} changed");
        }
        for (name, h) in &doomed {
            if cat.point(&coll, name).is_ok() {
                assert_eq!(hash(&read_image(&engine, &coll, name, "disk")), *h);
            }
        }
        if cat.collection(&coll).is_err() {
            deleted += 1;
        } else {
            // Finish the job, as a user would.
            drop(engine);
            f.timed(&["collection", "delete", &coll, "--force"]);
        }
    }
    eprintln!(
        "{} collection deletes killed: {deleted} finished first, {mid} killed mid-operation",
        kills - 1
    );
}
