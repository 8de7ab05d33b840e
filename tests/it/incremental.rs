//! Incremental size: a point stores only what changed since the previous point of the disk,
//! holes and zeros cost nothing, and the chain follows the VM across its collections.

use rand::RngCore;

use crate::common::images::{KIB, MIB, change_blocks, write_sparse};
use crate::common::store::{TestStore, read_image};
use crate::common::sys::{rng, seed};

fn disk_stored(p: &rpfs::store::records::PointRecord, disk: &str) -> u64 {
    p.disks
        .iter()
        .find(|d| d.name == disk)
        .expect("disk")
        .stored_bytes
}

#[test]
fn two_percent_changed_stores_at_most_three_percent() {
    // Format 2 (the default) takes frames of at most 64 KiB; format 1, which older stores keep,
    // takes larger blocks.
    let default = rpfs::store::format::DEFAULT;
    for (block_size, version) in [
        (4 * KIB, default),
        (64 * KIB, default),
        (64 * KIB, 1),
        (1024 * KIB, 1),
    ] {
        let mut rng = rng(seed());
        let ts = TestStore::new_format(block_size as u32, version);
        let (a, b) = (ts.path("a.img"), ts.path("b.img"));
        let size = 64 * MIB;
        let mut content = vec![0u8; size as usize];
        rng.fill_bytes(&mut content);
        write_sparse(&a, &content);
        write_sparse(&b, &content);
        ts.vm("vm", &[("changing", &a), ("steady", &b)], "c1");
        ts.create("c1", "full");
        let before = ts.size();

        let changed = change_blocks(&a, &mut content, block_size, 0.02, &mut rng).len() as u64;
        let p = ts.create("c1", "incr");
        let grown = ts.size() - before;
        let changing = disk_stored(&p, "changing");
        let steady = disk_stored(&p, "steady");
        eprintln!(
            "format {version}, block size {block_size}: changing disk stored {changing}, steady \
             {steady}, store grew {grown}"
        );
        assert!(
            changing <= size * 3 / 100,
            "2% change stored {changing} bytes"
        );
        // Random data does not compress: every changed block is there, raw.
        assert!(
            changing >= changed * block_size,
            "{changed} changed blocks stored only {changing} bytes"
        );
        // The unchanged disk's point is a block map and nothing else.
        assert!(steady <= 4 * KIB, "unchanged disk stored {steady} bytes");
        // Everything the point added to the store, records included.
        assert!(
            grown <= size * 3 / 100 + 16 * KIB,
            "store grew {grown} bytes"
        );
        assert!(read_image(&ts.engine, "c1", "incr", "changing") == content);

        let before = ts.size();
        let p = ts.create("c1", "same");
        let grown = ts.size() - before;
        assert!(disk_stored(&p, "changing") <= 4 * KIB);
        assert!(
            grown <= 16 * KIB,
            "a point of unchanged disks grew the store by {grown} bytes"
        );
    }
}

#[test]
fn holes_and_zeros_are_not_stored() {
    let ts = TestStore::new(64 * KIB as u32);
    let disk = ts.path("sparse.img");
    // 1 GiB sparse file with 1 MiB of data and 1 MiB of explicit zeros.
    let f = std::fs::File::create(&disk).expect("create");
    f.set_len(1 << 30).expect("size");
    let mut data = vec![0u8; MIB as usize];
    rng(seed()).fill_bytes(&mut data);
    std::os::unix::fs::FileExt::write_all_at(&f, &data, 512 * MIB).expect("data");
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0u8; MIB as usize], 100 * MIB)
        .expect("zeros");
    drop(f);
    ts.vm("vm", &[("d", &disk)], "c1");
    let out = ts
        .engine
        .create_point(
            &rpfs::engine::create::CreateRequest {
                collection: "c1".into(),
                name: "p".into(),
                exclude: vec![],
                consistency: None,
            },
            &rpfs::engine::progress::Silent,
        )
        .expect("create");
    // Only the extents SEEK_DATA reports were read; only the random MiB was stored.
    assert!(
        out.bytes_read <= 3 * MIB,
        "read {} bytes of a mostly empty disk",
        out.bytes_read
    );
    assert!(
        out.bytes_stored <= MIB + 64 * KIB,
        "stored {}",
        out.bytes_stored
    );
    // Format 2 (the default) counts the 4 KiB pages a point stored: the random MiB is 256 of
    // them (format 1 counts blocks: 16 of 64 KiB).
    assert_eq!(out.point.disks[0].new_blocks, MIB / (4 * KIB));
    let engine = ts.reopen();
    let image = engine.open_disk("c1", &out.point, "d").expect("open");
    assert_eq!(image.size(), 1 << 30);
    assert_eq!(image.allocated_bytes(), MIB);
    assert_eq!(image.next_data(0), Some(512 * MIB));
    assert_eq!(image.next_hole(512 * MIB), 513 * MIB);
    let mut buf = vec![1u8; MIB as usize];
    image.read_at(512 * MIB, &mut buf).expect("read");
    assert!(buf == data);
    image.read_at(100 * MIB, &mut buf).expect("read zeros");
    assert!(buf.iter().all(|&b| b == 0));
}

#[test]
fn the_chain_follows_the_vm_across_collections_and_exclusions() {
    let mut rng = rng(seed());
    let ts = TestStore::new(64 * KIB as u32);
    let (a, b) = (ts.path("a.img"), ts.path("b.img"));
    let mut ca = vec![0u8; 8 * MIB as usize];
    let mut cb = vec![0u8; 8 * MIB as usize];
    rng.fill_bytes(&mut ca);
    rng.fill_bytes(&mut cb);
    write_sparse(&a, &ca);
    write_sparse(&b, &cb);
    ts.vm("vm", &[("a", &a), ("b", &b)], "daily");
    ts.engine
        .create_collection("weekly", "vm", None)
        .expect("weekly");
    ts.create("daily", "d1");
    // A point in the other collection is incremental against d1.
    change_blocks(&a, &mut ca, 64 * KIB, 0.05, &mut rng);
    let w1 = ts.create("weekly", "w1");
    let a_stored = disk_stored(&w1, "a");
    assert!(
        a_stored <= 8 * MIB / 10,
        "weekly point not incremental: {a_stored}"
    );
    // Excluding b, then including it again: the new point of b is incremental against w1.
    let out = ts
        .engine
        .create_point(
            &rpfs::engine::create::CreateRequest {
                collection: "daily".into(),
                name: "d2".into(),
                exclude: vec!["b".into()],
                consistency: None,
            },
            &rpfs::engine::progress::Silent,
        )
        .expect("create without b");
    assert_eq!(out.point.disks.len(), 1);
    assert_eq!(out.point.excluded[0].name, "b");
    change_blocks(&b, &mut cb, 64 * KIB, 0.05, &mut rng);
    let d3 = ts.create("daily", "d3");
    assert!(disk_stored(&d3, "b") <= 8 * MIB / 10);
    let engine = ts.reopen();
    assert!(read_image(&engine, "daily", "d3", "b") == cb);
    assert!(read_image(&engine, "daily", "d3", "a") == ca);
}

#[test]
fn a_disk_that_grows_or_shrinks_between_points_reads_back_in_each() {
    // Each later point is compared with the previous point of the disk, block by block: past
    // the previous point's end there is nothing to compare (format 2 once panicked there).
    let mut rng = rng(seed());
    let ts = TestStore::new(64 * KIB as u32);
    let disk = ts.path("d.img");
    let mut points = Vec::new();
    for (i, bytes) in [MIB + 100, 3 * MIB + 4097, 100 * KIB + 1, 2 * MIB]
        .into_iter()
        .enumerate()
    {
        let mut content = vec![0u8; bytes as usize];
        rng.fill_bytes(&mut content);
        write_sparse(&disk, &content);
        if i == 0 {
            ts.vm("vm", &[("d", &disk)], "c1");
        }
        let name = format!("p{i}");
        ts.create("c1", &name);
        points.push((name, content));
    }
    let engine = ts.reopen();
    for (name, content) in &points {
        assert!(
            read_image(&engine, "c1", name, "d") == *content,
            "{name} reads back different bytes"
        );
    }
    let report = engine
        .check(true, &rpfs::engine::progress::Silent)
        .expect("check");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
