//! Property test of format 2's sharing: three VMs of one or two disks each, made from one
//! template and then written from a small alphabet of 4 KiB pages (zeros among them) and by
//! copying page ranges between any disks, at the same offset or another, so identical pages
//! across points, disks and VMs are the rule. Random sequences of writes, point creations
//! (sometimes excluding a disk), deletions of any point, deletions of whole collections and
//! reopens are checked after every step against a model that keeps every disk of every point:
//! every remaining point reads back byte for byte, `check` finds nothing (with `--read-data`
//! every fifth step), and the packs hold exactly the pages the committed maps reference (a
//! deletion frees precisely what nothing else uses). Deleting everything at the end leaves no
//! pack and no index segment.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use proptest::prelude::*;
use rpfs::engine::create::CreateRequest;
use rpfs::engine::progress::Silent;
use rpfs::engine::{Engine, ErrorKind, OpenOptions};
use rpfs::store::LocalStorage;

use crate::common::images::write_sparse;
use crate::common::store::{TestStore, page_account, paged_objects, read_image, vm_spec};

const PAGE: usize = 4096;
const VMS: usize = 3;
const DISKS: [&str; 2] = ["os", "data"];
/// Pages of the template every VM's OS disk starts from (1 MiB).
const TEMPLATE_PAGES: usize = 256;

/// Page `pattern` of the alphabet: 0 is zeros, 1 to 3 compress, the rest do not.
fn page(pattern: u8) -> Vec<u8> {
    let mut x = u64::from(pattern).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..PAGE)
        .map(|i| match pattern {
            0 => 0,
            1..=3 => b"restore points share pages\n"[i % 27].wrapping_add(pattern),
            _ => {
                // xorshift64
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }
        })
        .collect()
}

/// A page pattern: mostly the small alphabet (so pages recur everywhere), sometimes one of
/// many rarer ones.
fn pattern() -> impl Strategy<Value = u8> {
    prop_oneof![4 => 0..8u8, 1 => 8..=255u8]
}

#[derive(Debug, Clone)]
enum Op {
    /// Pages `page..page + count` of a disk become patterns `pattern`, `pattern + 1`, ...
    /// (zeros when `pattern` is 0).
    Write {
        vm: usize,
        disk: usize,
        page: usize,
        count: usize,
        pattern: u8,
    },
    /// Pages copied from one disk to another (or the same one), at the same offset when `to`
    /// is `None`.
    Copy {
        from: (usize, usize),
        to_disk: (usize, usize),
        page: usize,
        to: Option<usize>,
        count: usize,
    },
    Create {
        vm: usize,
        coll: usize,
        exclude: Option<usize>,
    },
    /// Deletes the `nth % points` point of the store.
    DeletePoint {
        nth: usize,
    },
    /// Deletes a collection with all its points (and makes it again, empty).
    DeleteCollection {
        vm: usize,
        coll: usize,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let disk = || (0..VMS, 0..2usize);
    prop_oneof![
        4 => (0..VMS, 0..2usize, 0..TEMPLATE_PAGES, 1..24usize, pattern()).prop_map(
            |(vm, disk, page, count, pattern)| Op::Write { vm, disk, page, count, pattern }
        ),
        3 => (disk(), disk(), 0..TEMPLATE_PAGES, prop::option::weighted(0.5, 0..TEMPLATE_PAGES),
              prop_oneof![3 => 1..32usize, 1 => Just(TEMPLATE_PAGES)])
            .prop_map(|(from, to_disk, page, to, count)| Op::Copy { from, to_disk, page, to, count }),
        5 => (0..VMS, 0..2usize, prop::option::weighted(0.2, 0..2usize))
            .prop_map(|(vm, coll, exclude)| Op::Create { vm, coll, exclude }),
        3 => any::<usize>().prop_map(|nth| Op::DeletePoint { nth }),
        1 => (0..VMS, 0..2usize).prop_map(|(vm, coll)| Op::DeleteCollection { vm, coll }),
        1 => Just(Op::Reopen),
    ]
}

/// Shape of a case: frame size, and per VM the size in pages of each disk (one or two).
#[derive(Debug, Clone)]
struct Shape {
    frame: u32,
    disks: Vec<Vec<usize>>,
}

fn shape() -> impl Strategy<Value = Shape> {
    let vm = prop_oneof![
        Just(vec![TEMPLATE_PAGES]),
        (64..=TEMPLATE_PAGES * 2).prop_map(|n| vec![TEMPLATE_PAGES, n]),
    ];
    (
        prop_oneof![Just(16u32 << 10), Just(64u32 << 10)],
        prop::collection::vec(vm, VMS),
    )
        .prop_map(|(frame, disks)| Shape { frame, disks })
}

fn coll_name(vm: usize, coll: usize) -> String {
    format!("v{vm}{}", ["a", "b"][coll])
}

/// One point of the model: where it is, and the content of each disk of its VM (`None`:
/// excluded).
struct ModelPoint {
    vm: usize,
    coll: usize,
    name: String,
    disks: Vec<Option<Vec<u8>>>,
}

/// The source disks: their files and what they hold.
struct Sources {
    paths: Vec<Vec<PathBuf>>,
    content: Vec<Vec<Vec<u8>>>,
}

impl Sources {
    /// Writes `data` at page `page` of disk `(vm, disk)`, clipped to the disk.
    fn put(&mut self, (vm, disk): (usize, usize), page: usize, data: &[u8]) {
        let content = &mut self.content[vm][disk];
        let start = (page * PAGE).min(content.len());
        let end = (start + data.len()).min(content.len());
        content[start..end].copy_from_slice(&data[..end - start]);
        fs::OpenOptions::new()
            .write(true)
            .open(&self.paths[vm][disk])
            .and_then(|f| f.write_all_at(&content[start..end], start as u64))
            .expect("write source");
    }

    /// Disk `disk` of `vm`, wrapped onto the disks it has.
    fn disk(&self, vm: usize, disk: usize) -> (usize, usize) {
        (vm, disk % self.content[vm].len())
    }
}

/// `check` (with `--read-data` when `read_data`) must report no problem.
/// `check` (and with `read_data`, `check --read-data`) finds nothing wrong.
fn check_clean(engine: &Engine, read_data: bool) -> Result<(), TestCaseError> {
    let report = engine
        .check(read_data, &Silent)
        .map_err(|e| TestCaseError::fail(format!("check: {e}")))?;
    prop_assert!(
        report.problems.is_empty(),
        "check{}: {:?}",
        if read_data { " --read-data" } else { "" },
        report.problems
    );
    Ok(())
}

/// Every point of the model reads back from `engine` exactly, and nothing else is there.
fn matches_model(engine: &Engine, points: &[ModelPoint]) -> Result<(), TestCaseError> {
    let cat = engine.catalog().expect("catalog");
    prop_assert_eq!(cat.points.len(), points.len());
    for p in points {
        let coll = coll_name(p.vm, p.coll);
        for (d, want) in p.disks.iter().enumerate() {
            match want {
                Some(want) => {
                    let got = read_image(engine, &coll, &p.name, DISKS[d]);
                    prop_assert!(
                        got == *want,
                        "{}/{} disk {} differs",
                        coll,
                        p.name,
                        DISKS[d]
                    );
                }
                None => {
                    let (_, rec) = cat.point(&coll, &p.name).expect("point");
                    let opened = engine.open_disk(&coll, rec, DISKS[d]);
                    prop_assert_eq!(opened.err().map(|e| e.kind()), Some(ErrorKind::NotFound));
                }
            }
        }
    }
    Ok(())
}

/// Opens the store as a new process would, without a block cache: every read resolves its
/// pages through the maps, frame tables and packs as they are now (a cached block would hide a
/// stale table).
fn reopen(ts: &TestStore) -> Engine {
    let options = OpenOptions {
        cache_bytes: 0,
        ..OpenOptions::default()
    };
    Engine::open(
        std::sync::Arc::new(LocalStorage::new(ts.store_path())),
        options,
    )
    .expect("open store")
}

fn run(shape: Shape, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let ts = TestStore::paged(shape.frame);
    let store = ts.store_path();
    let template: Vec<u8> = (0..TEMPLATE_PAGES)
        .flat_map(|i| page([0, 1, 4, 5, 6, 7, 2, 0, 9, 10][i % 10]))
        .collect();
    let mut src = Sources {
        paths: Vec::new(),
        content: Vec::new(),
    };
    for (vm, sizes) in shape.disks.iter().enumerate() {
        let mut paths = Vec::new();
        let mut content = Vec::new();
        for (d, &pages) in sizes.iter().enumerate() {
            let path = ts.path(&format!("v{vm}-{}.img", DISKS[d]));
            let c = match d {
                0 => template.clone(),
                _ => (0..pages).flat_map(|i| page((i % 3) as u8 * 7)).collect(),
            };
            write_sparse(&path, &c);
            paths.push(path);
            content.push(c);
        }
        let named: Vec<(&str, &std::path::Path)> = paths
            .iter()
            .enumerate()
            .map(|(d, p)| (DISKS[d], p.as_path()))
            .collect();
        ts.engine
            .add_vm(&vm_spec(&format!("v{vm}"), &named))
            .expect("add vm");
        for coll in 0..2 {
            ts.engine
                .create_collection(&coll_name(vm, coll), &format!("v{vm}"), None)
                .expect("collection");
        }
        src.paths.push(paths);
        src.content.push(content);
    }
    let mut engine: Engine = reopen(&ts);
    let mut points: Vec<ModelPoint> = Vec::new();
    let mut counter = 0;
    let fail = |e: rpfs::engine::Error| TestCaseError::fail(e.to_string());

    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Write {
                vm,
                disk,
                page: at,
                count,
                pattern,
            } => {
                let data: Vec<u8> = (0..count)
                    .flat_map(|i| {
                        page(match pattern {
                            0 => 0,
                            p => p.wrapping_add(i as u8).max(1),
                        })
                    })
                    .collect();
                let d = src.disk(vm, disk);
                src.put(d, at, &data);
            }
            Op::Copy {
                from,
                to_disk,
                page: at,
                to,
                count,
            } => {
                let from = src.disk(from.0, from.1);
                let to_disk = src.disk(to_disk.0, to_disk.1);
                let content = &src.content[from.0][from.1];
                let start = (at * PAGE).min(content.len());
                let end = (start + count * PAGE).min(content.len());
                let data = content[start..end].to_vec();
                src.put(to_disk, to.unwrap_or(at), &data);
            }
            Op::Create { vm, coll, exclude } => {
                let n = src.content[vm].len();
                // A VM of one disk excludes nothing.
                let exclude = exclude.filter(|_| n == 2);
                counter += 1;
                let name = format!("p{counter}");
                let req = CreateRequest {
                    collection: coll_name(vm, coll),
                    name: name.clone(),
                    exclude: exclude.map(|d| DISKS[d].to_string()).into_iter().collect(),
                    consistency: None,
                };
                engine.create_point(&req, &Silent).map_err(fail)?;
                points.push(ModelPoint {
                    vm,
                    coll,
                    name,
                    disks: (0..n)
                        .map(|d| (exclude != Some(d)).then(|| src.content[vm][d].clone()))
                        .collect(),
                });
            }
            Op::DeletePoint { nth } => {
                if points.is_empty() {
                    continue;
                }
                let p = points.remove(nth % points.len());
                engine
                    .delete_point(&coll_name(p.vm, p.coll), &p.name)
                    .map_err(fail)?;
            }
            Op::DeleteCollection { vm, coll } => {
                let name = coll_name(vm, coll);
                engine.delete_collection(&name, true).map_err(fail)?;
                points.retain(|p| (p.vm, p.coll) != (vm, coll));
                engine
                    .create_collection(&name, &format!("v{vm}"), None)
                    .map_err(fail)?;
            }
            Op::Reopen => engine = reopen(&ts),
        }
        matches_model(&engine, &points)?;
        check_clean(&engine, step % 5 == 4)?;
        // Creations store only what their maps reference, deletions free exactly what no map
        // references any more: at every step the packs hold the referenced pages, no more.
        let account = page_account(&store, &engine);
        prop_assert!(
            account.exact(),
            "after step {step}: {} pages unreferenced, {} missing, leftovers {:?}; e.g. {:?} {:?}",
            account.unreferenced.len(),
            account.missing.len(),
            account.leftovers,
            account.unreferenced.first(),
            account.missing.first()
        );
    }
    check_clean(&engine, true)?;

    // Deleting everything frees everything.
    for vm in 0..VMS {
        for coll in 0..2 {
            engine
                .delete_collection(&coll_name(vm, coll), true)
                .map_err(fail)?;
        }
    }
    prop_assert!(engine.catalog().expect("catalog").points.is_empty());
    let (packs, segments) = paged_objects(&store);
    prop_assert!(packs.is_empty(), "data/ still holds {:?}", packs);
    prop_assert!(segments.is_empty(), "index/ still holds {:?}", segments);
    check_clean(&reopen(&ts), true)?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn shared_pages_survive_any_deletion_and_are_freed_with_their_last_point(
        shape in shape(),
        ops in prop::collection::vec(op(), 1..24),
    ) {
        run(shape, ops)?;
    }
}
