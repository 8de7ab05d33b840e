//! Reads: the captured bytes at any offset and length, short at the end and empty past it; the
//! page cache kept for images, bypassed for generated JSON; `vm-config` verbatim; `lseek` with
//! `SEEK_DATA`/`SEEK_HOLE` following the image's holes, and its refusals.

use std::ffi::OsStr;

use rand::Rng;
use rpfs::engine::vms::VmSpec;
use rpfs::store::records::ConfigSource;

use crate::common::cli::cli_json;
use crate::common::images::{KIB, random_image};
use crate::common::store::TestStore;
use crate::common::sys::{rng, seed};

use super::{
    CONFIG, FOREVER, OS_PAGES, OS_SIZE, OWNER_UID, PAGE, SEEK_CUR, SEEK_DATA, SEEK_END, SEEK_HOLE,
    SEEK_SET, add_vm, check_reads, fails, ino, json, mount, read_file, resolve, spec, tree,
};

#[test]
fn reads_return_the_captured_content() {
    let mut rng = rng(seed());
    let t = tree(&mut rng);
    let v = mount(&t.ts, false, false, FOREVER);

    for (path, content) in [
        ("c1/zeta/disks/os.img", &t.os),
        ("c1/mid/disks/os.img", &t.os),
        ("c1/zeta/disks/data.img", &t.data_zeta),
        ("c1/alpha/disks/data.img", &t.data_alpha),
    ] {
        let ino = ino(&v, path);
        check_reads(&v, ino, content, &mut rng, 60);
        assert!(read_file(&v, ino) == *content, "{path}: whole read");
    }
    assert_ne!(t.data_zeta, t.data_alpha);

    // Images keep the page cache; generated JSON bypasses it.
    let o = v
        .open(ino(&v, "c1/zeta/disks/os.img"), libc::O_RDONLY)
        .expect("open");
    assert!(o.keep_cache && !o.direct_io, "{o:?}");
    v.release(o.fh);
    let o = v
        .open(ino(&v, "c1/zeta/restore-point.json"), libc::O_RDONLY)
        .expect("open");
    assert!(o.direct_io, "{o:?}");
    v.release(o.fh);

    // The configuration captured verbatim.
    assert_eq!(read_file(&v, ino(&v, "c1/alpha/vm-config")), CONFIG);

    // JSON resources: what `rpfs point show --json` / `collection show --json` print.
    for name in ["zeta", "alpha", "mid"] {
        let got = json(&v, &format!("c1/{name}/restore-point.json"));
        assert_eq!(got["name"], name);
        assert_eq!(got["properties"]["consistencyMode"], "CrashConsistent");
        assert_eq!(got["properties"]["provisioningState"], "Succeeded");
        let cli = cli_json(&t.ts, &["point", "show", &format!("c1/{name}"), "--json"]);
        assert_eq!(
            got, cli,
            "restore-point.json of {name} vs point show --json"
        );
    }
    let mid = json(&v, "c1/mid/restore-point.json");
    let excluded = mid["properties"]["excludeDisks"].as_array().expect("array");
    assert_eq!(excluded.len(), 1, "{mid}");
    assert!(
        excluded[0]["id"].as_str().expect("id").ends_with("_data"),
        "{mid}"
    );
    let coll = json(&v, "c1/collection.json");
    assert_eq!(coll["name"], "c1");
    let points: Vec<&str> = coll["properties"]["restorePoints"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(points, ["zeta", "alpha", "mid"]);
    assert_eq!(
        coll,
        cli_json(&t.ts, &["collection", "show", "c1", "--json"])
    );

    // Reads of a JSON file: exact lengths, short at the end, empty past it.
    let rp = read_file(&v, ino(&v, "c1/zeta/restore-point.json"));
    let fh = v
        .open(ino(&v, "c1/zeta/restore-point.json"), libc::O_RDONLY)
        .expect("open")
        .fh;
    assert_eq!(v.read(fh, 5, 10).expect("read"), rp[5..15]);
    let n = rp.len() as u64;
    assert_eq!(v.read(fh, n - 3, 10).expect("read"), rp[rp.len() - 3..]);
    assert!(v.read(fh, n, 10).expect("read").is_empty());
    assert!(v.read(fh, u64::MAX, 10).expect("read").is_empty());
    v.release(fh);
}

#[test]
fn vm_config_from_a_command_is_captured_verbatim() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    random_image(&ts.path("os.img"), 64 * KIB as usize, &mut rng);
    add_vm(
        &ts,
        VmSpec {
            config: ConfigSource::Command(
                "printf 'phase=%s vm=%s\\n\\001\\377' \"$RPFS_PHASE\" \"$RPFS_VM\"".into(),
            ),
            ..spec("vmc", &[("os", &ts.path("os.img"))])
        },
        &["cc"],
    );
    let v = mount(&ts, false, false, FOREVER);
    v.mkdir(ino(&v, "cc"), OsStr::new("p1"), OWNER_UID)
        .expect("mkdir");
    let want = b"phase=config vm=vmc\n\x01\xff";
    let e = resolve(&v, "cc/p1/vm-config");
    assert_eq!(e.attr.size, want.len() as u64);
    assert_eq!(read_file(&v, e.attr.ino), want);

    // A VM without configuration: an empty vm-config.
    add_vm(&ts, spec("vmn", &[("os", &ts.path("os.img"))]), &["cn"]);
    ts.create("cn", "p1");
    let v = mount(&ts, false, false, FOREVER);
    let e = resolve(&v, "cn/p1/vm-config");
    assert_eq!(e.attr.size, 0);
    assert!(read_file(&v, e.attr.ino).is_empty());
}

// ----- lseek -----

#[test]
fn lseek_data_and_hole_follow_the_image() {
    let mut rng = rng(seed());
    let t = tree(&mut rng);
    let v = mount(&t.ts, false, false, FOREVER);
    let fh = v
        .open(ino(&v, "c1/zeta/disks/os.img"), libc::O_RDONLY)
        .expect("open")
        .fh;
    let pages = OS_SIZE.div_ceil(PAGE);
    let is_data = |p: u64| OS_PAGES.contains(&p);
    let next = |off: u64, data: bool| -> Option<u64> {
        (off / PAGE..pages)
            .find(|&p| is_data(p) == data)
            .map(|p| (p * PAGE).max(off).min(OS_SIZE))
    };
    let mut offsets: Vec<u64> = (0..pages)
        .flat_map(|p| [p * PAGE, p * PAGE + 1, p * PAGE + PAGE - 1])
        .filter(|&o| o < OS_SIZE)
        .collect();
    offsets.extend((0..200).map(|_| rng.random_range(0..OS_SIZE)));
    offsets.push(OS_SIZE - 1);
    for off in offsets {
        let o = off as i64;
        match next(off, true) {
            Some(d) => assert_eq!(
                v.lseek(fh, o, SEEK_DATA).expect("SEEK_DATA"),
                d as i64,
                "SEEK_DATA {off}"
            ),
            None => {
                fails(
                    v.lseek(fh, o, SEEK_DATA),
                    libc::ENXIO,
                    "SEEK_DATA past the data",
                );
            }
        }
        let hole = next(off, false).unwrap_or(OS_SIZE);
        assert_eq!(
            v.lseek(fh, o, SEEK_HOLE).expect("SEEK_HOLE"),
            hole as i64,
            "SEEK_HOLE {off}"
        );
    }
    // Spot checks of the model itself.
    assert_eq!(v.lseek(fh, 0, SEEK_HOLE).expect("hole"), 3 * PAGE as i64);
    assert_eq!(
        v.lseek(fh, 3 * PAGE as i64, SEEK_DATA).expect("data"),
        100 * PAGE as i64
    );
    assert_eq!(
        v.lseek(fh, 1501 * PAGE as i64, SEEK_DATA).expect("data"),
        2047 * PAGE as i64
    );
    assert_eq!(
        v.lseek(fh, 2047 * PAGE as i64, SEEK_HOLE).expect("hole"),
        OS_SIZE as i64
    );

    // Refusals.
    for whence in [SEEK_DATA, SEEK_HOLE] {
        fails(
            v.lseek(fh, OS_SIZE as i64, whence),
            libc::ENXIO,
            "offset = size",
        );
        fails(
            v.lseek(fh, OS_SIZE as i64 + 1, whence),
            libc::ENXIO,
            "offset > size",
        );
        fails(
            v.lseek(fh, i64::MAX, whence),
            libc::ENXIO,
            "offset i64::MAX",
        );
        fails(v.lseek(fh, -1, whence), libc::EINVAL, "negative offset");
        fails(v.lseek(fh, i64::MIN, whence), libc::EINVAL, "i64::MIN");
    }
    for whence in [SEEK_SET, SEEK_CUR, SEEK_END, 5, -1, 99] {
        fails(v.lseek(fh, 0, whence), libc::EINVAL, "other whence");
    }
    v.release(fh);

    // An image without holes: data everywhere, the only hole at the end.
    let fh = v
        .open(ino(&v, "c1/zeta/disks/data.img"), libc::O_RDONLY)
        .expect("open")
        .fh;
    let size = t.data_zeta.len() as i64;
    assert_eq!(v.lseek(fh, 12345, SEEK_DATA).expect("data"), 12345);
    assert_eq!(v.lseek(fh, 12345, SEEK_HOLE).expect("hole"), size);
    assert_eq!(v.lseek(fh, size - 1, SEEK_HOLE).expect("hole"), size);
    v.release(fh);

    // Generated files: all data.
    let rp = resolve(&v, "c1/zeta/restore-point.json").attr;
    let fh = v.open(rp.ino, libc::O_RDONLY).expect("open").fh;
    assert_eq!(v.lseek(fh, 7, SEEK_DATA).expect("data"), 7);
    assert_eq!(v.lseek(fh, 7, SEEK_HOLE).expect("hole"), rp.size as i64);
    fails(
        v.lseek(fh, rp.size as i64, SEEK_DATA),
        libc::ENXIO,
        "json at end",
    );
    fails(v.lseek(fh, -5, SEEK_HOLE), libc::EINVAL, "json negative");
    v.release(fh);
}
