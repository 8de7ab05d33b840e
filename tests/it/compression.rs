//! A store's compression (`rpfs init --compression lz4|zstd[:LEVEL]`): recorded in the store,
//! applied to every new block or frame of either format, invisible to readers (every point reads
//! back byte for byte and `check --read-data` is clean), and refused by name when unknown.

use std::path::Path;

use rand::Rng;
use rand::rngs::StdRng;

use crate::common::cli::{assert_mentions, cat_disk, expect_exit, rpfs_at};
use crate::common::images::{KIB, MIB, change_blocks, write_sparse};
use crate::common::store::{open, snapshot};
use crate::common::sys::{rng, seed};

/// A sparse image of `size` bytes that compresses like a filesystem of text files: runs of
/// words drawn at random (so no two runs repeat), separated by holes.
fn text_image(path: &Path, size: usize, rng: &mut StdRng) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "restore ",
        "point ",
        "collection ",
        "disk ",
        "frame ",
        "page ",
        "virtual ",
        "machine ",
        "snapshot ",
        "incremental ",
        "chain ",
        "block ",
    ];
    let mut content = vec![0u8; size];
    let mut at = 0;
    while at < size {
        let run = rng
            .random_range(64 * KIB as usize..512 * KIB as usize)
            .min(size - at);
        if rng.random_bool(0.7) {
            let mut filled = at;
            while filled < at + run {
                let w = WORDS[rng.random_range(0..WORDS.len())].as_bytes();
                let n = w.len().min(at + run - filled);
                content[filled..filled + n].copy_from_slice(&w[..n]);
                filled += n;
            }
        }
        at += run;
    }
    write_sparse(path, &content);
    content
}

/// Bytes of a store's files (locks and the reserve left out, as `snapshot` does).
fn stored(store: &Path) -> u64 {
    snapshot(store).values().map(|v| v.len() as u64).sum()
}

#[test]
fn every_compression_reads_back_and_zstd_stores_fewer_bytes() {
    let mut rng = rng(seed());
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("os.img");
    let first = text_image(&disk, 6 * MIB as usize, &mut rng);
    let mut second = first.clone();
    change_blocks(&disk, &mut second, 4096, 0.05, &mut rng);
    // Back to the first content: each store takes p1 from it, then p2 from `second`.
    write_sparse(&disk, &first);
    let cases = [
        (None, "1", "lz4"),
        (Some("zstd:5"), "1", "zstd:5"),
        (None, "2", "lz4"),
        (Some("zstd"), "2", "zstd:3"),
        (Some("zstd:1"), "2", "zstd:1"),
    ];
    let stores: Vec<_> = cases
        .iter()
        .map(|(how, format, recorded)| {
            let store = dir
                .path()
                .join(format!("s-{format}-{}", how.unwrap_or("default")));
            let mut init = rpfs_at(&store);
            init.args(["init", "--format", format]);
            if let Some(how) = how {
                init.args(["--compression", how]);
            }
            let (out, _) = expect_exit(&mut init, 0);
            assert_mentions(&out, &[&format!("{recorded} compression")]);
            expect_exit(
                rpfs_at(&store)
                    .args(["vm", "add", "vm1", "--disk"])
                    .arg(format!("os={}", disk.display())),
                0,
            );
            expect_exit(
                rpfs_at(&store).args(["collection", "create", "c1", "--vm", "vm1"]),
                0,
            );
            expect_exit(rpfs_at(&store).args(["point", "create", "c1", "p1"]), 0);
            store
        })
        .collect();
    write_sparse(&disk, &second);
    for (store, (how, format, recorded)) in stores.iter().zip(&cases) {
        expect_exit(rpfs_at(store).args(["point", "create", "c1", "p2"]), 0);
        let header = open(store).header().clone();
        assert_eq!(
            header.compression.to_string(),
            *recorded,
            "{how:?} format {format}"
        );
        for (point, want) in [("c1/p1", &first), ("c1/p2", &second)] {
            let out = cat_disk(&mut rpfs_at(store), point, "os");
            assert!(out == **want, "{how:?} format {format}: {point} differs");
        }
        expect_exit(rpfs_at(store).args(["check", "--read-data"]), 0);
    }
    // Same data, same format: zstd stores fewer bytes than LZ4 (text compresses far better
    // than LZ4's ~2x with zstd's entropy coding).
    let size: Vec<u64> = stores.iter().map(|s| stored(s)).collect();
    assert!(
        size[1] < size[0] * 9 / 10,
        "format 1: zstd {} vs lz4 {}",
        size[1],
        size[0]
    );
    assert!(
        size[3] < size[2] * 9 / 10,
        "format 2: zstd {} vs lz4 {}",
        size[3],
        size[2]
    );
    assert!(
        size[3] <= size[4],
        "zstd:3 {} vs zstd:1 {}",
        size[3],
        size[4]
    );
}

#[test]
fn unknown_compressions_are_refused_by_name_and_create_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (bad, why) in [
        ("gzip", "is not one of lz4, zstd, zstd:LEVEL"),
        ("LZ4", "is not one of lz4, zstd, zstd:LEVEL"),
        ("lz4:1", "is not one of lz4, zstd, zstd:LEVEL"),
        ("zstd:0", "from 1 to 19"),
        ("zstd:20", "from 1 to 19"),
        ("zstd:fast", "from 1 to 19"),
    ] {
        let store = dir.path().join(format!("s-{bad}"));
        let (_, err) = expect_exit(rpfs_at(&store).args(["init", "--compression", bad]), 2);
        assert_mentions(&err, &["--compression", &format!("\"{bad}\""), why]);
        assert!(
            !store.exists(),
            "--compression {bad}: created {}",
            store.display()
        );
    }
}
