//! What may be captured: unsupported sources (other image formats, directories, FIFOs, sockets,
//! devices, empty files) refused at `vm add` and again at each creation, unsupported disk types
//! that must be excluded, uniform scale sets, and block devices as sources.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use rpfs::store::records::{Orchestration, VmRecord};
use rpfs::store::{kind, layout, read_record, write_record};
use serde_json::Value;

use crate::common::cli::{assert_mentions, expect_exit};
use crate::common::guards::LoopDevice;
use crate::common::images::{KIB, MIB, mixed_image, random_image, write_sparse};
use crate::common::store::{TestStore, assert_unchanged, read_image};
use crate::common::sys::{is_root, require_tool, rng, root_or_skip, seed, sh};

/// Every kind of unsupported source, made for real, with the reason rpfs must give.
struct Unsupported {
    label: &'static str,
    path: PathBuf,
    reason: &'static [&'static str],
}

fn unsupported_sources(dir: &Path) -> (Vec<Unsupported>, UnixListener) {
    require_tool("qemu-img");
    fs::create_dir_all(dir).expect("mkdir");
    let mut out = Vec::new();
    for (format, ext, reason) in [
        (
            "qcow2",
            "qcow2",
            &["is a qcow2 image", "not a raw image"][..],
        ),
        ("qed", "qed", &["is a QED image", "not a raw image"][..]),
        ("vmdk", "vmdk", &["is a VMDK image", "not a raw image"][..]),
        ("vdi", "vdi", &["is a VDI image", "not a raw image"][..]),
        ("vhdx", "vhdx", &["is a VHDX image", "not a raw image"][..]),
        ("vpc", "vhd", &["is a VHD", "not a raw image"][..]),
    ] {
        let path = dir.join(format!("disk.{ext}"));
        sh(&format!(
            "qemu-img create -q -f {format} '{}' 8M",
            path.display()
        ));
        out.push(Unsupported {
            label: format,
            path,
            reason,
        });
    }
    let d = dir.join("a-directory");
    fs::create_dir(&d).expect("mkdir");
    out.push(Unsupported {
        label: "directory",
        path: d,
        reason: &["is a directory"],
    });
    let fifo = dir.join("a-fifo");
    sh(&format!("mkfifo '{}'", fifo.display()));
    out.push(Unsupported {
        label: "fifo",
        path: fifo,
        reason: &["is a FIFO"],
    });
    let sock = dir.join("a-socket");
    let listener = UnixListener::bind(&sock).expect("bind socket");
    out.push(Unsupported {
        label: "socket",
        path: sock,
        reason: &["is a socket"],
    });
    out.push(Unsupported {
        label: "character device",
        path: PathBuf::from("/dev/null"),
        reason: &["is a character device"],
    });
    let empty = dir.join("empty.img");
    fs::write(&empty, b"").expect("empty");
    out.push(Unsupported {
        label: "empty file",
        path: empty,
        reason: &["is empty"],
    });
    (out, listener)
}

#[test]
fn unsupported_sources_are_refused_at_vm_add_and_change_nothing() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let good = ts.path("os.img");
    random_image(&good, 16 * KIB as usize, &mut rng);
    let (bad, _listener) = unsupported_sources(&ts.path("bad"));
    let before = ts.snapshot();

    for (i, b) in bad.iter().enumerate() {
        let (_, err) = expect_exit(
            ts.cli()
                .args(["vm", "add", &format!("vm{i}"), "--disk"])
                .arg(format!("os={}", good.display()))
                .arg("--disk")
                .arg(format!("data={}", b.path.display())),
            7,
        );
        assert_mentions(&err, &["disk 'data'", &b.path.display().to_string()]);
        assert_mentions(&err, b.reason);
        assert!(
            !err.contains("disk 'os'"),
            "{}: blames the wrong disk: {err}",
            b.label
        );
        assert_unchanged(&before, &ts.snapshot(), b.label);
    }

    let missing = ts.path("no-such.img");
    let (_, err) = expect_exit(
        ts.cli()
            .args(["vm", "add", "vmx", "--disk"])
            .arg(format!("os={}", good.display()))
            .arg("--disk")
            .arg(format!("data={}", missing.display())),
        1,
    );
    assert_mentions(
        &err,
        &[
            "disk 'data'",
            &missing.display().to_string(),
            "does not exist",
        ],
    );
    assert_unchanged(&before, &ts.snapshot(), "a missing source");

    // The good image alone is accepted: the refusals were about the bad sources.
    expect_exit(
        ts.cli()
            .args(["vm", "add", "vmok", "--disk"])
            .arg(format!("os={}", good.display())),
        0,
    );
}

/// Removes whatever is at `path` (file, symlink, FIFO, socket or directory).
fn remove_any(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).expect("remove dir"),
        Ok(_) => fs::remove_file(path).expect("remove"),
        Err(_) => {}
    }
}

#[test]
fn a_source_replaced_by_an_unsupported_one_is_refused_at_creation_and_commits_nothing() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let os = ts.path("os.img");
    let data = ts.path("data.img");
    random_image(&os, 16 * KIB as usize, &mut rng);
    let data_content = random_image(&data, 32 * KIB as usize, &mut rng);
    let (bad, _listener) = unsupported_sources(&ts.path("bad"));
    expect_exit(
        ts.cli()
            .args(["vm", "add", "vm1", "--disk"])
            .arg(format!("os={}", os.display()))
            .arg("--disk")
            .arg(format!("data={}", data.display())),
        0,
    );
    expect_exit(
        ts.cli().args(["collection", "create", "c1", "--vm", "vm1"]),
        0,
    );
    expect_exit(ts.cli().args(["point", "create", "c1", "p0"]), 0);
    let before = ts.snapshot();

    // `_sock` keeps a socket bound at the source path while creation is attempted.
    for b in &bad {
        remove_any(&data);
        let mut _sock = None;
        match b.label {
            "directory" => fs::create_dir(&data).expect("mkdir"),
            "fifo" => {
                sh(&format!("mkfifo '{}'", data.display()));
            }
            "socket" => _sock = Some(UnixListener::bind(&data).expect("bind")),
            "character device" if is_root() => {
                sh(&format!("mknod '{}' c 1 3", data.display()));
            }
            // Without root no device node can be made; a link to one is refused as a link the
            // path did not have at `vm add`, before what it names is looked at.
            "character device" => std::os::unix::fs::symlink("/dev/null", &data).expect("symlink"),
            _ => {
                // A file of another format renamed over the raw image.
                let tmp = ts.path("incoming");
                fs::copy(&b.path, &tmp).expect("copy");
                fs::rename(&tmp, &data).expect("rename over");
            }
        }
        let (_, err) = expect_exit(ts.cli().args(["point", "create", "c1", "p1"]), 7);
        assert_mentions(&err, &["disk 'data'", &data.display().to_string()]);
        if b.label == "character device" && !is_root() {
            assert_mentions(&err, &["is now a symbolic link"]);
        } else {
            assert_mentions(&err, b.reason);
        }
        assert_unchanged(&before, &ts.snapshot(), b.label);
        drop(_sock);
        remove_any(&data);
        write_sparse(&data, &data_content);
    }

    fs::remove_file(&data).expect("remove");
    let (_, err) = expect_exit(ts.cli().args(["point", "create", "c1", "p1"]), 1);
    assert_mentions(&err, &["disk 'data'", "does not exist"]);
    assert_unchanged(&before, &ts.snapshot(), "a vanished source");

    // With the raw image back, creation works: the refusals were about the sources.
    write_sparse(&data, &data_content);
    expect_exit(ts.cli().args(["point", "create", "c1", "p1"]), 0);
    assert!(read_image(&ts.reopen(), "c1", "p1", "data") == data_content);
    expect_exit(ts.cli().args(["check"]), 0);
}

#[test]
fn ultra_ephemeral_and_shared_disks_must_be_excluded() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let mut contents = BTreeMap::new();
    let mut cmd = ts.cli();
    cmd.args(["vm", "add", "vm1"]);
    for name in ["os", "data", "u", "e", "s"] {
        let p = ts.path(&format!("{name}.img"));
        contents.insert(name, random_image(&p, 16 * KIB as usize, &mut rng));
        cmd.arg("--disk").arg(format!("{name}={}", p.display()));
    }
    cmd.args([
        "--disk-type",
        "u=ultra",
        "--disk-type",
        "e=ephemeral",
        "--disk-type",
        "s=shared",
        "--disk-type",
        "data=managed",
    ]);
    expect_exit(&mut cmd, 0);
    expect_exit(
        ts.cli().args(["collection", "create", "c1", "--vm", "vm1"]),
        0,
    );
    let before = ts.snapshot();

    // Each unsupported disk is named in turn until all three are excluded.
    for (excluded, named) in [
        (&[][..], "u"),
        (&["u"][..], "e"),
        (&["u", "e"][..], "s"),
        (&["e", "s"][..], "u"),
    ] {
        let mut cmd = ts.cli();
        cmd.args(["point", "create", "c1", "p1"]);
        for x in excluded {
            cmd.args(["--exclude-disk", x]);
        }
        let (_, err) = expect_exit(&mut cmd, 7);
        assert_mentions(
            &err,
            &[
                &format!("disk '{named}'"),
                "VM 'vm1'",
                &format!("--exclude-disk {named}"),
            ],
        );
        assert_unchanged(&before, &ts.snapshot(), "a refused creation");
    }

    expect_exit(
        ts.cli().args([
            "point",
            "create",
            "c1",
            "p1",
            "--exclude-disk",
            "u",
            "--exclude-disk",
            "e",
            "--exclude-disk",
            "s",
        ]),
        0,
    );
    let (out, _) = expect_exit(ts.cli().args(["point", "show", "c1/p1", "--json"]), 0);
    let v: Value = serde_json::from_str(&out).expect("json");
    let mut excluded: Vec<String> = v["properties"]["excludeDisks"]
        .as_array()
        .expect("excludeDisks")
        .iter()
        .map(|d| {
            let id = d["id"].as_str().expect("id");
            id.rsplit('/').next().expect("last").to_string()
        })
        .collect();
    excluded.sort();
    assert_eq!(excluded, ["vm1_e", "vm1_s", "vm1_u"]);
    let profile = &v["properties"]["sourceMetadata"]["storageProfile"];
    assert_eq!(profile["osDisk"]["name"], "os");
    let data_disks: Vec<&str> = profile["dataDisks"]
        .as_array()
        .expect("dataDisks")
        .iter()
        .map(|d| d["name"].as_str().expect("name"))
        .collect();
    assert_eq!(data_disks, ["data"]);
    assert_eq!(
        v["properties"]["instanceView"]["diskRestorePoints"]
            .as_array()
            .expect("drps")
            .len(),
        2
    );
    let engine = ts.reopen();
    assert!(read_image(&engine, "c1", "p1", "os") == contents["os"]);
    assert!(read_image(&engine, "c1", "p1", "data") == contents["data"]);
    // An excluded disk cannot be restored from the point.
    let (_, err) = expect_exit(
        ts.cli()
            .args(["restore", "c1/p1", "--disk", "u", "--to"])
            .arg(ts.path("r")),
        3,
    );
    assert_mentions(&err, &["u", "excluded"]);
}

#[test]
fn uniform_scale_set_vms_cannot_have_collections_or_points() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let disk = ts.path("os.img");
    random_image(&disk, 16 * KIB as usize, &mut rng);
    expect_exit(
        ts.cli()
            .args([
                "vm",
                "add",
                "vmu",
                "--orchestration",
                "vmss-uniform",
                "--disk",
            ])
            .arg(format!("os={}", disk.display())),
        0,
    );
    let before = ts.snapshot();
    let (_, err) = expect_exit(
        ts.cli().args(["collection", "create", "cu", "--vm", "vmu"]),
        7,
    );
    assert_mentions(&err, &["VM 'vmu'", "uniform"]);
    assert_unchanged(&before, &ts.snapshot(), "a refused collection");

    // A VM that joins a uniform scale set after its collection was made (its record rewritten
    // through the store's own API): creation is refused too.
    ts.vm("vm1", &[("os", &disk)], "c1");
    ts.create("c1", "p0");
    let storage = ts.engine.storage();
    let id = ts
        .engine
        .catalog()
        .expect("catalog")
        .vm("vm1")
        .expect("vm1")
        .id;
    let key = layout::vm_record(id);
    let mut vm: VmRecord = read_record(&**storage, &key, kind::VM).expect("read vm");
    vm.orchestration = Orchestration::VmssUniform;
    write_record(&**storage, &key, kind::VM, &vm).expect("write vm");
    let before = ts.snapshot();
    let (_, err) = expect_exit(ts.cli().args(["point", "create", "c1", "p1"]), 7);
    assert_mentions(&err, &["VM 'vm1'", "uniform"]);
    assert_unchanged(&before, &ts.snapshot(), "a refused point");
}

#[test]
fn a_block_device_source_reads_back_identical() {
    if !root_or_skip("a_block_device_source_reads_back_identical") {
        return;
    }
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let file = ts.path("backing.img");
    let content = mixed_image(&file, 4 * MIB, &mut rng);
    let dev = LoopDevice::attach_read_only(&file);
    let meta = fs::metadata(&dev.0).expect("device");
    assert!(std::os::unix::fs::FileTypeExt::is_block_device(
        &meta.file_type()
    ));

    expect_exit(
        ts.cli()
            .args(["vm", "add", "vmb", "--disk"])
            .arg(format!("os={}", dev.0)),
        0,
    );
    expect_exit(
        ts.cli().args(["collection", "create", "c1", "--vm", "vmb"]),
        0,
    );
    expect_exit(ts.cli().args(["point", "create", "c1", "p1"]), 0);
    let engine = ts.reopen();
    assert!(read_image(&engine, "c1", "p1", "os") == content);
    let out = ts
        .cli()
        .args(["cat", "c1/p1", "--disk", "os"])
        .output()
        .expect("cat");
    assert!(out.status.success());
    assert!(
        out.stdout == content,
        "cat of the block device point differs"
    );
    let (show, _) = expect_exit(ts.cli().args(["point", "show", "c1/p1", "--json"]), 0);
    let v: Value = serde_json::from_str(&show).expect("json");
    assert_eq!(v["rpfs"]["disks"][0]["sizeBytes"], content.len() as u64);
    assert_eq!(v["rpfs"]["disks"][0]["source"], dev.0.as_str());
}
