//! What a mount shows and reads: the tree as `find` and `ls` see it, disk images compared with
//! `cmp` and `qemu-img compare`, a loop mount of an ext4 image diffed against its source tree and
//! checked with `e2fsck`, sparse copies and `SEEK_DATA`/`SEEK_HOLE`, eight concurrent readers,
//! points made elsewhere appearing, and a damaged block failing only the reads that touch it.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};

use crate::common::cli::expect_exit;
use crate::common::guards::Mounted;
use crate::common::images::{KIB, MIB, random_image, write_sparse};
use crate::common::mount::{MountGuard, fuse_or_skip};
use crate::common::store::TestStore;
use crate::common::sys::{is_root, require_tool, rng, seed, sh, wait_until};

use super::{Fixture, Generation, errno};

#[test]
fn the_tree_is_exactly_what_the_store_holds() {
    if !fuse_or_skip("the_tree_is_exactly_what_the_store_holds") {
        return;
    }
    let f = Fixture::new();
    let m = f.mount(&[]);
    // The guest files under files/os are the `files` module's to check; here they must only exist.
    let found = sh(&format!(
        "cd '{}' && find . -path './*/*/files/os/*' -prune -o -print | sort",
        m.mountpoint.display()
    ));
    let mut want = vec![".".to_string()];
    for coll in ["daily", "weekly"] {
        want.push(format!("./{coll}"));
        want.push(format!("./{coll}/collection.json"));
        want.push(format!("./{coll}/latest"));
    }
    for Generation { coll, point, .. } in &f.points {
        for rel in [
            "",
            "/restore-point.json",
            "/vm-config",
            "/disks",
            "/disks/os.img",
            "/disks/data.img",
            // The fixture's disks hold no partition table.
            "/partitions",
            "/partitions/os",
            "/partitions/data",
            // The OS disk is one ext4 filesystem, the data disk holds none.
            "/files",
            "/files/os",
            "/files/data",
        ] {
            want.push(format!("./{coll}/{point}{rel}"));
        }
    }
    want.sort();
    assert_eq!(found.lines().collect::<Vec<_>>(), want);
    // `ls -R` agrees (it lists what readdir returns).
    let ls = sh(&format!("ls -R '{}'", m.mountpoint.display()));
    assert!(
        ls.contains("collection.json") && ls.contains("os.img"),
        "{ls}"
    );

    assert_eq!(
        fs::read_link(m.path("daily/latest")).expect("latest"),
        PathBuf::from("d2")
    );
    assert_eq!(
        fs::read_link(m.path("weekly/latest")).expect("latest"),
        PathBuf::from("w1")
    );
    let cat = f.ts.engine.catalog().expect("catalog");
    for Generation {
        coll,
        point,
        os,
        data,
        ..
    } in &f.points
    {
        let rec = cat.point(coll, point).expect("point").1;
        let created = humantime::parse_rfc3339_weak(&rec.created).expect("time");
        let dir = fs::metadata(m.path(&format!("{coll}/{point}"))).expect("stat point");
        assert!(dir.is_dir());
        assert_eq!(
            dir.modified().expect("mtime"),
            created,
            "{coll}/{point} time"
        );
        let img = fs::metadata(m.path(&format!("{coll}/{point}/disks/os.img"))).expect("stat");
        assert_eq!(img.len(), os.len() as u64);
        assert_eq!(img.mode() & 0o777, 0o400);
        // st_blocks counts stored data only: the ext4 image is mostly empty.
        assert!(
            img.blocks() * 512 < img.len() / 2,
            "os.img reports {} blocks",
            img.blocks()
        );
        let d = fs::metadata(m.path(&format!("{coll}/{point}/disks/data.img"))).expect("stat");
        assert_eq!(d.len(), data.len() as u64);
        let json: serde_json::Value = serde_json::from_slice(
            &fs::read(m.path(&format!("{coll}/{point}/restore-point.json"))).expect("json"),
        )
        .expect("parse");
        assert_eq!(json["name"], point.as_str());
        assert_eq!(json["properties"]["provisioningState"], "Succeeded");
    }
    let cj: serde_json::Value =
        serde_json::from_slice(&fs::read(m.path("daily/collection.json")).expect("read"))
            .expect("parse");
    let names: Vec<&str> = cj["properties"]["restorePoints"]
        .as_array()
        .expect("points")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["d0", "d2"]);
    // statfs is the store's medium, not zeros.
    let df = sh(&format!(
        "df -B1 --output=size,avail '{}' | tail -1",
        m.mountpoint.display()
    ));
    let nums: Vec<u64> = df
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(nums.len() == 2 && nums[0] > 0 && nums[1] > 0, "df: {df}");
}

#[test]
fn disk_images_are_byte_identical_and_their_filesystems_intact() {
    if !fuse_or_skip("disk_images_are_byte_identical_and_their_filesystems_intact") {
        return;
    }
    require_tool("qemu-img");
    require_tool("e2fsck");
    let f = Fixture::new();
    let m = f.mount(&[]);
    for (
        i,
        Generation {
            coll,
            point,
            os,
            data,
            tree,
        },
    ) in f.points.iter().enumerate()
    {
        let gen_os = f.ts.path(&format!("gen{i}-os.img"));
        let gen_data = f.ts.path(&format!("gen{i}-data.img"));
        write_sparse(&gen_os, os);
        write_sparse(&gen_data, data);
        let img = |d: &str| m.path(&format!("{coll}/{point}/disks/{d}.img"));
        sh(&format!(
            "cmp '{}' '{}'",
            gen_os.display(),
            img("os").display()
        ));
        sh(&format!(
            "cmp '{}' '{}'",
            gen_data.display(),
            img("data").display()
        ));
        sh(&format!(
            "qemu-img compare -f raw -F raw '{}' '{}'",
            gen_data.display(),
            img("data").display()
        ));
        sh(&format!(
            "qemu-img compare -f raw -F raw '{}' '{}'",
            gen_os.display(),
            img("os").display()
        ));
        sh(&format!(
            "e2fsck -fn '{}' >/dev/null 2>&1",
            img("os").display()
        ));
        if is_root() {
            // File-level restore: the image's filesystem holds exactly that generation's files.
            let loop_dir = tempfile::tempdir().expect("tempdir");
            let loop_mnt = loop_dir.path().join("m");
            fs::create_dir(&loop_mnt).expect("mkdir");
            let _guard = Mounted::run(
                &loop_mnt,
                &format!(
                    "mount -o loop,ro '{}' '{}'",
                    img("os").display(),
                    loop_mnt.display()
                ),
            );
            let out = Command::new("diff")
                .args(["-r", "--no-dereference", "-x", "lost+found"])
                .arg(tree)
                .arg(&loop_mnt)
                .output()
                .expect("diff");
            assert!(
                out.status.success(),
                "{coll}/{point}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            sh(&format!(
                "cp '{}/name with spaces.txt' '{}/restored.txt'",
                loop_mnt.display(),
                loop_dir.path().display()
            ));
            assert_eq!(
                fs::read(loop_dir.path().join("restored.txt")).expect("restored"),
                b"spaces survive\n"
            );
        }
    }
}

#[test]
fn sparse_copies_of_a_mostly_empty_disk_are_quick_and_small() {
    if !fuse_or_skip("sparse_copies_of_a_mostly_empty_disk_are_quick_and_small") {
        return;
    }
    let ts = TestStore::new(64 * KIB as u32);
    let disk = ts.path("big.img");
    let file = fs::File::create(&disk).expect("create");
    file.set_len(1 << 30).expect("size");
    let mut data = vec![0u8; 4 * MIB as usize];
    rng(seed()).fill_bytes(&mut data);
    file.write_all_at(&data, 300 * MIB).expect("write");
    drop(file);
    ts.vm("vm", &[("big", &disk)], "c");
    ts.create("c", "p");
    let m = MountGuard::new(&ts.store_path(), &[]);
    let copy = ts.path("copy.img");
    let start = Instant::now();
    sh(&format!(
        "cp --sparse=always '{}' '{}'",
        m.path("c/p/disks/big.img").display(),
        copy.display()
    ));
    let took = start.elapsed();
    let allocated = fs::metadata(&copy).expect("stat").blocks() * 512;
    eprintln!("cp --sparse=always of 1 GiB took {took:?}, copy allocates {allocated} bytes");
    assert!(took < Duration::from_secs(10), "cp took {took:?}");
    assert!(allocated <= 8 * MIB, "the copy allocates {allocated} bytes");
    sh(&format!("cmp '{}' '{}'", copy.display(), disk.display()));
    // SEEK_DATA and SEEK_HOLE through the mount follow the image's holes.
    let out = sh(&format!(
        "python3 -c \"import os; f=os.open('{}', os.O_RDONLY); print(os.lseek(f, 0, os.SEEK_DATA), os.lseek(f, 300*2**20, os.SEEK_HOLE))\"",
        m.path("c/p/disks/big.img").display()
    ));
    assert_eq!(out.trim(), format!("{} {}", 300 * MIB, 304 * MIB));
}

#[test]
fn eight_threads_of_random_reads_match_the_sources() {
    if !fuse_or_skip("eight_threads_of_random_reads_match_the_sources") {
        return;
    }
    let f = Fixture::new();
    let m = f.mount(&[]);
    let images: Arc<Vec<(PathBuf, Vec<u8>)>> = Arc::new(
        f.points
            .iter()
            .flat_map(
                |Generation {
                     coll: c,
                     point: p,
                     os,
                     data,
                     ..
                 }| {
                    [
                        (m.path(&format!("{c}/{p}/disks/os.img")), os.clone()),
                        (m.path(&format!("{c}/{p}/disks/data.img")), data.clone()),
                    ]
                },
            )
            .collect(),
    );
    let seed = seed();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let images = images.clone();
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ t);
                let files: Vec<fs::File> = images
                    .iter()
                    .map(|(p, _)| fs::File::open(p).expect("open"))
                    .collect();
                for _ in 0..600 {
                    let i = rng.random_range(0..images.len());
                    let want = &images[i].1;
                    let off = rng.random_range(0..want.len() as u64 + 4096);
                    let len = rng.random_range(1..300 * KIB as usize);
                    let mut buf = vec![0u8; len];
                    let n = read_full(&files[i], &mut buf, off);
                    let end = (off as usize + len).min(want.len());
                    let start = (off as usize).min(want.len());
                    assert_eq!(
                        n,
                        end - start,
                        "short read of {} at {off}",
                        images[i].0.display()
                    );
                    assert!(
                        buf[..n] == want[start..end],
                        "{} differs at {off}",
                        images[i].0.display()
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("reader thread");
    }
}

fn read_full(f: &fs::File, buf: &mut [u8], off: u64) -> usize {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    done
}

#[test]
fn points_made_elsewhere_appear_without_remounting_and_latest_follows() {
    if !fuse_or_skip("points_made_elsewhere_appear_without_remounting_and_latest_follows") {
        return;
    }
    let f = Fixture::new();
    let m = f.mount(&[]);
    assert!(fs::read_dir(m.path("daily")).expect("ls").count() > 0);
    expect_exit(f.ts.cli().args(["point", "create", "daily", "fromcli"]), 0);
    let start = Instant::now();
    loop {
        let names: Vec<String> = fs::read_dir(m.path("daily"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        if names.iter().any(|n| n == "fromcli") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "not listed after 1 s: {names:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_until("latest did not follow", Duration::from_secs(2), || {
        fs::read_link(m.path("daily/latest")).expect("latest") == Path::new("fromcli")
    });
    assert!(fs::read(m.path("daily/fromcli/disks/os.img")).expect("read") == f.points[2].os);
}

#[test]
fn a_damaged_block_fails_only_the_reads_that_touch_it() {
    if !fuse_or_skip("a_damaged_block_fails_only_the_reads_that_touch_it") {
        return;
    }
    // Format 1: block 5 is found in the point's own pack by format 1's pack table (format 2's
    // damaged frames fail reads the same way through the same engine: `damage_paged.rs`).
    let ts = TestStore::new_format(64 * KIB as u32, 1);
    let disk = ts.path("d.img");
    let content = random_image(&disk, 2 * MIB as usize, &mut rng(seed()));
    ts.vm("vm", &[("d", &disk)], "c");
    let p = ts.create("c", "p");
    // Flip a byte inside block 5 of the point's pack.
    let d = &p.disks[0];
    let key = rpfs::store::layout::pack(p.vm_id, d.disk_id, d.drp_id);
    let storage = rpfs::store::LocalStorage::new(ts.store_path());
    let idx = {
        use rpfs::store::storage::Storage;
        rpfs::store::pack::PackIndex::load(
            &*storage.open(&key).expect("open"),
            &key,
            d.drp_id,
            64 * KIB as u32,
        )
        .expect("pack")
    };
    let e = idx.find(5).expect("block 5");
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(ts.store_path().join(&key))
        .expect("pack");
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, e.offset + 100).expect("read");
    file.write_all_at(&[b[0] ^ 1], e.offset + 100)
        .expect("write");
    drop(file);

    let m = MountGuard::new(&ts.store_path(), &[]);
    let img = fs::File::open(m.path("c/p/disks/d.img")).expect("open");
    let mut buf = vec![0u8; 64 * KIB as usize];
    for block in 0..32u64 {
        let r = img.read_exact_at(&mut buf, block * 64 * KIB);
        if block == 5 {
            assert_eq!(errno(r), libc::EIO, "block 5 read without error");
        } else {
            r.unwrap_or_else(|e| panic!("block {block}: {e}"));
            let at = (block * 64 * KIB) as usize;
            assert!(
                buf[..] == content[at..at + buf.len()],
                "block {block} differs"
            );
        }
    }
    // Reads that only end or only start next to it are fine too.
    let mut small = vec![0u8; 4096];
    img.read_exact_at(&mut small, 5 * 64 * KIB - 4096)
        .expect("just before block 5");
    img.read_exact_at(&mut small, 6 * 64 * KIB)
        .expect("just after block 5");
}
