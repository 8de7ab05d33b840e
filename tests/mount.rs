//! Real mounts: the tree as `find` sees it, disk images compared with `cmp` and
//! `qemu-img compare`, a loop mount of an ext4 image diffed against its source tree and checked
//! with `e2fsck`, sparse copies, `mkdir`/`rmdir` and every errno they give, refused writes,
//! concurrent readers, freshness, and the daemon's life (SIGTERM, a killed daemon).

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mount::{MountGuard, as_nobody, fuse_or_skip, is_mounted};
use common::*;
use rand::{Rng, RngCore};
use rpfs::engine::vms::VmSpec;
use rpfs::store::records::DiskType;

/// A store with one VM (an ext4 OS disk and a mixed data disk) and two collections holding
/// points of three generations, with what each generation's disks and files were.
struct Fixture {
    ts: TestStore,
    points: Vec<Generation>,
}

/// One point of the fixture and what its disks held.
struct Generation {
    coll: String,
    point: String,
    os: Vec<u8>,
    data: Vec<u8>,
    /// The directory the os image's files came from.
    tree: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        require_tool("debugfs");
        let mut rng = rng(seed());
        let ts = TestStore::new(64 * KIB as u32);
        let tree = ts.path("tree0");
        file_tree(&tree, 24, &mut rng);
        fs::write(tree.join("name with spaces.txt"), b"spaces survive\n").expect("write");
        let os = ts.path("os.img");
        ext4_image(&tree, &os, 24 * MIB);
        let data = ts.path("data.img");
        let mut mixed = mixed_image(&data, 8 * MIB + 4 * KIB, &mut rng);
        ts.vm("vm1", &[("os", &os), ("data", &data)], "daily");
        ts.engine
            .create_collection("weekly", "vm1", None)
            .expect("weekly");
        let mut points = Vec::new();
        for (g, (coll, name)) in [("daily", "d0"), ("weekly", "w1"), ("daily", "d2")]
            .iter()
            .enumerate()
        {
            let gen_tree = ts.path(&format!("tree{g}"));
            if g > 0 {
                sh(&format!(
                    "cp -a '{}' '{}'",
                    ts.path(&format!("tree{}", g - 1)).display(),
                    gen_tree.display()
                ));
                let mut content = vec![0u8; 100 * KIB as usize];
                rng.fill_bytes(&mut content);
                fs::write(gen_tree.join(format!("gen{g}.bin")), &content).expect("write");
                sh(&format!(
                    "debugfs -w -R 'write {}/gen{g}.bin /gen{g}.bin' '{}'",
                    gen_tree.display(),
                    os.display()
                ));
                change_blocks(&data, &mut mixed, 64 * KIB, 0.1, &mut rng);
            }
            ts.create(coll, name);
            points.push(Generation {
                coll: coll.to_string(),
                point: name.to_string(),
                os: fs::read(&os).expect("os"),
                data: mixed.clone(),
                tree: gen_tree,
            });
        }
        Fixture { ts, points }
    }

    fn mount(&self, extra: &[&str]) -> MountGuard {
        MountGuard::new(&self.ts.store_path(), extra)
    }
}

fn errno(r: std::io::Result<impl Sized>) -> i32 {
    match r {
        Ok(_) => panic!("the operation succeeded"),
        Err(e) => e.raw_os_error().expect("an OS error"),
    }
}

#[test]
fn the_tree_is_exactly_what_the_store_holds() {
    if !fuse_or_skip("the_tree_is_exactly_what_the_store_holds") {
        return;
    }
    let f = Fixture::new();
    let m = f.mount(&[]);
    // The guest files under files/os are tests/files.rs's to check; here they must only exist.
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
        assert_eq!(img.mode() & 0o777, 0o444);
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
            sh(&format!(
                "mount -o loop,ro '{}' '{}'",
                img("os").display(),
                loop_mnt.display()
            ));
            struct Unmount(PathBuf);
            impl Drop for Unmount {
                fn drop(&mut self) {
                    let _ = Command::new("umount").arg(&self.0).status();
                }
            }
            let _guard = Unmount(loop_mnt.clone());
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
fn mkdir_creates_points_and_gives_an_errno_for_each_refusal() {
    if !fuse_or_skip("mkdir_creates_points_and_gives_an_errno_for_each_refusal") {
        return;
    }
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let os = ts.path("os.img");
    let mut content = random_image(&os, 64 * KIB as usize, &mut rng);
    let scratch = ts.path("scratch.img");
    random_image(&scratch, 16 * KIB as usize, &mut rng);
    let marker = ts.path("frozen");
    let slow = ts.path("slow");
    ts.engine
        .add_vm(&VmSpec {
            name: "vm".into(),
            disks: vec![
                ("os".into(), os.clone()),
                ("scratch".into(), scratch.clone()),
            ],
            disk_types: vec![("scratch".into(), DiskType::Ultra)],
            pre_script: Some(format!(
                "if [ -e '{}' ]; then touch '{}'; sleep 3; fi",
                slow.display(),
                marker.display()
            )),
            post_script: Some("true".into()),
            ..VmSpec::default()
        })
        .expect("vm");
    for c in ["c", "other"] {
        ts.engine
            .create_collection(c, "vm", None)
            .expect("collection");
    }
    let m = MountGuard::new(&ts.store_path(), &[]);

    // The ultra disk must be excluded: EOPNOTSUPP until the collection's defaults do it.
    assert_eq!(errno(fs::create_dir(m.path("c/p1"))), libc::EOPNOTSUPP);
    let cj = fs::read_to_string(m.path("c/collection.json")).expect("collection.json");
    assert!(
        cj.contains("\"status\": \"Failed\"") && cj.contains("exclude it"),
        "{cj}"
    );
    expect_exit(
        ts.cli()
            .args(["collection", "set", "c", "--exclude-disk", "scratch"]),
        0,
    );
    expect_exit(
        ts.cli()
            .args(["collection", "set", "other", "--exclude-disk", "scratch"]),
        0,
    );
    fs::create_dir(m.path("c/p1")).expect("mkdir p1");
    // mkdir returns once the point is committed: its disk reads back at once.
    assert!(fs::read(m.path("c/p1/disks/os.img")).expect("read") == content);
    assert!(!m.path("c/p1/disks/scratch.img").exists());
    let cj = fs::read_to_string(m.path("c/collection.json")).expect("collection.json");
    assert!(cj.contains("\"status\": \"Succeeded\""), "{cj}");

    assert_eq!(errno(fs::create_dir(m.path("c/p1"))), libc::EEXIST);
    assert_eq!(errno(fs::create_dir(m.path("c/bad name"))), libc::EINVAL);
    assert_eq!(errno(fs::create_dir(m.path("c/x.json"))), libc::EINVAL);
    assert_eq!(
        errno(fs::create_dir(m.path(&format!("c/{}", "n".repeat(81))))),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(fs::create_dir(
            m.mountpoint.join(OsStr::from_bytes(b"c/\xff"))
        )),
        libc::EINVAL
    );
    for elsewhere in ["newcollection", "c/p1/x", "c/p1/disks/x"] {
        assert_eq!(
            errno(fs::create_dir(m.path(elsewhere))),
            libc::EPERM,
            "{elsewhere}"
        );
    }

    // A creation from the CLI holds the VM: mkdir is refused as busy at once.
    fs::write(&slow, b"").expect("slow");
    let mut cli = Command::new(env!("CARGO_BIN_EXE_rpfs"))
        .args(["point", "create", "other", "held"])
        .env("RPFS_STORE", ts.store_path())
        .spawn()
        .expect("spawn");
    wait_until(
        "the CLI creation never froze the VM",
        Duration::from_secs(10),
        || marker.exists(),
    );
    let t = Instant::now();
    assert_eq!(errno(fs::create_dir(m.path("c/p2"))), libc::EBUSY);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "busy took {:?}",
        t.elapsed()
    );
    assert!(cli.wait().expect("wait").success());
    fs::remove_file(&slow).expect("unslow");
    change_blocks(&os, &mut content, 4096, 0.25, &mut rng);
    fs::create_dir(m.path("c/p2")).expect("mkdir p2");
    assert!(fs::read(m.path("c/p2/disks/os.img")).expect("read") == content);

    // rmdir without --allow-delete: EPERM, nothing deleted.
    assert_eq!(errno(fs::remove_dir(m.path("c/p1"))), libc::EPERM);
    assert!(m.path("c/p1/disks/os.img").exists());
}

#[test]
fn the_point_limit_gives_edquot_through_mkdir_and_rmdir_needs_allow_delete() {
    if !fuse_or_skip("the_point_limit_gives_edquot_through_mkdir_and_rmdir_needs_allow_delete") {
        return;
    }
    let ts = TestStore::new(4096);
    let disk = ts.path("tiny.img");
    random_image(&disk, 4096, &mut rng(seed()));
    ts.vm("vm", &[("d", &disk)], "c");
    for i in 0..500 {
        create(&ts.engine, "c", &format!("p{i}"));
    }
    let m = MountGuard::new(&ts.store_path(), &["--allow-delete"]);
    assert_eq!(errno(fs::create_dir(m.path("c/p500"))), libc::EDQUOT);
    assert_eq!(errno(fs::remove_dir(m.path("c"))), libc::EPERM);
    assert_eq!(errno(fs::remove_dir(m.path("c/p3/disks"))), libc::EPERM);
    fs::remove_dir(m.path("c/p0")).expect("rmdir p0");
    assert!(!m.path("c/p0").exists());
    fs::create_dir(m.path("c/p500")).expect("mkdir after a delete");
    assert_eq!(
        fs::read_link(m.path("c/latest")).expect("latest"),
        PathBuf::from("p500")
    );
    assert!(
        fs::read(m.path("c/p499/disks/d.img")).expect("read") == fs::read(&disk).expect("disk")
    );
}

#[test]
fn writes_are_refused_and_change_nothing() {
    if !fuse_or_skip("writes_are_refused_and_change_nothing") {
        return;
    }
    let f = Fixture::new();
    let before = f.ts.snapshot();
    let m = f.mount(&["--allow-delete"]);
    let img = m.path("daily/d0/disks/os.img");
    let cfg = m.path("daily/d0/vm-config");
    let rofs = libc::EROFS;
    assert_eq!(errno(fs::OpenOptions::new().write(true).open(&img)), rofs);
    assert_eq!(
        errno(fs::OpenOptions::new().read(true).write(true).open(&img)),
        rofs
    );
    assert_eq!(errno(fs::OpenOptions::new().append(true).open(&cfg)), rofs);
    assert_eq!(errno(fs::File::create(m.path("daily/d0/new-file"))), rofs);
    assert_eq!(errno(fs::remove_file(&cfg)), rofs);
    assert_eq!(
        errno(fs::rename(m.path("daily/d0"), m.path("daily/renamed"))),
        rofs
    );
    assert_eq!(
        errno(fs::rename(&img, m.path("daily/d0/disks/x.img"))),
        rofs
    );
    assert_eq!(
        errno(fs::set_permissions(
            &img,
            std::os::unix::fs::PermissionsExt::from_mode(0o666)
        )),
        rofs
    );
    assert_eq!(
        errno(std::os::unix::fs::symlink("x", m.path("daily/link"))),
        rofs
    );
    assert_eq!(
        errno(fs::hard_link(&img, m.path("daily/d0/disks/hard.img"))),
        rofs
    );
    let out = Command::new("truncate")
        .args(["-s", "0"])
        .arg(&img)
        .output()
        .expect("truncate");
    assert!(!out.status.success());
    let out = Command::new("setfattr")
        .args(["-n", "user.x", "-v", "1"])
        .arg(&img)
        .output();
    if let Ok(out) = out {
        assert!(!out.status.success(), "setfattr succeeded");
    }
    let out = Command::new("touch").arg(&img).output().expect("touch");
    assert!(!out.status.success(), "touch succeeded");
    drop(m);
    assert_unchanged(&before, &f.ts.snapshot(), "refused writes");
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

use rand::SeedableRng;

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
fn sigterm_unmounts_and_umount_clears_a_killed_daemon() {
    if !fuse_or_skip("sigterm_unmounts_and_umount_clears_a_killed_daemon") {
        return;
    }
    let ts = TestStore::new(4096);
    let disk = ts.path("d.img");
    random_image(&disk, 64 * KIB as usize, &mut rng(seed()));
    ts.vm("vm", &[("d", &disk)], "c");
    ts.create("c", "p");

    let mut m = MountGuard::new(&ts.store_path(), &[]);
    sh(&format!("kill -TERM {}", m.pid()));
    let status = m.child.take().expect("child").wait().expect("wait");
    assert!(status.success(), "daemon exited with {status}");
    assert!(!is_mounted(&m.mountpoint), "SIGTERM left the mount");

    let mut m = MountGuard::new(&ts.store_path(), &[]);
    sh(&format!("kill -KILL {}", m.pid()));
    let _ = m.child.take().expect("child").wait();
    assert!(
        is_mounted(&m.mountpoint),
        "a killed daemon's mount should linger"
    );
    assert_eq!(errno(fs::metadata(m.path("c"))), libc::ENOTCONN);
    expect_exit(ts.cli().arg("umount").arg(&m.mountpoint), 0);
    assert!(!is_mounted(&m.mountpoint));
    expect_exit(ts.cli().arg("umount").arg(&m.mountpoint), 3);
}

#[test]
fn the_background_daemon_returns_once_mounted() {
    if !fuse_or_skip("the_background_daemon_returns_once_mounted") {
        return;
    }
    let ts = TestStore::new(4096);
    let disk = ts.path("d.img");
    let content = random_image(&disk, 64 * KIB as usize, &mut rng(seed()));
    ts.vm("vm", &[("d", &disk)], "c");
    ts.create("c", "p");
    let mp = ts.path("mnt");
    fs::create_dir(&mp).expect("mkdir");
    let log = ts.path("mount.log");
    let (out, _) = expect_exit(
        ts.cli().arg("mount").arg(&mp).arg("--log-file").arg(&log),
        0,
    );
    assert!(out.contains("mounted"), "{out}");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            if is_mounted(&self.0) {
                let _ = Command::new(env!("CARGO_BIN_EXE_rpfs"))
                    .arg("umount")
                    .arg(&self.0)
                    .status();
            }
        }
    }
    let _guard = Unmount(mp.clone());
    assert!(is_mounted(&mp));
    assert!(fs::read(mp.join("c/p/disks/d.img")).expect("read") == content);
    // A second mount on the same place is refused; an empty log is not an error.
    expect_exit(
        ts.cli().arg("mount").arg(&mp).arg("--log-file").arg(&log),
        4,
    );
    expect_exit(ts.cli().arg("umount").arg(&mp), 0);
    wait_until("still mounted", Duration::from_secs(5), || !is_mounted(&mp));
    // The daemon logs its end once the mount is gone.
    wait_until(
        "the daemon never logged its end",
        Duration::from_secs(5),
        || fs::read_to_string(&log).expect("log").contains("unmounted"),
    );
    // Mount errors come back to the caller.
    let (_, err) = expect_exit(ts.cli().arg("mount").arg(ts.path("missing")), 3);
    assert!(err.contains("missing"), "{err}");
}

#[test]
fn allow_other_lets_others_read_but_only_root_and_the_owner_change() {
    if !fuse_or_skip("allow_other_lets_others_read_but_only_root_and_the_owner_change")
        || !root_or_skip("allow_other_lets_others_read_but_only_root_and_the_owner_change")
    {
        return;
    }
    require_tool("setpriv");
    let ts = TestStore::new(4096);
    let disk = ts.path("d.img");
    random_image(&disk, 64 * KIB as usize, &mut rng(seed()));
    ts.vm("vm", &[("d", &disk)], "c");
    ts.create("c", "p");
    let m = MountGuard::new(&ts.store_path(), &["--allow-other", "--allow-delete"]);
    let out = as_nobody(
        &m,
        "cmp c/p/disks/d.img /dev/stdin < /dev/null; cat c/p/disks/d.img | wc -c",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (64 * KIB).to_string()
    );
    // Refusals start no work: the store is untouched.
    let before = ts.snapshot();
    let out = as_nobody(&m, "mkdir c/q");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    // Mode bits are the kernel's to enforce: directories are r-x for others.
    let out = as_nobody(&m, "touch c/p/x");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    let out = as_nobody(&m, "rmdir c/p");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    assert!(m.path("c/p").exists());
    assert_unchanged(&before, &ts.snapshot(), "refused mkdir and rmdir");
    fs::create_dir(m.path("c/byroot")).expect("root may mkdir");
    drop(m);

    let m = MountGuard::new(&ts.store_path(), &[]);
    let out = as_nobody(&m, "ls c");
    assert!(
        !out.status.success(),
        "others can list without --allow-other"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
}

#[test]
fn a_damaged_block_fails_only_the_reads_that_touch_it() {
    if !fuse_or_skip("a_damaged_block_fails_only_the_reads_that_touch_it") {
        return;
    }
    let ts = TestStore::new(64 * KIB as u32);
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

#[test]
fn a_long_mkdir_blocks_no_reader_and_odd_requests_get_answers() {
    if !fuse_or_skip("a_long_mkdir_blocks_no_reader_and_odd_requests_get_answers") {
        return;
    }
    let ts = TestStore::new(4096);
    let disk = ts.path("d.img");
    let content = random_image(&disk, 256 * KIB as usize, &mut rng(seed()));
    let marker = ts.path("frozen");
    ts.engine
        .add_vm(&VmSpec {
            name: "vm".into(),
            disks: vec![("d".into(), disk.clone())],
            pre_script: Some(format!("touch '{}'; sleep 2", marker.display())),
            ..VmSpec::default()
        })
        .expect("vm");
    ts.engine
        .create_collection("c", "vm", None)
        .expect("collection");
    ts.engine
        .create_collection("other", "vm", None)
        .expect("collection");
    create(&ts.engine, "c", "p0");
    create(&ts.engine, "other", "q0");
    let m = MountGuard::new(&ts.store_path(), &[]);
    // Paths resolved before, and files opened before, the mkdir starts.
    assert!(fs::read(m.path("c/p0/disks/d.img")).expect("read") == content);
    let open = fs::File::open(m.path("c/p0/disks/d.img")).expect("open");
    let slow = {
        let dir = m.path("c/slow");
        std::thread::spawn(move || fs::create_dir(dir))
    };
    wait_until("mkdir never started", Duration::from_secs(10), || {
        marker.exists()
    });
    // While `mkdir c/slow` runs (2 s), the kernel holds `c` itself locked, so listing `c` waits
    // in the kernel; every other request is served by the daemon's other threads.
    let t = Instant::now();
    assert_eq!(fs::read_dir(&m.mountpoint).expect("ls /").count(), 2);
    assert!(fs::read_dir(m.path("other")).expect("ls other").count() >= 3);
    assert!(fs::read(m.path("other/q0/disks/d.img")).expect("read other") == content);
    assert!(fs::read(m.path("c/p0/disks/d.img")).expect("read resolved path") == content);
    let mut buf = vec![0u8; content.len()];
    open.read_exact_at(&mut buf, 0).expect("read open file");
    assert!(buf == content);
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "readers waited {:?} for mkdir",
        t.elapsed()
    );
    slow.join().expect("thread").expect("mkdir");
    assert!(m.path("c/slow/disks/d.img").exists());

    // Whatever a request carries, it is answered.
    assert_eq!(
        errno(fs::metadata(
            m.mountpoint.join(OsStr::from_bytes(b"c/\xff\xfe"))
        )),
        libc::ENOENT
    );
    assert_eq!(
        errno(fs::metadata(m.path("c/p0/disks/d.img/deeper"))),
        libc::ENOTDIR
    );
    assert_eq!(errno(fs::metadata(m.path("c/nothing/disks"))), libc::ENOENT);
    let img = fs::File::open(m.path("c/p0/disks/d.img")).expect("open");
    let mut buf = [0u8; 16];
    assert_eq!(
        img.read_at(&mut buf, 1 << 40).expect("read past the end"),
        0
    );
    assert_eq!(
        img.read_at(&mut buf, 256 * KIB - 8)
            .expect("read across the end"),
        8
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import os,errno\nf=os.open('{}',os.O_RDONLY)\ntry:\n  os.lseek(f, {}, os.SEEK_DATA)\nexcept OSError as e:\n  print(errno.errorcode[e.errno])",
            m.path("c/p0/disks/d.img").display(),
            1u64 << 40
        ))
        .output()
        .expect("python3");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ENXIO");
    // A plain `umount` (not `rpfs umount`) ends the daemon too.
    drop((open, img));
    let mut m = m;
    sh(&format!("umount '{}'", m.mountpoint.display()));
    let status = m.child.take().expect("daemon").wait().expect("wait");
    assert!(status.success(), "daemon after umount: {status}");
    assert!(!is_mounted(&m.mountpoint));
}

// ----- the daemon under stress: regressions found in review -----

/// A store with one VM and a point, plus the disk's content.
fn small_store(bytes: usize) -> (TestStore, Vec<u8>) {
    let ts = TestStore::new(4096);
    let disk = ts.path("d.img");
    let content = random_image(&disk, bytes, &mut rng(seed()));
    ts.vm("vm", &[("d", &disk)], "c");
    ts.create("c", "p");
    (ts, content)
}

#[test]
fn a_signal_on_a_busy_mount_keeps_serving_until_it_can_unmount() {
    if !fuse_or_skip("a_signal_on_a_busy_mount_keeps_serving_until_it_can_unmount") {
        return;
    }
    let (ts, content) = small_store(64 * KIB as usize);
    let mut m = MountGuard::new(&ts.store_path(), &[]);
    let open = fs::File::open(m.path("c/p/disks/d.img")).expect("open");
    sh(&format!("kill -TERM {}", m.pid()));
    std::thread::sleep(Duration::from_millis(500));
    // Busy: still mounted, still serving, the daemon alive.
    assert!(is_mounted(&m.mountpoint));
    let mut buf = vec![0u8; content.len()];
    open.read_exact_at(&mut buf, 0).expect("read while busy");
    assert!(buf == content);
    assert!(matches!(
        m.child.as_mut().expect("daemon").try_wait(),
        Ok(None)
    ));
    // Once nothing holds it, the next signal unmounts.
    drop(open);
    sh(&format!("kill -INT {}", m.pid()));
    let status = m.child.take().expect("daemon").wait().expect("wait");
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&m.mountpoint));
}

#[test]
fn remounting_at_once_is_not_undone_by_the_old_daemon() {
    if !fuse_or_skip("remounting_at_once_is_not_undone_by_the_old_daemon") {
        return;
    }
    let (ts, content) = small_store(64 * KIB as usize);
    let mut first = MountGuard::new(&ts.store_path(), &[]);
    let mp = first.mountpoint.clone();
    expect_exit(ts.cli().arg("umount").arg(&mp), 0);
    let log = ts.path("mount.log");
    let (out, _) = expect_exit(
        ts.cli().arg("mount").arg(&mp).arg("--log-file").arg(&log),
        0,
    );
    let _ = first.child.take().expect("first daemon").wait();
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        is_mounted(&mp),
        "the first daemon unmounted the second mount"
    );
    assert!(fs::read(mp.join("c/p/disks/d.img")).expect("read") == content);
    // The background daemon left the caller's working directory.
    let pid = out
        .split("daemon pid ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .expect("the daemon's pid in the output");
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd");
    assert_eq!(cwd, Path::new("/"));
    // A symlink to the mount point is the same mount point: no second mount stacks there.
    let link = ts.path("link");
    std::os::unix::fs::symlink(&mp, &link).expect("symlink");
    expect_exit(
        ts.cli().arg("mount").arg(&link).arg("--log-file").arg(&log),
        4,
    );
    expect_exit(ts.cli().arg("umount").arg(&link), 0);
    wait_until("still mounted", Duration::from_secs(5), || !is_mounted(&mp));
}

#[test]
fn slow_creations_do_not_take_the_request_threads() {
    if !fuse_or_skip("slow_creations_do_not_take_the_request_threads") {
        return;
    }
    let ts = TestStore::new(4096);
    let disk = ts.path("d.img");
    let content = random_image(&disk, 64 * KIB as usize, &mut rng(seed()));
    let started = ts.path("started");
    fs::create_dir(&started).expect("mkdir");
    // More VMs than the daemon has request threads, each with a slow pre-script.
    for i in 0..10 {
        ts.engine
            .add_vm(&VmSpec {
                name: format!("vm{i}"),
                disks: vec![("d".into(), disk.clone())],
                pre_script: Some(format!("touch '{}/{i}'; sleep 3", started.display())),
                ..VmSpec::default()
            })
            .expect("vm");
        ts.engine
            .create_collection(&format!("c{i}"), &format!("vm{i}"), None)
            .expect("collection");
    }
    ts.vm("fast", &[("d", &disk)], "fast");
    ts.create("fast", "p");
    let m = MountGuard::new(&ts.store_path(), &[]);
    let slow: Vec<_> = (0..10)
        .map(|i| {
            let dir = m.path(&format!("c{i}/slow"));
            std::thread::spawn(move || fs::create_dir(dir))
        })
        .collect();
    wait_until(
        "the creations did not all start",
        Duration::from_secs(10),
        || fs::read_dir(&started).expect("ls").count() >= 10,
    );
    let t = Instant::now();
    let json = fs::read(m.path("fast/p/restore-point.json")).expect("json");
    assert!(!json.is_empty());
    assert!(fs::read(m.path("fast/p/disks/d.img")).expect("read") == content);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "served after {:?}",
        t.elapsed()
    );
    for s in slow {
        s.join().expect("thread").expect("mkdir");
    }
}

#[test]
fn a_deep_chain_reads_within_a_small_descriptor_limit() {
    if !fuse_or_skip("a_deep_chain_reads_within_a_small_descriptor_limit") {
        return;
    }
    let ts = TestStore::new(4096);
    let disk = ts.path("d.img");
    let mut rng = rng(seed());
    let mut content = random_image(&disk, 512 * KIB as usize, &mut rng);
    ts.vm("vm", &[("d", &disk)], "c");
    for i in 0..100 {
        change_blocks(&disk, &mut content, 4096, 0.02, &mut rng);
        ts.create("c", &format!("p{i}"));
    }
    // The newest point references ~100 packs; the daemon starts with a soft limit of 64.
    let m = MountGuard::wrapped(&ts.store_path(), &[], "ulimit -Sn 64;");
    assert!(fs::read(m.path("c/p99/disks/d.img")).expect("read the deep point") == content);
}

#[test]
fn a_point_deleted_while_open_keeps_reading() {
    if !fuse_or_skip("a_point_deleted_while_open_keeps_reading") {
        return;
    }
    let ts = TestStore::new(4096);
    let disk = ts.path("d.img");
    let mut rng = rng(seed());
    let mut content = random_image(&disk, 256 * KIB as usize, &mut rng);
    ts.vm("vm", &[("d", &disk)], "c");
    ts.create("c", "p1");
    change_blocks(&disk, &mut content, 4096, 0.5, &mut rng);
    ts.create("c", "p2");
    let m = MountGuard::new(&ts.store_path(), &["--allow-delete"]);
    let open = fs::File::open(m.path("c/p2/disks/d.img")).expect("open");
    fs::remove_dir(m.path("c/p2")).expect("rmdir p2");
    assert!(!m.path("c/p2").exists());
    let mut buf = vec![0u8; content.len()];
    open.read_exact_at(&mut buf, 0)
        .expect("read after the delete");
    assert!(buf == content);
}
