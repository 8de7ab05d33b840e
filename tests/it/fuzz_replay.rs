//! The fuzz targets on stable: every kept corpus input and every crash found (`fuzz/corpus`,
//! `fuzz/artifacts`) is replayed, and proptest feeds each target random and mutated inputs.
//! A target that panics fails the test with the input that did it.

use std::path::Path;

use proptest::prelude::*;
use rpfs::testing::fuzzing;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Kept inputs of `target`: its corpus and the crashes found, each with its path.
fn kept(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in ["corpus", "artifacts"] {
        let dir = Path::new(ROOT).join("fuzz").join(dir).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let path = e.expect("entry").path();
            let data = std::fs::read(&path).expect("read input");
            out.push((path.display().to_string(), data));
        }
    }
    out.sort();
    out
}

fn replay(target: &str, run: impl Fn(&[u8])) {
    let inputs = kept(target);
    assert!(
        inputs.len() >= 3,
        "fuzz/corpus/{target} holds {} inputs; the seeds are missing",
        inputs.len()
    );
    for (path, data) in inputs {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&data))).is_err() {
            panic!("{target} panicked on {path}");
        }
    }
}

#[test]
fn kept_inputs_replay_without_panics() {
    replay("records", fuzzing::records);
    replay("block_map", fuzzing::block_map);
    replay("pack_index", fuzzing::pack_index);
    replay("frame_pack", fuzzing::frame_pack);
    replay("page_map", fuzzing::page_map);
    replay("index_segment", fuzzing::index_segment);
    replay("name", fuzzing::name);
    let dir = tempfile::tempdir().expect("tempdir");
    let vfs = fuzzing::vfs_fixture(dir.path());
    replay("vfs_ops", |data| fuzzing::vfs_ops(&vfs, data));
    replay("guest_fs", fuzzing::guest_fs);
}

/// A kept input of `target` with a few bytes overwritten, or random bytes.
fn mutated(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    mutated_within(target, usize::MAX)
}

/// Like [`mutated`], with the overwritten bytes among the first `span` (where the metadata of
/// a filesystem image is).
fn mutated_within(target: &'static str, span: usize) -> impl Strategy<Value = Vec<u8>> {
    let seeds: Vec<Vec<u8>> = kept(target).into_iter().map(|(_, d)| d).collect();
    let n = seeds.len().max(1);
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        (
            0..n,
            proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)
        )
            .prop_map(move |(i, edits)| {
                let mut d = seeds.get(i).cloned().unwrap_or_default();
                for (at, b) in edits {
                    if !d.is_empty() {
                        let at = at % d.len().min(span);
                        d[at] = b;
                    }
                }
                d
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn records_never_panic(data in mutated("records")) {
        fuzzing::records(&data);
    }

    #[test]
    fn block_maps_never_panic(data in mutated("block_map")) {
        fuzzing::block_map(&data);
    }

    #[test]
    fn pack_tables_never_panic(data in mutated("pack_index")) {
        fuzzing::pack_index(&data);
    }

    #[test]
    fn frame_packs_never_panic(data in mutated("frame_pack")) {
        fuzzing::frame_pack(&data);
    }

    #[test]
    fn page_maps_never_panic(data in mutated("page_map")) {
        fuzzing::page_map(&data);
    }

    #[test]
    fn index_segments_never_panic(data in mutated("index_segment")) {
        fuzzing::index_segment(&data);
    }

    #[test]
    fn names_never_panic(data in mutated("name")) {
        fuzzing::name(&data);
    }

    #[test]
    fn guest_filesystems_never_panic(data in mutated_within("guest_fs", 16384)) {
        fuzzing::guest_fs(&data);
    }
}

#[test]
fn vfs_operation_sequences_never_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vfs = fuzzing::vfs_fixture(dir.path());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    });
    runner
        .run(&mutated("vfs_ops"), |data| {
            fuzzing::vfs_ops(&vfs, &data);
            Ok(())
        })
        .expect("vfs_ops");
}
