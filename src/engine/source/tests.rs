//! Unit tests of source disks: what is opened or refused, holes and unchanged blocks.

use super::*;
use crate::engine::error::ErrorKind;
use std::io::Write;

#[test]
fn a_block_is_unchanged_when_every_unit_it_overlaps_is() {
    let known = [true, true, false, true, true, true, true, true];
    // Units of 16 KiB under blocks of 64 KiB: the first block has a changed unit.
    assert_eq!(
        all_units_unchanged(16 << 10, &known, 0, 2, 64 << 10),
        [false, true]
    );
    // Units of 256 KiB over blocks of 64 KiB: each block follows its unit.
    assert_eq!(
        all_units_unchanged(256 << 10, &known[..3], 4, 8, 64 << 10),
        [true, true, true, true, false, false, false, false]
    );
    // Equal sizes: the units themselves.
    assert_eq!(all_units_unchanged(4096, &known, 0, 8, 4096), known);
}

#[test]
fn sparse_file_holes_are_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("d.img");
    let f = File::create(&path).expect("create");
    f.set_len(64 << 20).expect("size");
    f.write_all_at(&[1u8; 4096], 10 << 20).expect("write");
    drop(f);
    let s = Source::open("d", &path, Expect::Adding, "vm").expect("raw file");
    let mask = s.data_blocks(0, 1024, 64 << 10);
    let data: Vec<usize> = mask
        .iter()
        .enumerate()
        .filter(|(_, m)| **m)
        .map(|(i, _)| i)
        .collect();
    assert!(data.contains(&160), "{data:?}");
    assert!(data.len() <= 2, "{data:?}");
}

#[test]
fn paths_are_opened_as_they_were_when_the_vm_was_added() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("d.img");
    std::fs::write(&file, [1u8; 4096]).expect("write");
    let link = dir.path().join("link.img");
    std::os::unix::fs::symlink(&file, &link).expect("symlink");
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let plain = AddedAs {
        symlink: false,
        linked_dirs: false,
        kind: PathKind::File,
    };
    let open = |path: &Path, expect| open_path(path, expect, "vm1", "wanted");

    let added = open(&link, Expect::Adding).expect("a link at vm add");
    assert!(added.added_as.symlink);
    assert!(!open(&file, Expect::Adding).expect("file").added_as.symlink);
    assert!(open(&link, Expect::AsAdded(added.added_as)).is_ok());

    let err = open(&link, Expect::AsAdded(plain)).expect_err("a new link");
    assert_eq!(err.problem, SourceProblem::Changed);
    assert!(
        err.reason
            .starts_with("is now a symbolic link; it was not when VM 'vm1'")
    );
    // A FIFO swapped in is refused, not opened (which would block).
    let err = open(&fifo, Expect::AsAdded(plain)).expect_err("a FIFO");
    assert_eq!(err.reason, "is a FIFO; wanted");
    let device = AddedAs {
        symlink: false,
        linked_dirs: false,
        kind: PathKind::BlockDevice,
    };
    let err = open(&file, Expect::AsAdded(device)).expect_err("another kind");
    assert_eq!(err.problem, SourceProblem::Changed);
    assert_eq!(
        err.reason,
        "is now a regular file; it was a block device when VM 'vm1' was added"
    );

    // Records without `added_as`: a link is followed only where only root writes.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let err = open(&link, Expect::Unrecorded).expect_err("a link others could swap");
    assert!(err.reason.contains("a directory other users can write"));
    // ... and `vm add` refuses to record such a link, which every capture would follow.
    let err = open(&link, Expect::Adding).expect_err("a link others could retarget");
    assert_eq!(err.problem, SourceProblem::Unsupported);
    assert!(
        err.reason
            .contains("a directory other users can write: they could point")
    );
    assert!(open(&file, Expect::Adding).is_ok());
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    assert!(open(&link, Expect::Unrecorded).is_ok());
    assert!(open(&file, Expect::Unrecorded).is_ok());
}

#[test]
fn foreign_formats_and_special_files_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty.img");
    File::create(&empty).expect("create");
    let qcow = dir.path().join("x.qcow2");
    File::create(&qcow)
        .and_then(|mut f| f.write_all(b"QFI\xfb\0\0\0\x03rest"))
        .expect("write");
    for (path, want) in [
        (dir.path().to_path_buf(), "is a directory"),
        (PathBuf::from("/dev/null"), "is a character device"),
        (empty, "is empty"),
        (qcow, "is a qcow2 image"),
    ] {
        let err = inspect("os", &path, Expect::Adding, "vm").expect_err(want);
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        assert!(err.to_string().contains(want), "{err}");
        assert!(err.to_string().starts_with("disk 'os'"), "{err}");
    }
    let err =
        inspect("os", &dir.path().join("missing"), Expect::Adding, "vm").expect_err("missing");
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.to_string().contains("does not exist"));
}
