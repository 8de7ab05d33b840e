//! Property test: random sequences of writes to the source disks, point creations (in two
//! collections, sometimes excluding a disk), deletions from anywhere, reads, resizes and
//! reopens, checked after every step against a model that keeps a flat copy of every disk of
//! every point.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use proptest::prelude::*;
use rpfs::engine::create::CreateRequest;
use rpfs::engine::progress::Silent;
use rpfs::engine::{Engine, ErrorKind};

use crate::common::images::write_sparse;
use crate::common::store::{TestStore, read_image};

const BS: u64 = 4096;
const DISKS: [&str; 2] = ["os", "data"];
const COLLS: [&str; 2] = ["c1", "c2"];

#[derive(Debug, Clone)]
enum Op {
    /// Overwrite `len` bytes at `block * BS + shift` with a pattern (0 = zeros).
    Write {
        disk: usize,
        block: u64,
        shift: u64,
        len: u64,
        pattern: u8,
    },
    Resize {
        disk: usize,
        bytes: u64,
    },
    Create {
        coll: usize,
        exclude: Option<usize>,
    },
    /// Delete the `nth % points` point.
    Delete {
        nth: usize,
    },
    Read {
        nth: usize,
        disk: usize,
        offset: u64,
        len: u64,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..24u64, 0..BS, 1..3 * BS, any::<u8>()).prop_map(
            |(disk, block, shift, len, pattern)| Op::Write { disk, block, shift, len, pattern }
        ),
        1 => (0..2usize, 1..30 * BS).prop_map(|(disk, bytes)| Op::Resize { disk, bytes }),
        4 => (0..2usize, prop::option::weighted(0.2, 0..2usize))
            .prop_map(|(coll, exclude)| Op::Create { coll, exclude }),
        2 => any::<usize>().prop_map(|nth| Op::Delete { nth }),
        2 => (any::<usize>(), 0..2usize, 0..32 * BS, 1..6 * BS)
            .prop_map(|(nth, disk, offset, len)| Op::Read { nth, disk, offset, len }),
        1 => Just(Op::Reopen),
    ]
}

/// One point of the model: its name, collection and the content of each included disk.
struct ModelPoint {
    coll: usize,
    name: String,
    disks: [Option<Vec<u8>>; 2],
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let ts = TestStore::new(BS as u32);
    let paths: Vec<PathBuf> = DISKS.iter().map(|d| ts.path(&format!("{d}.img"))).collect();
    let mut disks: Vec<Vec<u8>> = vec![
        vec![7u8; (20 * BS + 100) as usize],
        vec![0u8; (8 * BS) as usize],
    ];
    for (p, c) in paths.iter().zip(&disks) {
        write_sparse(p, c);
    }
    ts.vm("vm", &[("os", &paths[0]), ("data", &paths[1])], "c1");
    ts.engine.create_collection("c2", "vm", None).expect("c2");
    let mut engine: Engine = ts.reopen();
    let mut points: Vec<ModelPoint> = Vec::new();
    let mut counter = 0;

    for op in ops {
        match op {
            Op::Write {
                disk,
                block,
                shift,
                len,
                pattern,
            } => {
                let content = &mut disks[disk];
                let start = ((block * BS + shift) as usize).min(content.len());
                let end = (start + len as usize).min(content.len());
                for (i, b) in content[start..end].iter_mut().enumerate() {
                    *b = if pattern == 0 {
                        0
                    } else {
                        pattern.wrapping_add(i as u8 / 64)
                    };
                }
                let f = fs::OpenOptions::new()
                    .write(true)
                    .open(&paths[disk])
                    .expect("open");
                f.write_all_at(&content[start..end], start as u64)
                    .expect("write");
            }
            Op::Resize { disk, bytes } => {
                disks[disk].resize(bytes as usize, 0);
                fs::OpenOptions::new()
                    .write(true)
                    .open(&paths[disk])
                    .and_then(|f| f.set_len(bytes))
                    .expect("resize");
            }
            Op::Create { coll, exclude } => {
                counter += 1;
                let name = format!("p{counter}");
                let req = CreateRequest {
                    collection: COLLS[coll].into(),
                    name: name.clone(),
                    exclude: exclude.map(|d| DISKS[d].to_string()).into_iter().collect(),
                    consistency: None,
                };
                engine
                    .create_point(&req, &Silent)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let snap = |d: usize| (exclude != Some(d)).then(|| disks[d].clone());
                points.push(ModelPoint {
                    coll,
                    name,
                    disks: [snap(0), snap(1)],
                });
            }
            Op::Delete { nth } => {
                if points.is_empty() {
                    continue;
                }
                let p = points.remove(nth % points.len());
                engine
                    .delete_point(COLLS[p.coll], &p.name)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            Op::Read {
                nth,
                disk,
                offset,
                len,
            } => {
                if points.is_empty() {
                    continue;
                }
                let p = &points[nth % points.len()];
                let cat = engine.catalog().expect("catalog");
                let (_, rec) = cat.point(COLLS[p.coll], &p.name).expect("point");
                let opened = engine.open_disk(COLLS[p.coll], rec, DISKS[disk]);
                match &p.disks[disk] {
                    None => {
                        prop_assert_eq!(opened.expect_err("excluded").kind(), ErrorKind::NotFound)
                    }
                    Some(want) => {
                        let image = opened.expect("open");
                        let mut buf = vec![0xAAu8; len as usize];
                        let n = image.read_at(offset, &mut buf).expect("read");
                        let start = (offset as usize).min(want.len());
                        let end = (start + len as usize).min(want.len());
                        prop_assert_eq!(n, end - start);
                        prop_assert!(buf[..n] == want[start..end], "read of {} differs", p.name);
                    }
                }
            }
            Op::Reopen => engine = ts.reopen(),
        }
        // After every step, every point reads back exactly as the model says.
        let cat = engine.catalog().expect("catalog");
        prop_assert_eq!(cat.points.len(), points.len());
        for p in &points {
            for (d, want) in p.disks.iter().enumerate() {
                if let Some(want) = want {
                    let got = read_image(&engine, COLLS[p.coll], &p.name, DISKS[d]);
                    prop_assert!(
                        got == *want,
                        "{}/{} disk {} differs",
                        COLLS[p.coll],
                        p.name,
                        DISKS[d]
                    );
                }
            }
        }
    }
    let report = engine.check(true, &Silent).expect("check");
    prop_assert!(report.problems.is_empty(), "check: {:?}", report.problems);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_match_the_model(ops in prop::collection::vec(op(), 1..40)) {
        run(ops)?;
    }
}
