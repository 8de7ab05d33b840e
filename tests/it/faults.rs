//! I/O faults: every store operation of a create and of a delete fails in turn, once and from
//! then on, with ENOSPC, EIO and EDQUOT. Each failure is a clear error naming the cause; no
//! partial point appears; every committed point still reads byte-identically; and after one
//! recovery (the next open) the store holds nothing but what its points reference (in format 2,
//! the default: its packs hold exactly the pages the committed maps reference).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use rpfs::engine::create::CreateRequest;
use rpfs::engine::progress::Silent;
use rpfs::engine::{Engine, ErrorKind, OpenOptions};
use rpfs::store::{LocalStorage, format};
use rpfs::testing::fault::{Fault, FaultyStorage, Persistence, When};

use crate::common::cli::assert_mentions;
use crate::common::store::{
    Expected, Golden, all_points, golden, open, page_account, point_matches, snapshot,
};
use crate::common::sys::sh;

fn file_names(store: &Path) -> BTreeSet<String> {
    snapshot(store).into_keys().collect()
}

/// The points of the store are exactly `expected`, byte for byte, and a full check finds
/// nothing wrong.
fn assert_points(engine: &Engine, expected: &Expected, what: &str) {
    let want: Vec<String> = expected.keys().cloned().collect();
    assert_eq!(all_points(engine), want, "{what}: points");
    for (point, disks) in expected {
        assert!(
            point_matches(engine, point, disks),
            "{what}: {point} reads back different bytes"
        );
    }
    let report = engine.check(true, &Silent).expect("check");
    assert!(report.problems.is_empty(), "{what}: {:?}", report.problems);
}

fn errno_text(fault: Fault) -> &'static str {
    match fault {
        Fault::NoSpace => "No space left on device",
        Fault::Io => "Input/output error",
        Fault::Quota => "Disk quota exceeded",
    }
}

type Attempt = Result<(), rpfs::engine::Error>;

/// Ids (points and disk points) of the points in the store.
fn point_ids(engine: &Engine) -> Vec<String> {
    let cat = engine.catalog().expect("catalog");
    cat.points
        .iter()
        .flat_map(|p| {
            std::iter::once(p.id.to_string()).chain(p.disks.iter().map(|d| d.drp_id.to_string()))
        })
        .collect()
}

/// Runs `attempt` on a fresh copy of the golden store with operation n failing, for n = 0, 1, …
/// until an attempt runs without meeting a fault; `verify` then checks the recovered store.
fn every_failure(
    g: &Golden,
    fault: Fault,
    persistence: Persistence,
    when: When,
    attempt: impl Fn(&Engine) -> Attempt,
    verify: impl Fn(&Engine, bool, &str),
) -> u64 {
    let before = file_names(&g.store);
    for n in 0.. {
        let work = tempfile::tempdir().expect("tempdir");
        let store = work.path().join("store");
        sh(&format!(
            "cp -a '{}' '{}'",
            g.store.display(),
            store.display()
        ));
        let faulty = FaultyStorage::new(Arc::new(LocalStorage::new(&store)));
        let engine =
            Engine::open(Arc::new(faulty.clone()), OpenOptions::default()).expect("open store");
        faulty.fail_after_when(n, fault, persistence, when);
        let result = attempt(&engine);
        drop(engine);
        let injected = faulty.injected();
        faulty.heal();
        let what = format!("{fault:?} {persistence:?} {when:?} at operation {n}");
        if let Err(e) = &result {
            assert!(injected > 0, "{what}: failed without a fault: {e}");
            assert_eq!(e.kind(), ErrorKind::Io, "{what}: {e}");
            assert_mentions(&e.to_string(), &[errno_text(fault)]);
        }
        // The next open recovers; afterwards only files of the points there remain.
        let engine = open(&store);
        verify(&engine, result.is_ok(), &what);
        let allowed = point_ids(&engine);
        let paged = engine.header().version == format::PAGED;
        for f in file_names(&store).difference(&before) {
            // Format 2's packs and index segments have ids of their own, shared by every
            // point: the page account below judges them.
            if paged && (f.starts_with("data/") || f.starts_with("index/")) {
                continue;
            }
            assert!(
                allowed.iter().any(|a| f.contains(a.as_str())),
                "{what}: leftover {f}"
            );
        }
        if paged {
            let pages = page_account(&store, &engine);
            assert!(pages.exact(), "{what}: after recovery {pages:?}");
        }
        if injected == 0 {
            assert!(result.is_ok(), "{what}: no fault, yet it failed");
            return n;
        }
        assert!(n < 10_000, "{what}: never ran clean");
    }
    unreachable!()
}

/// The (fault, persistence, when) combinations to walk: every fault before the call, once and
/// from then on; and failures reported after the call did its work (a failed fsync).
fn combinations(after_too: bool) -> Vec<(Fault, Persistence, When)> {
    let mut out = Vec::new();
    for fault in Fault::ALL {
        for persistence in [Persistence::Once, Persistence::FromThenOn] {
            out.push((fault, persistence, When::Before));
        }
    }
    if after_too {
        out.push((Fault::Io, Persistence::Once, When::After));
        out.push((Fault::NoSpace, Persistence::FromThenOn, When::After));
    }
    out
}

#[test]
fn every_failing_operation_of_a_create_leaves_the_store_as_it_was() {
    let g = golden(4);
    for (fault, persistence, when) in combinations(true) {
        let attempt = |engine: &Engine| -> Attempt {
            let req = CreateRequest {
                collection: "c".into(),
                name: "new".into(),
                exclude: vec![],
                consistency: None,
            };
            engine.create_point(&req, &Silent).map(|_| ())
        };
        let verify = |engine: &Engine, created: bool, what: &str| {
            let mut want = g.points.clone();
            // A call that failed after doing its work may have committed the point, whole;
            // reported as a failure, it is never trusted, and never partial.
            let present = all_points(engine).iter().any(|p| p == "c/new");
            if created || (when == When::After && present) {
                want.insert("c/new".into(), g.sources.clone());
            }
            assert_points(engine, &want, what);
        };
        let ops = every_failure(&g, fault, persistence, when, attempt, verify);
        assert!(ops > 10, "a create took only {ops} operations");
        eprintln!("create: {fault:?} {persistence:?} {when:?} faults at each of {ops} operations");
    }
}

#[test]
fn every_failing_operation_of_a_delete_leaves_the_points_intact() {
    let g = golden(4);
    for victim in ["c/p1", "d/q1", "c/p3"] {
        for (fault, persistence, when) in combinations(victim == "d/q1") {
            let attempt = |engine: &Engine| -> Attempt {
                let (coll, name) = victim.split_once('/').expect("collection/point");
                engine.delete_point(coll, name).map(|_| ())
            };
            let verify = |engine: &Engine, deleted: bool, what: &str| {
                let mut want = g.points.clone();
                // A delete that failed after it committed is gone too; either way the rest
                // reads intact.
                let gone = !all_points(engine).iter().any(|p| p == victim);
                assert!(!deleted || gone, "{what}: delete succeeded, point remains");
                if gone {
                    want.remove(victim);
                }
                assert_points(engine, &want, what);
            };
            let ops = every_failure(&g, fault, persistence, when, attempt, verify);
            eprintln!(
                "delete {victim}: {fault:?} {persistence:?} {when:?} faults at each of {ops} \
                 operations"
            );
        }
    }
}
