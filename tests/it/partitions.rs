//! Partition images through a real mount: `partitions/<disk>/p<N>.img` for GPT disks and MBR
//! disks with logical partitions (tables written by `sfdisk`), each byte-identical to its slice
//! of the disk image and as sparse; a disk without a table shows no partitions.

use std::fs;
use std::path::Path;

use crate::common::images::{KIB, MIB, random_image, sfdisk_partitions, write_sparse};
use crate::common::mount::{MountGuard, fuse_or_skip};
use crate::common::store::TestStore;
use crate::common::sys::{require_tool, rng, seed, sh};

/// Writes a table with `sfdisk` to `path` (a `size`-byte image) and random data into the first
/// 64 KiB of each partition; returns the image and the (number, start, length) sfdisk reports.
fn partitioned(path: &Path, size: u64, script: &str) -> (Vec<u8>, Vec<(u32, u64, u64)>) {
    require_tool("sfdisk");
    let f = fs::File::create(path).expect("image");
    f.set_len(size).expect("size");
    drop(f);
    sh(&format!(
        "printf '{script}' | sfdisk -q '{}' >/dev/null",
        path.display()
    ));
    let parts: Vec<(u32, u64, u64)> = sfdisk_partitions(path)
        .into_iter()
        .filter(|(_, _, _, kind)| !matches!(kind.as_str(), "5" | "f" | "85"))
        .map(|(n, start, len, _)| (n, start, len))
        .collect();
    let mut content = fs::read(path).expect("read");
    let mut rng = rng(seed());
    for &(_, start, _) in &parts {
        rand::RngCore::fill_bytes(
            &mut rng,
            &mut content[start as usize..start as usize + 65536],
        );
    }
    write_sparse(path, &content);
    (content, parts)
}

#[test]
fn partitions_of_gpt_and_mbr_disks_are_byte_identical_windows() {
    if !fuse_or_skip("partitions_of_gpt_and_mbr_disks_are_byte_identical_windows") {
        return;
    }
    let ts = TestStore::new(64 * KIB as u32);
    let (gpt, mbr, bare) = (ts.path("gpt.img"), ts.path("mbr.img"), ts.path("bare.img"));
    let (gpt_c, gpt_p) = partitioned(&gpt, 64 * MIB, "label: gpt\\n,8MiB\\n,16MiB\\n,\\n");
    // Two primaries, then an extended partition holding two logical ones.
    let (mbr_c, mbr_p) = partitioned(
        &mbr,
        64 * MIB,
        "label: dos\\n,8MiB\\n,8MiB\\n,,E\\n,12MiB\\n,\\n",
    );
    let bare_c = random_image(&bare, 256 * KIB as usize, &mut rng(seed()));
    assert_eq!(gpt_p.len(), 3);
    assert_eq!(
        mbr_p.iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![1, 2, 5, 6],
        "{mbr_p:?}"
    );
    ts.vm("vm", &[("gpt", &gpt), ("mbr", &mbr), ("bare", &bare)], "c");
    ts.create("c", "p");
    let m = MountGuard::new(&ts.store_path(), &[]);
    let mut names: Vec<String> = fs::read_dir(m.path("c/p"))
        .expect("point")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.contains(&"partitions".to_string()), "{names:?}");
    for (disk, content, parts) in [("gpt", &gpt_c, &gpt_p), ("mbr", &mbr_c, &mbr_p)] {
        let dir = m.path(&format!("c/p/partitions/{disk}"));
        let mut listed: Vec<String> = fs::read_dir(&dir)
            .expect("partitions dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        listed.sort();
        let mut want: Vec<String> = parts.iter().map(|p| format!("p{}.img", p.0)).collect();
        want.sort();
        assert_eq!(listed, want, "{disk}");
        for &(n, start, len) in parts {
            let path = dir.join(format!("p{n}.img"));
            let meta = fs::metadata(&path).expect("stat");
            assert_eq!(meta.len(), len, "{disk} p{n} size");
            let got = fs::read(&path).expect("read partition");
            assert!(
                got == content[start as usize..(start + len) as usize],
                "{disk} p{n} differs from its slice of the disk"
            );
            // Sparse like the disk: only the 64 KiB written holds data.
            assert!(
                std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < len / 2,
                "{disk} p{n} reports {} blocks",
                std::os::unix::fs::MetadataExt::blocks(&meta)
            );
            // A sparse-aware copy skips the holes and is identical.
            let copy = ts.path(&format!("{disk}-p{n}.img"));
            sh(&format!(
                "cp --sparse=always '{}' '{}' && cmp '{}' '{}'",
                path.display(),
                copy.display(),
                path.display(),
                copy.display()
            ));
        }
    }
    // No table, no partitions.
    let bare_dir = m.path("c/p/partitions/bare");
    assert_eq!(fs::read_dir(&bare_dir).expect("bare").count(), 0);
    assert!(fs::read(m.path("c/p/disks/bare.img")).expect("bare disk") == bare_c);
    assert!(!m.path("c/p/partitions/gpt/p9.img").exists());
}
