//! `rpfs stats` and what `point show` says a point stored: real figures on real stores. Two VMs
//! start from one template image (so a format-2 store holds the template once), then change
//! differently; the figures are checked against the images' content, against each other, and
//! against what deleting a collection actually frees.

use std::fs;
use std::path::Path;

use rand::RngCore;
use rand::rngs::StdRng;
use rpfs::engine::stats::{CollectionStats, StoreStats, VmStats};
use serde_json::Value;

use crate::common::cli::{cli_json, expect_exit};
use crate::common::images::{KIB, MIB, change_blocks, random_image, write_sparse};
use crate::common::store::{TestStore, paged_store};
use crate::common::sys::{rng, seed};

const PAGE: u64 = 4096;

/// 8 MiB of random data with holes: the first 192 KiB of every MiB and 40 single pages zero.
fn template(rng: &mut StdRng, path: &Path) -> Vec<u8> {
    let mut c = random_image(path, 8 * MIB as usize, rng);
    for m in 0..8usize {
        let at = m * MIB as usize;
        c[at..at + 192 * KIB as usize].fill(0);
    }
    for i in 0..40usize {
        let page = 300 + i * 41;
        c[page * PAGE as usize..(page + 1) * PAGE as usize].fill(0);
    }
    write_sparse(path, &c);
    c
}

/// Pages of `content` that are not all zero: what a point maps to stored data.
fn data_pages(content: &[u8]) -> u64 {
    content
        .chunks(PAGE as usize)
        .filter(|p| p.iter().any(|&b| b != 0))
        .count() as u64
}

/// Total size of the files under `dir` whose names end with `suffix`.
fn bytes_under(dir: &Path, suffix: &str) -> (u64, u64) {
    let (mut bytes, mut files) = (0, 0);
    let Ok(entries) = fs::read_dir(dir) else {
        return (0, 0);
    };
    for e in entries {
        let e = e.expect("entry");
        if e.file_type().expect("type").is_dir() {
            let (b, f) = bytes_under(&e.path(), suffix);
            bytes += b;
            files += f;
        } else if e.file_name().to_string_lossy().ends_with(suffix) {
            bytes += e.metadata().expect("metadata").len();
            files += 1;
        }
    }
    (bytes, files)
}

fn vm<'a>(s: &'a StoreStats, name: &str) -> &'a VmStats {
    s.vms
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no VM {name} in {s:#?}"))
}

fn coll<'a>(s: &'a StoreStats, name: &str) -> &'a CollectionStats {
    s.vms
        .iter()
        .flat_map(|v| &v.collections)
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no collection {name} in {s:#?}"))
}

/// What the shared scenario made, for the assertions.
struct Shared {
    ts: TestStore,
    /// Data pages of each point's disk: ca/p1, ca/p2, cx/x1, cb/q1, cb/q2.
    pages: [u64; 5],
    /// Pages of b's first image that differ from the template.
    b_changed: u64,
}

/// A format-2 store: VM a (collections ca: p1, p2; cx: x1, made between them) and VM b
/// (collection cb: q1, q2). b's disk starts as a's template with 5% of its pages changed; each
/// later point changes a few percent more, differently on each VM.
fn shared_scenario() -> Shared {
    let ts = paged_store(64 * KIB as u32);
    let mut rng = rng(seed());
    let (a, b) = (ts.path("a.img"), ts.path("b.img"));
    let mut a_c = template(&mut rng, &a);
    let mut b_c = a_c.clone();
    write_sparse(&b, &b_c);
    let b_pages = change_blocks(&b, &mut b_c, PAGE, 0.05, &mut rng);
    let b_changed = b_pages.len() as u64;
    ts.vm("a", &[("os", &a)], "ca");
    ts.engine.create_collection("cx", "a", None).expect("cx");
    ts.vm("b", &[("os", &b)], "cb");
    let mut pages = [0; 5];
    pages[0] = data_pages(&a_c);
    ts.create("ca", "p1");
    // x1 changes a few template pages b changed too: then only p1 references them, and
    // deleting ca repacks the template frames that hold them.
    let x1_pages = change_blocks(&a, &mut a_c, PAGE, 0.02, &mut rng);
    for &page in b_pages.iter().step_by(b_pages.len() / 4) {
        let at = (page * PAGE) as usize;
        rng.fill_bytes(&mut a_c[at..at + PAGE as usize]);
    }
    write_sparse(&a, &a_c);
    pages[2] = data_pages(&a_c);
    ts.create("cx", "x1");
    // p2's new pages are ca's alone: their pack goes whole when ca is deleted. One of them
    // overwrites a page x1 changed, so x1 (cx) keeps a page of its own whatever the seed.
    change_blocks(&a, &mut a_c, PAGE, 0.05, &mut rng);
    let at = (x1_pages[0] * PAGE) as usize;
    rng.fill_bytes(&mut a_c[at..at + PAGE as usize]);
    write_sparse(&a, &a_c);
    pages[1] = data_pages(&a_c);
    ts.create("ca", "p2");
    pages[3] = data_pages(&b_c);
    ts.create("cb", "q1");
    change_blocks(&b, &mut b_c, PAGE, 0.03, &mut rng);
    pages[4] = data_pages(&b_c);
    ts.create("cb", "q2");
    Shared {
        ts,
        pages,
        b_changed,
    }
}

#[test]
fn stats_count_logical_shared_and_exclusive_bytes_and_deleting_frees_the_exclusive() {
    let Shared { ts, pages, .. } = shared_scenario();
    let s = ts.engine.stats().expect("stats");
    let store = ts.store_path();

    // Logical: data pages × 4 KiB of every point's disk, summed up the tree.
    assert_eq!(s.format, 2);
    assert_eq!(
        coll(&s, "ca").usage.logical_bytes,
        (pages[0] + pages[1]) * PAGE
    );
    assert_eq!(coll(&s, "cx").usage.logical_bytes, pages[2] * PAGE);
    assert_eq!(
        coll(&s, "cb").usage.logical_bytes,
        (pages[3] + pages[4]) * PAGE
    );
    assert_eq!(
        vm(&s, "a").usage.logical_bytes,
        (pages[0] + pages[1] + pages[2]) * PAGE
    );
    assert_eq!(s.logical_bytes, pages.iter().sum::<u64>() * PAGE);
    assert_eq!((coll(&s, "ca").points, vm(&s, "a").points), (2, 3));

    // Shared: what both VMs reference, the same seen from either; with two VMs, every
    // referenced byte of a VM is shared or its own (frames are raw: pro rata is exact).
    let (a, b) = (vm(&s, "a").usage, vm(&s, "b").usage);
    assert!(a.shared_bytes > 0, "{s:#?}");
    assert_eq!(a.shared_bytes, b.shared_bytes);
    assert_eq!(a.referenced_bytes, a.shared_bytes + a.exclusive_bytes);
    assert_eq!(b.referenced_bytes, b.shared_bytes + b.exclusive_bytes);
    // b's template pages (95% of the template's data pages at least) are all a's too.
    assert!(a.shared_bytes >= pages[0] * PAGE * 9 / 10, "{s:#?}");
    // b has one collection: the same figures.
    assert_eq!(coll(&s, "cb").usage, b);
    // A collection's exclusive bytes are its VM's too, and nothing else's.
    let (ca, cx) = (coll(&s, "ca").usage, coll(&s, "cx").usage);
    assert!(ca.exclusive_bytes > 0 && cx.exclusive_bytes > 0, "{s:#?}");
    assert!(a.exclusive_bytes >= ca.exclusive_bytes + cx.exclusive_bytes);
    assert!(ca.shared_bytes > 0 && ca.shared_bytes <= a.shared_bytes);

    // Store totals are the objects' sizes.
    let (data, packs_before) = bytes_under(&store.join("data"), ".pack");
    assert_eq!(s.pack_bytes, data);
    assert_eq!(s.index_bytes, bytes_under(&store.join("index"), ".idx").0);
    assert_eq!(s.map_bytes, bytes_under(&store.join("vms"), ".map").0);
    assert_eq!(s.stored_bytes, s.pack_bytes + s.index_bytes + s.map_bytes);
    assert_eq!(s.unreferenced_bytes, 0);
    let ratio = s.logical_bytes as f64 / s.stored_bytes as f64;
    assert!(
        (s.dedup_ratio - ratio).abs() < 1e-9 && ratio > 2.0,
        "{s:#?}"
    );
    // Every stored frame is referenced by someone: the VMs' exclusives and the shared part.
    assert_eq!(
        s.frame_bytes,
        a.exclusive_bytes + b.exclusive_bytes + a.shared_bytes
    );

    // Deleting every point of ca frees exactly ca's exclusive bytes of frames (the sum of the
    // frames' stored lengths over the pack tables, before and after). In pack file bytes it
    // frees that plus each freed page's 16-byte fingerprint, plus the header, tables and
    // trailer of the packs removed whole.
    for p in ["p1", "p2"] {
        ts.engine.delete_point("ca", p).expect("delete");
    }
    let after = ts.engine.stats().expect("stats after deleting ca");
    assert_eq!(s.frame_bytes - after.frame_bytes, ca.exclusive_bytes);
    assert_eq!(after.unreferenced_bytes, 0);
    let (data_after, packs_after) = bytes_under(&store.join("data"), ".pack");
    let fingerprints = ca.exclusive_bytes / PAGE * 16;
    let overhead = (data - data_after)
        .checked_sub(ca.exclusive_bytes + fingerprints)
        .unwrap_or_else(|| {
            panic!(
                "freed {} pack bytes, less than the exclusive {ca:?}",
                data - data_after
            )
        });
    assert!(packs_after < packs_before, "p2's pack was not removed");
    assert!(
        overhead <= (packs_before - packs_after) * 16 * KIB + 4 * KIB,
        "{overhead} bytes freed beyond the frames and fingerprints, {} packs removed",
        packs_before - packs_after
    );
    assert_eq!(coll(&after, "ca").usage, Default::default());
    assert_eq!(
        vm(&after, "a").usage.logical_bytes,
        pages[2] * PAGE,
        "{after:#?}"
    );
    assert_eq!(
        vm(&after, "a").usage.shared_bytes,
        vm(&after, "b").usage.shared_bytes
    );

    // Deleting b too leaves a's remaining point the sole owner of everything.
    for p in ["q1", "q2"] {
        ts.engine.delete_point("cb", p).expect("delete");
    }
    let last = ts.engine.stats().expect("stats");
    assert_eq!(vm(&last, "a").usage.shared_bytes, 0);
    assert_eq!(vm(&last, "a").usage.exclusive_bytes, last.frame_bytes);
    assert_eq!(coll(&last, "cx").usage.exclusive_bytes, last.frame_bytes);
}

#[test]
fn a_point_records_its_new_pages_and_the_pages_found_stored_already() {
    let Shared {
        ts,
        pages,
        b_changed,
    } = shared_scenario();
    let cat = ts.engine.catalog().expect("catalog");
    let disk = |c: &str, p: &str| cat.point(c, p).expect("point").1.disks[0].clone();
    // a's first point stores every data page (random: none twice).
    let p1 = disk("ca", "p1");
    assert_eq!((p1.new_blocks, p1.found_pages), (pages[0], 0));
    // b's first point finds the template's pages in a's packs and stores its own changes.
    let q1 = disk("cb", "q1");
    assert_eq!(q1.new_blocks, b_changed);
    assert_eq!(q1.found_pages, pages[3] - b_changed);
    // An incremental point's unchanged pages are not "found": they are the previous point's.
    assert_eq!(disk("ca", "p2").found_pages, 0);

    let (out, _) = expect_exit(ts.cli().args(["point", "show", "cb/q1"]), 0);
    assert!(
        out.contains(&format!(
            "{b_changed} new pages, {}",
            bytesize::ByteSize::b(q1.stored_bytes)
        )) && out.contains(&format!("{} pages found stored already", q1.found_pages)),
        "{out}"
    );
    let json = cli_json(&ts, &["point", "show", "cb/q1", "--json"]);
    let d = &json["rpfs"]["disks"][0];
    assert_eq!(d["newBlocks"], b_changed);
    assert_eq!(d["foundPages"], q1.found_pages);
}

/// Every figure of a collection or VM object of `rpfs stats --json`.
fn assert_usage_shape(v: &Value, what: &str) {
    for k in [
        "name",
        "id",
        "points",
        "logicalBytes",
        "referencedBytes",
        "sharedBytes",
        "exclusiveBytes",
    ] {
        assert!(v.get(k).is_some(), "{what} lacks {k}: {v}");
    }
}

#[test]
fn stats_json_and_table_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let rpfs = || {
        let mut c = assert_cmd::Command::cargo_bin("rpfs").expect("rpfs binary");
        c.env("RPFS_STORE", &store).env_remove("RPFS_LOG");
        c
    };
    expect_exit(rpfs().args(["init", "--format", "2"]), 0);
    let mut rng = rng(seed());
    let img = dir.path().join("t.img");
    let content = random_image(&img, MIB as usize, &mut rng);
    for v in ["v1", "v2"] {
        let path = dir.path().join(format!("{v}.img"));
        fs::copy(&img, &path).expect("copy");
        expect_exit(
            rpfs().args(["vm", "add", v, "--disk", &format!("os={}", path.display())]),
            0,
        );
        expect_exit(
            rpfs().args(["collection", "create", &format!("c-{v}"), "--vm", v]),
            0,
        );
        expect_exit(rpfs().args(["point", "create", &format!("c-{v}"), "p1"]), 0);
    }
    let (out, _) = expect_exit(rpfs().args(["stats", "--json"]), 0);
    let s: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    for k in [
        "format",
        "compression",
        "logicalBytes",
        "storedBytes",
        "packBytes",
        "indexBytes",
        "mapBytes",
        "frameBytes",
        "unreferencedBytes",
        "dedupRatio",
        "vms",
        "warnings",
    ] {
        assert!(s.get(k).is_some(), "stats lacks {k}: {s}");
    }
    assert_eq!(s["format"], 2);
    assert_eq!(s["compression"], "lz4");
    assert_eq!(s["logicalBytes"], 2 * data_pages(&content) * PAGE);
    let vms = s["vms"].as_array().expect("vms");
    assert_eq!(vms.len(), 2);
    for v in vms {
        assert_usage_shape(v, "a VM");
        let colls = v["collections"].as_array().expect("collections");
        assert_eq!(colls.len(), 1);
        assert_usage_shape(&colls[0], "a collection");
        // Identical disks: everything is shared, nothing is either VM's alone.
        assert_eq!(v["sharedBytes"], v["referencedBytes"]);
        assert_eq!(v["exclusiveBytes"], 0);
        assert!(v["sharedBytes"].as_u64().expect("u64") >= data_pages(&content) * PAGE);
    }
    assert!(s["dedupRatio"].as_f64().expect("f64") > 1.5, "{s}");

    let (table, _) = expect_exit(rpfs().args(["stats"]), 0);
    for part in [
        "store (format 2, lz4)",
        "dedup ratio",
        "VM / COLLECTION",
        "FREED IF DELETED",
        "v1",
        "  c-v2",
    ] {
        assert!(table.contains(part), "lacks {part:?}: {table}");
    }
}

#[test]
fn stats_of_a_format_1_store_count_packs_per_vm() {
    let ts = TestStore::new_format(4096, 1);
    let mut rng = rng(seed());
    let img = ts.path("os.img");
    let mut content = template(&mut rng, &img);
    ts.vm("vm", &[("os", &img)], "c");
    ts.create("c", "p1");
    let first = data_pages(&content);
    change_blocks(&img, &mut content, PAGE, 0.05, &mut rng);
    ts.create("c", "p2");
    let s = ts.engine.stats().expect("stats");
    assert_eq!(s.format, 1);
    assert_eq!(s.logical_bytes, (first + data_pages(&content)) * PAGE);
    let v = vm(&s, "vm").usage;
    assert_eq!(v.shared_bytes, 0);
    assert_eq!(v.referenced_bytes, s.pack_bytes);
    assert_eq!(v.exclusive_bytes, s.pack_bytes);
    assert_eq!(coll(&s, "c").usage, v);
    let (packs, _) = bytes_under(&ts.store_path().join("vms"), ".pack");
    assert_eq!(s.pack_bytes, packs);
    assert_eq!(
        s.map_bytes,
        bytes_under(&ts.store_path().join("vms"), ".map").0
    );
    assert_eq!(s.index_bytes, 0);
    let json = cli_json(&ts, &["stats", "--json"]);
    assert_eq!(json["vms"][0]["sharedBytes"], 0);
}
