//! `rpfs check --repair`: a dry run lists what no committed point references and changes
//! nothing; `--yes` removes exactly that; damaged points are named and kept; a second run
//! changes nothing.

use std::fs;

use rpfs::store::layout;

use crate::common::cli::{assert_mentions, expect_exit, rpfs_at};
use crate::common::store::{
    assert_unchanged, golden, golden_format, open, point_matches, snapshot,
};

/// Format 1, for the tests that plant strays beside and damage a point's own pack (format 2's
/// store-wide packs: `damage_paged.rs`, whose repairs sweep garbage packs and keep damaged
/// points).
const FORMAT_1: u32 = 1;

#[test]
fn repair_removes_only_what_no_point_references_and_is_idempotent() {
    let g = golden_format(4, FORMAT_1);
    let clean = snapshot(&g.store);
    let engine = open(&g.store);
    let cat = engine.catalog().expect("catalog");
    let p1 = cat.point("c", "p1").expect("p1").1.clone();
    drop(engine);
    let d = &p1.disks[0];
    let disk_dir = g.store.join(layout::disk_dir(p1.vm_id, d.disk_id));
    let pack = g.store.join(layout::pack(p1.vm_id, d.disk_id, d.drp_id));
    let strays = [
        disk_dir.join(format!("{}.pack", uuid::Uuid::new_v4())),
        disk_dir.join(format!("{}.map", uuid::Uuid::new_v4())),
        disk_dir.join(format!("{}.pack.0123.tmp", d.drp_id)),
        g.store
            .join(layout::points_dir(p1.vm_id))
            .join(format!("{}.config", uuid::Uuid::new_v4())),
        g.store.join(layout::points_dir(p1.vm_id)).join("notes.txt"),
    ];
    for s in &strays {
        fs::copy(&pack, s).expect("plant a stray");
    }
    let planted = snapshot(&g.store);

    let (out, _) = expect_exit(rpfs_at(&g.store).args(["check", "--repair"]), 10);
    for s in &strays {
        let key = s
            .strip_prefix(&g.store)
            .expect("in store")
            .to_string_lossy();
        assert_mentions(&out, &[&format!("would remove {key}")]);
    }
    assert_mentions(&out, &["5 unreachable files to remove"]);
    assert_unchanged(&planted, &snapshot(&g.store), "a dry run");

    let (out, _) = expect_exit(rpfs_at(&g.store).args(["check", "--repair", "--yes"]), 0);
    assert_mentions(&out, &["5 unreachable files removed"]);
    assert_unchanged(&clean, &snapshot(&g.store), "a repair");
    let engine = open(&g.store);
    for (p, disks) in &g.points {
        assert!(point_matches(&engine, p, disks), "{p} changed");
    }
    drop(engine);

    let (out, _) = expect_exit(rpfs_at(&g.store).args(["check", "--repair", "--yes"]), 0);
    assert_mentions(&out, &["0 unreachable files removed"]);
    assert_unchanged(&clean, &snapshot(&g.store), "a second repair");
}

#[test]
fn repair_names_damaged_points_and_keeps_every_intact_one() {
    let g = golden_format(4, FORMAT_1);
    let engine = open(&g.store);
    let cat = engine.catalog().expect("catalog");
    let p2 = cat.point("c", "p2").expect("p2").1.clone();
    drop(engine);
    // Damage the middle of p2's pack of its first disk: block data, not its table.
    let d = &p2.disks[0];
    let pack = g.store.join(layout::pack(p2.vm_id, d.disk_id, d.drp_id));
    let mut bytes = fs::read(&pack).expect("pack");
    let at = bytes.len() / 3;
    bytes[at] ^= 0x10;
    fs::write(&pack, &bytes).expect("write");
    let before = snapshot(&g.store);

    let engine = open(&g.store);
    let report = engine
        .check(true, &rpfs::engine::progress::Silent)
        .expect("check");
    assert!(
        report.damaged_points.contains("c/p2"),
        "{:?}",
        report.problems
    );
    drop(engine);

    let (out, err) = expect_exit(rpfs_at(&g.store).args(["check", "--repair", "--yes"]), 10);
    assert_mentions(
        &out,
        &[
            "cannot keep restore point c/p2",
            "0 unreachable files removed",
        ],
    );
    assert_mentions(&err, &["problem: restore point c/p2"]);
    assert_unchanged(&before, &snapshot(&g.store), "a repair of a damaged store");
    let engine = open(&g.store);
    for (p, disks) in &g.points {
        if !report.damaged_points.contains(p) {
            assert!(point_matches(&engine, p, disks), "intact {p} changed");
        }
    }
}

#[test]
fn repair_removes_nothing_of_a_vm_whose_records_cannot_be_read() {
    let g = golden(4);
    let engine = open(&g.store);
    let p2 = engine
        .catalog()
        .expect("catalog")
        .point("c", "p2")
        .expect("p2")
        .1
        .clone();
    drop(engine);
    // p2's record is damaged: its maps and packs now look unreferenced, but are not garbage.
    let record = g.store.join(layout::point(p2.vm_id, p2.id));
    let mut bytes = fs::read(&record).expect("record");
    let at = bytes.len() - 10;
    bytes[at] ^= 0x01;
    fs::write(&record, &bytes).expect("write");
    let before = snapshot(&g.store);
    let (out, err) = expect_exit(rpfs_at(&g.store).args(["check", "--repair", "--yes"]), 10);
    assert_mentions(&out, &["0 unreachable files removed"]);
    assert_mentions(&err, &["unreferenced files kept", "may reference them"]);
    assert_unchanged(
        &before,
        &snapshot(&g.store),
        "a repair beside a damaged record",
    );
}
