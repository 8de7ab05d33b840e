#![no_main]

use std::sync::OnceLock;

/// One fixture store for the whole run; its directory lives as long as the process.
static VFS: OnceLock<(tempfile::TempDir, rpfs::vfs::Vfs)> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (_, vfs) = VFS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let vfs = rpfs::testing::fuzzing::vfs_fixture(dir.path());
        (dir, vfs)
    });
    rpfs::testing::fuzzing::vfs_ops(vfs, data);
});
