//! The command line: exact exit codes and the substance of every refusal (what failed, why, what
//! to do), stores left unchanged by refusals, and the Azure-shaped JSON outputs.

use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::common::cli::{assert_mentions, cat_disk, cli_json, expect_exit, point_names};
use crate::common::images::{KIB, MIB, change_blocks, mixed_image, random_image};
use crate::common::store::{TestStore, assert_unchanged, open, read_image, snapshot};
use crate::common::sys::{rng, seed};

/// The rpfs binary with no store configured.
fn rpfs() -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("rpfs").expect("rpfs binary");
    c.env_remove("RPFS_STORE").env_remove("RPFS_LOG");
    c
}

/// `rpfs vm add NAME --disk D=P …`.
fn add_vm(ts: &TestStore, name: &str, disks: &[(&str, &Path)]) {
    let mut cmd = ts.cli();
    cmd.args(["vm", "add", name]);
    for (d, p) in disks {
        cmd.arg("--disk").arg(format!("{d}={}", p.display()));
    }
    expect_exit(&mut cmd, 0);
}

/// A store with VM `vm1` (one 64 KiB disk `os`), collection `c1` and point `c1/p1`.
fn store_with_point(rng: &mut rand::rngs::StdRng) -> (TestStore, Vec<u8>) {
    let ts = TestStore::new(4096);
    let disk = ts.path("os.img");
    let content = random_image(&disk, 64 * KIB as usize, rng);
    add_vm(&ts, "vm1", &[("os", &disk)]);
    expect_exit(
        ts.cli().args(["collection", "create", "c1", "--vm", "vm1"]),
        0,
    );
    expect_exit(ts.cli().args(["point", "create", "c1", "p1"]), 0);
    (ts, content)
}

#[test]
fn commands_without_a_store_say_to_run_init() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).expect("mkdir");
    let absent = dir.path().join("absent");
    let img = dir.path().join("os.img");
    fs::write(&img, [1u8; 4096]).expect("image");
    let to = dir.path().join("out");
    let img_arg = format!("os={}", img.display());
    let commands: Vec<Vec<&str>> = vec![
        vec!["vm", "list"],
        vec!["vm", "show", "vm1"],
        vec!["vm", "add", "vm1", "--disk", &img_arg],
        vec!["collection", "list"],
        vec!["collection", "create", "c1", "--vm", "vm1"],
        vec!["point", "list"],
        vec!["point", "create", "c1", "p1"],
        vec!["point", "delete", "c1/p1"],
        vec!["restore", "c1/p1", "--to", to.to_str().expect("utf-8")],
        vec!["cat", "c1/p1", "--disk", "os"],
        vec!["check"],
    ];
    for store in [&empty, &absent] {
        for args in &commands {
            let (_, err) = expect_exit(rpfs().arg("--store").arg(store).args(args), 3);
            assert_mentions(
                &err,
                &["no rpfs store", &store.display().to_string(), "rpfs init"],
            );
        }
        // The same through $RPFS_STORE.
        let (_, err) = expect_exit(rpfs().env("RPFS_STORE", store).args(["vm", "list"]), 3);
        assert_mentions(&err, &["rpfs init"]);
    }
    assert_eq!(
        fs::read_dir(&empty).expect("list").count(),
        0,
        "a refused command wrote"
    );
    assert!(
        !absent.exists(),
        "a refused command created the store directory"
    );
    assert!(!to.exists(), "a refused restore created its target");
}

/// `rpfs --store STORE init --block-size SIZE [--format F]`.
fn init_at(store: &Path, size: &str, format: Option<&str>) -> assert_cmd::Command {
    let mut cmd = rpfs();
    cmd.arg("--store")
        .arg(store)
        .args(["init", "--block-size", size]);
    if let Some(f) = format {
        cmd.args(["--format", f]);
    }
    cmd
}

#[test]
fn init_refuses_existing_stores_non_empty_directories_and_bad_block_sizes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let (out, _) = expect_exit(rpfs().arg("--store").arg(&store).arg("init"), 0);
    assert!(out.contains(&store.display().to_string()), "{out}");
    assert_eq!(
        open(&store).header().block_size,
        64 * 1024,
        "default block size"
    );
    let before = snapshot(&store);
    let (_, err) = expect_exit(rpfs().arg("--store").arg(&store).arg("init"), 4);
    assert_mentions(&err, &["store", "already exists"]);
    assert_unchanged(&before, &snapshot(&store), "a second init");

    let other = dir.path().join("other");
    fs::create_dir(&other).expect("mkdir");
    fs::write(other.join("notes.txt"), b"mine").expect("write");
    let (_, err) = expect_exit(rpfs().arg("--store").arg(&other).arg("init"), 2);
    assert_mentions(&err, &["not empty", "notes.txt"]);
    let names: Vec<_> = fs::read_dir(&other)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["notes.txt"]);
    assert_eq!(fs::read(other.join("notes.txt")).expect("read"), b"mine");

    assert_eq!(
        open(&store).header().version,
        rpfs::store::format::PAGED,
        "default format"
    );

    // Format 2 (the default) takes frame sizes from 4 KiB to 64 KiB, format 1 blocks up to 4 MiB.
    for (format, largest) in [(None, "64 KiB"), (Some("1"), "4 MiB")] {
        for bad in ["3000", "8M", "2K", "0"] {
            let target = dir.path().join(format!("bs-{format:?}-{bad}"));
            let (_, err) = expect_exit(&mut init_at(&target, bad, format), 2);
            assert_mentions(&err, &["block size", "power of two", "4 KiB", largest]);
            assert!(
                !target.exists(),
                "--block-size {bad} (format {format:?}): created {}",
                target.display()
            );
        }
    }
    // A block size only format 1 takes: refused by the default, saying how to get it.
    let target = dir.path().join("bs-128K");
    let (_, err) = expect_exit(&mut init_at(&target, "128K", None), 2);
    assert_mentions(
        &err,
        &["block size", "64 KiB", "format-2", "--format 1", "4 MiB"],
    );
    assert!(!target.exists(), "--block-size 128K: created a store");

    for (good, format, bytes, version) in [
        ("4K", None, 4096, 2),
        ("65536", None, 65536, 2),
        ("4M", Some("1"), 4 << 20, 1),
        ("4K", Some("1"), 4096, 1),
    ] {
        let target = dir.path().join(format!("bs-{good}-{format:?}"));
        expect_exit(&mut init_at(&target, good, format), 0);
        let engine = open(&target);
        let header = engine.header();
        assert_eq!(
            (header.block_size, header.version),
            (bytes, version),
            "--block-size {good} --format {format:?}"
        );
    }
}

#[test]
fn invalid_names_are_refused_with_the_reason_and_change_nothing() {
    let mut rng = rng(seed());
    let (ts, _) = store_with_point(&mut rng);
    let disk = ts.path("os.img");
    let disk_arg = format!("os={}", disk.display());
    let long = "n".repeat(81);
    let before = ts.snapshot();
    let cases = [
        ("a b", "' ' is not allowed"),
        ("-x", "must start with a letter or digit"),
        ("vm.json", "must not end in .json"),
        ("latest", "reserved"),
        (long.as_str(), "at most 80 characters"),
    ];
    for (name, reason) in cases {
        // `--disk=VALUE` so a value with a leading '-' is taken as the value.
        let bad_disk = format!("--disk={name}={}", disk.display());
        // `--` so a leading '-' reaches rpfs as a name, not an option.
        let attempts: [(&str, Vec<&str>); 5] = [
            ("VM", vec!["vm", "add", "--disk", &disk_arg, "--", name]),
            ("VM", vec!["vm", "rename", "--", "vm1", name]),
            (
                "collection",
                vec!["collection", "create", "--vm", "vm1", "--", name],
            ),
            ("restore point", vec!["point", "create", "--", "c1", name]),
            ("disk", vec!["vm", "add", "vm2", &bad_disk]),
        ];
        for (what, args) in &attempts {
            let (_, err) = expect_exit(ts.cli().args(args), 2);
            assert_mentions(&err, &[&format!("invalid {what} name"), reason]);
            assert_unchanged(&before, &ts.snapshot(), &format!("{args:?}"));
        }
    }
    // 80 characters is still a name.
    let longest = "m".repeat(80);
    expect_exit(
        ts.cli()
            .args(["collection", "create", &longest, "--vm", "vm1"]),
        0,
    );
    expect_exit(ts.cli().args(["point", "create", &longest, &longest]), 0);
    expect_exit(ts.cli().args(["vm", "rename", "vm1", &longest]), 0);
    assert!(point_names(&ts).contains(&format!("{longest}/{longest}")));
}

#[test]
fn duplicates_are_refused_with_exit_4() {
    let mut rng = rng(seed());
    let (ts, _) = store_with_point(&mut rng);
    let disk = ts.path("os.img");
    add_vm(&ts, "vm2", &[("os", &disk)]);
    let before = ts.snapshot();
    let disk_arg = format!("os={}", disk.display());
    for (args, parts) in [
        (
            vec!["vm", "add", "vm1", "--disk", &disk_arg],
            vec!["VM 'vm1'", "already exists"],
        ),
        (
            vec!["vm", "rename", "vm2", "vm1"],
            vec!["VM 'vm1'", "already exists"],
        ),
        (
            vec!["collection", "create", "c1", "--vm", "vm1"],
            vec!["collection 'c1'", "already exists"],
        ),
        // Collection names are unique across the store, not per VM.
        (
            vec!["collection", "create", "c1", "--vm", "vm2"],
            vec!["collection 'c1'", "already exists"],
        ),
        (
            vec!["point", "create", "c1", "p1"],
            vec!["restore point 'c1/p1'", "already exists"],
        ),
    ] {
        let (_, err) = expect_exit(ts.cli().args(&args), 4);
        assert_mentions(&err, &parts);
        assert_unchanged(&before, &ts.snapshot(), &format!("{args:?}"));
    }
    // Point names are per collection.
    expect_exit(
        ts.cli().args(["collection", "create", "c2", "--vm", "vm1"]),
        0,
    );
    expect_exit(ts.cli().args(["point", "create", "c2", "p1"]), 0);
    assert_eq!(point_names(&ts), ["c1/p1", "c2/p1"]);
}

#[test]
fn missing_things_are_not_found_with_exit_3() {
    let mut rng = rng(seed());
    let (ts, _) = store_with_point(&mut rng);
    let to = ts.path("restored");
    let to_s = to.display().to_string();
    let before = ts.snapshot();
    for (args, parts) in [
        (vec!["vm", "show", "nope"], vec!["VM 'nope'", "not found"]),
        (
            vec!["vm", "rename", "nope", "x"],
            vec!["VM 'nope'", "not found"],
        ),
        (vec!["vm", "remove", "nope"], vec!["VM 'nope'", "not found"]),
        (
            vec!["collection", "show", "nope"],
            vec!["collection 'nope'", "not found"],
        ),
        (
            vec!["collection", "delete", "nope"],
            vec!["collection 'nope'", "not found"],
        ),
        (
            vec!["collection", "create", "c9", "--vm", "nope"],
            vec!["VM 'nope'", "not found"],
        ),
        (
            vec!["point", "list", "nope"],
            vec!["collection 'nope'", "not found"],
        ),
        (
            vec!["point", "show", "c1/nope"],
            vec!["restore point 'c1/nope'", "not found"],
        ),
        (
            vec!["point", "show", "nope/p1"],
            vec!["collection 'nope'", "not found"],
        ),
        (
            vec!["point", "delete", "c1/nope"],
            vec!["restore point 'c1/nope'", "not found"],
        ),
        (
            vec!["point", "create", "nope", "p2"],
            vec!["collection 'nope'", "not found"],
        ),
        (
            vec!["point", "create", "c1", "p2", "--exclude-disk", "nodisk"],
            vec!["nodisk", "not found"],
        ),
        (
            vec!["restore", "c1/nope", "--to", &to_s],
            vec!["restore point 'c1/nope'", "not found"],
        ),
        (
            vec!["restore", "c1/p1", "--disk", "nodisk", "--to", &to_s],
            vec!["nodisk", "not found"],
        ),
        (
            vec!["cat", "c1/nope", "--disk", "os"],
            vec!["restore point 'c1/nope'", "not found"],
        ),
        (
            vec!["cat", "c1/p1", "--disk", "nodisk"],
            vec!["nodisk", "not found"],
        ),
    ] {
        let (out, err) = expect_exit(ts.cli().args(&args), 3);
        assert_mentions(&err, &parts);
        assert!(out.is_empty(), "{args:?} wrote to stdout: {out}");
        assert_unchanged(&before, &ts.snapshot(), &format!("{args:?}"));
    }
    assert!(!to.exists(), "a refused restore created {}", to.display());
}

#[test]
fn point_paths_must_be_collection_slash_name() {
    let mut rng = rng(seed());
    let (ts, _) = store_with_point(&mut rng);
    let to = ts.path("restored");
    let to_s = to.display().to_string();
    let before = ts.snapshot();
    for path in ["c1", "c1/", "/p1", "c1/p1/x"] {
        for args in [
            vec!["point", "show", path],
            vec!["point", "delete", path],
            vec!["restore", path, "--to", &to_s],
            vec!["cat", path, "--disk", "os"],
        ] {
            let (_, err) = expect_exit(ts.cli().args(&args), 2);
            assert_mentions(&err, &[path, "COLLECTION/NAME"]);
        }
    }
    assert_unchanged(&before, &ts.snapshot(), "malformed point paths");
    assert!(!to.exists());
}

#[test]
fn vm_remove_and_collection_delete_are_refused_while_points_exist() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let disk = ts.path("os.img");
    let mut content = random_image(&disk, 128 * KIB as usize, &mut rng);
    add_vm(&ts, "vm1", &[("os", &disk)]);
    expect_exit(
        ts.cli().args(["collection", "create", "c1", "--vm", "vm1"]),
        0,
    );
    expect_exit(
        ts.cli().args(["collection", "create", "c2", "--vm", "vm1"]),
        0,
    );
    let empty = ts.snapshot();
    let c1_record: Vec<String> = {
        let (out, _) = expect_exit(ts.cli().args(["collection", "show", "c1", "--json"]), 0);
        let v: Value = serde_json::from_str(&out).expect("json");
        let id = v["properties"]["restorePointCollectionId"]
            .as_str()
            .expect("id")
            .to_string();
        empty.keys().filter(|k| k.contains(&id)).cloned().collect()
    };
    assert_eq!(c1_record.len(), 1, "{c1_record:?}");

    for p in ["p1", "p2", "p3"] {
        expect_exit(ts.cli().args(["point", "create", "c1", p]), 0);
        change_blocks(&disk, &mut content, 4096, 0.3, &mut rng);
    }
    let full = ts.snapshot();
    let (_, err) = expect_exit(ts.cli().args(["vm", "remove", "vm1"]), 8);
    assert_mentions(
        &err,
        &["VM 'vm1'", "3 restore points", "c1", "delete them first"],
    );
    let (_, err) = expect_exit(ts.cli().args(["collection", "delete", "c1"]), 8);
    assert_mentions(&err, &["collection 'c1'", "3 restore points", "--force"]);
    assert_unchanged(&full, &ts.snapshot(), "refused removals");

    let full_size = ts.size();
    let (out, _) = expect_exit(ts.cli().args(["collection", "delete", "c1", "--force"]), 0);
    assert_mentions(&out, &["c1", "3 restore points", "freed"]);
    assert!(point_names(&ts).is_empty());
    let (_, err) = expect_exit(ts.cli().args(["collection", "show", "c1"]), 3);
    assert_mentions(&err, &["collection 'c1'"]);
    // Everything the points stored is gone: the store is as it was before them, minus c1.
    let mut expected = empty.clone();
    expected.remove(&c1_record[0]);
    assert_unchanged(&expected, &ts.snapshot(), "collection delete --force");
    assert!(
        ts.size() < full_size / 2,
        "{} of {full_size} bytes left",
        ts.size()
    );
    expect_exit(ts.cli().args(["check"]), 0);

    // Now the VM can go, with its empty collection c2.
    expect_exit(ts.cli().args(["vm", "remove", "vm1"]), 0);
    let vms = cli_json(&ts, &["vm", "list", "--json"]);
    assert_eq!(vms.as_array().expect("array").len(), 0);
    expect_exit(ts.cli().args(["collection", "show", "c2"]), 3);
    expect_exit(ts.cli().args(["check"]), 0);
}

#[test]
fn vm_rename_keeps_collections_points_and_the_incremental_chain() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let disk = ts.path("os.img");
    let mut content = random_image(&disk, 64 * KIB as usize, &mut rng);
    add_vm(&ts, "vm1", &[("os", &disk)]);
    expect_exit(
        ts.cli().args(["collection", "create", "c1", "--vm", "vm1"]),
        0,
    );
    expect_exit(ts.cli().args(["point", "create", "c1", "p1"]), 0);
    change_blocks(&disk, &mut content, 4096, 0.25, &mut rng);
    expect_exit(ts.cli().args(["point", "create", "c1", "p2"]), 0);
    let vm_id = cli_json(&ts, &["vm", "show", "vm1", "--json"])["id"].clone();
    let p2 = cli_json(&ts, &["point", "show", "c1/p2", "--json"]);
    assert_eq!(p2["properties"]["sourceMetadata"]["vmId"], vm_id);

    let (out, _) = expect_exit(ts.cli().args(["vm", "rename", "vm1", "web01"]), 0);
    assert_mentions(&out, &["vm1", "web01"]);
    expect_exit(ts.cli().args(["vm", "show", "vm1"]), 3);
    assert_eq!(
        cli_json(&ts, &["vm", "show", "web01", "--json"])["id"],
        vm_id
    );
    assert_eq!(point_names(&ts), ["c1/p1", "c1/p2"]);
    for p in ["c1/p1", "c1/p2"] {
        let v = cli_json(&ts, &["point", "show", p, "--json"]);
        assert_eq!(v["properties"]["sourceMetadata"]["vmId"], vm_id, "{p}");
        assert_eq!(v["rpfs"]["vmName"], "web01", "{p}");
    }
    let c1 = cli_json(&ts, &["collection", "show", "c1", "--json"]);
    let source = c1["properties"]["source"]["id"]
        .as_str()
        .expect("source id");
    assert!(source.ends_with("/virtualMachines/web01"), "{source}");

    // The chain goes on: the next point stores exactly the changed blocks.
    let changed = change_blocks(&disk, &mut content, 4096, 0.125, &mut rng);
    expect_exit(ts.cli().args(["point", "create", "c1", "p3"]), 0);
    let p3 = cli_json(&ts, &["point", "show", "c1/p3", "--json"]);
    assert_eq!(p3["rpfs"]["disks"][0]["newBlocks"], changed.len() as u64);
    assert_eq!(p3["properties"]["sourceMetadata"]["vmId"], vm_id);
    assert!(read_image(&ts.reopen(), "c1", "p3", "os") == content);
}

#[test]
fn restore_never_overwrites_and_writes_nothing_when_refused() {
    let mut rng = rng(seed());
    let (ts, content) = store_with_point(&mut rng);
    let to = ts.path("r");
    let (out, _) = expect_exit(ts.cli().args(["restore", "c1/p1", "--to"]).arg(&to), 0);
    assert!(out.contains("c1/p1"), "{out}");
    assert!(fs::read(to.join("os.img")).expect("os.img") == content);
    let resource: Value =
        serde_json::from_slice(&fs::read(to.join("restore-point.json")).expect("json"))
            .expect("restore-point.json");
    assert_eq!(resource["name"], "p1");

    // Into the same directory again: every file exists.
    let before = snapshot(&to);
    let (_, err) = expect_exit(ts.cli().args(["restore", "c1/p1", "--to"]).arg(&to), 4);
    assert_mentions(&err, &["already exists", "never overwrites"]);
    assert_unchanged(&before, &snapshot(&to), "a refused restore");

    // Any one existing target refuses the whole restore, before anything is written.
    for existing in ["os.img", "vm-config", "restore-point.json"] {
        let dir = ts.path(&format!("r-{existing}"));
        fs::create_dir(&dir).expect("mkdir");
        fs::write(dir.join(existing), b"keep me").expect("write");
        let (_, err) = expect_exit(ts.cli().args(["restore", "c1/p1", "--to"]).arg(&dir), 4);
        assert_mentions(
            &err,
            &[
                &dir.join(existing).display().to_string(),
                "never overwrites",
            ],
        );
        let names: Vec<_> = fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [existing], "a refused restore wrote files");
        assert_eq!(fs::read(dir.join(existing)).expect("read"), b"keep me");
    }
}

#[test]
fn cat_streams_exactly_the_image_bytes_to_a_pipe() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let disk = ts.path("os.img");
    // Not a multiple of the block size, with holes and zero runs.
    let mut content = mixed_image(&disk, 3 * MIB + 123, &mut rng);
    let data = ts.path("data.img");
    let data_content = random_image(&data, 40 * KIB as usize + 1, &mut rng);
    add_vm(&ts, "vm1", &[("os", &disk), ("data", &data)]);
    expect_exit(
        ts.cli().args(["collection", "create", "c1", "--vm", "vm1"]),
        0,
    );
    expect_exit(ts.cli().args(["point", "create", "c1", "p1"]), 0);
    let first = content.clone();
    change_blocks(&disk, &mut content, 4096, 0.1, &mut rng);
    expect_exit(ts.cli().args(["point", "create", "c1", "p2"]), 0);

    for (point, disk, want) in [
        ("c1/p1", "os", &first),
        ("c1/p2", "os", &content),
        ("c1/p2", "data", &data_content),
    ] {
        let out = cat_disk(&mut ts.cli(), point, disk);
        assert_eq!(out.len(), want.len(), "{point} {disk}");
        assert!(out == *want, "cat {point} --disk {disk} differs");
    }
}

#[test]
fn json_outputs_have_the_azure_shape() {
    let mut rng = rng(seed());
    let ts = TestStore::new(4096);
    let os = ts.path("os.img");
    let data = ts.path("data.img");
    let mut os_content = random_image(&os, 32 * KIB as usize, &mut rng);
    random_image(&data, 16 * KIB as usize, &mut rng);
    add_vm(&ts, "vm1", &[("os", &os), ("data", &data)]);
    expect_exit(
        ts.cli().args([
            "collection",
            "create",
            "c1",
            "--vm",
            "vm1",
            "--location",
            "westeurope",
        ]),
        0,
    );
    // Names out of alphabetical order: collections list their points in creation order.
    let order = ["zeta", "alpha", "mid"];
    let mut changed = Vec::new();
    for p in order {
        expect_exit(ts.cli().args(["point", "create", "c1", p]), 0);
        changed.push(change_blocks(&os, &mut os_content, 4096, 0.25, &mut rng).len() as u64);
    }
    let vm = cli_json(&ts, &["vm", "show", "vm1", "--json"]);
    let vm_id = vm["id"].as_str().expect("vm id").to_string();
    assert_eq!(vm["name"], "vm1");
    let vms = cli_json(&ts, &["vm", "list", "--json"]);
    assert_eq!(vms[0]["id"], vm_id.as_str());

    let check_point = |p: &Value, name: &str| {
        assert_eq!(p["name"], name);
        assert_eq!(
            p["type"],
            "Microsoft.Compute/restorePointCollections/restorePoints"
        );
        let id = p["id"].as_str().expect("id");
        assert!(id.starts_with("/subscriptions/"), "{id}");
        assert!(
            id.ends_with(&format!("/restorePointCollections/c1/restorePoints/{name}")),
            "{id}"
        );
        let props = &p["properties"];
        assert_eq!(props["provisioningState"], "Succeeded");
        assert_eq!(props["consistencyMode"], "CrashConsistent");
        assert_eq!(props["sourceMetadata"]["vmId"], vm_id.as_str());
        assert_eq!(props["sourceMetadata"]["location"], "westeurope");
        assert_eq!(
            props["sourceMetadata"]["storageProfile"]["osDisk"]["name"],
            "os"
        );
        assert_eq!(
            props["sourceMetadata"]["storageProfile"]["dataDisks"][0]["name"],
            "data"
        );
        assert_eq!(
            props["sourceMetadata"]["storageProfile"]["dataDisks"][0]["lun"],
            0
        );
        assert!(props["timeCreated"].is_string());
        let drps = props["instanceView"]["diskRestorePoints"]
            .as_array()
            .expect("diskRestorePoints");
        assert_eq!(drps.len(), 2);
        for d in drps {
            assert_eq!(d["replicationStatus"]["completionPercent"], 100, "{d}");
            let drp_id = d["id"].as_str().expect("drp id");
            assert!(drp_id.starts_with(id), "{drp_id} not under {id}");
        }
        assert_eq!(
            props["excludeDisks"]
                .as_array()
                .expect("excludeDisks")
                .len(),
            0
        );
    };
    for name in order {
        check_point(
            &cli_json(&ts, &["point", "show", &format!("c1/{name}"), "--json"]),
            name,
        );
    }
    let list = cli_json(&ts, &["point", "list", "--json"]);
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 3);
    for (p, name) in list.iter().zip(order) {
        check_point(p, name);
    }
    // The first point stores every block; later ones only what changed before them.
    assert_eq!(list[0]["rpfs"]["disks"][0]["newBlocks"], 32 * KIB / 4096);
    assert_eq!(list[1]["rpfs"]["disks"][0]["newBlocks"], changed[0]);
    assert_eq!(list[2]["rpfs"]["disks"][0]["newBlocks"], changed[1]);
    assert_eq!(
        list[1]["rpfs"]["disks"][1]["newBlocks"], 0,
        "unchanged data disk"
    );

    let c = cli_json(&ts, &["collection", "show", "c1", "--json"]);
    assert_eq!(c["name"], "c1");
    assert_eq!(c["type"], "Microsoft.Compute/restorePointCollections");
    assert_eq!(c["location"], "westeurope");
    assert_eq!(c["properties"]["provisioningState"], "Succeeded");
    let cid = c["id"].as_str().expect("collection id");
    assert!(cid.ends_with("/restorePointCollections/c1"), "{cid}");
    let source = c["properties"]["source"]["id"].as_str().expect("source");
    assert!(source.ends_with("/virtualMachines/vm1"), "{source}");
    let points = c["properties"]["restorePoints"].as_array().expect("points");
    let names: Vec<&str> = points
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, order);
    for (p, name) in points.iter().zip(order) {
        check_point(p, name);
    }
    let all = cli_json(&ts, &["collection", "list", "--json"]);
    assert_eq!(all.as_array().expect("array").len(), 1);
    assert_eq!(all[0]["id"], cid);
}
