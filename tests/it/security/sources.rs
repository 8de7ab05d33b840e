//! Security tests: sources (see the module list in `security`). Root's `point create` reads
//! whole disks and configuration files from paths a VM names; the attacker (nobody) must not
//! read a reflink clone of a disk while it is made, nor make a capture read another file by
//! swapping a symbolic link in for a source or a configuration file in a directory it controls.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::RngCore;
use rpfs::engine::create::{Consistency, CreateRequest};
use rpfs::engine::progress::Silent;
use rpfs::engine::vms::VmSpec;
use rpfs::store::records::ConfigSource;

use crate::common::attacker::{NOBODY, as_nobody, open_up, umask_022};
use crate::common::cli::{assert_mentions, expect_exit, point_names};
use crate::common::guards::{KillOnDrop, LoopDevice, Mounted};
use crate::common::images::{KIB, MIB, random_image, write_sparse};
use crate::common::store::{TestStore, read_image, snapshot};
use crate::common::sys::{require_tool, rng, root_or_skip, seed};

/// The attacker of the clone window: watches a directory with inotify and opens every file
/// created in it (or seen by a listing loop racing beside it) for reading; for each file it
/// manages to open, it waits for the clone to be filled and prints `opened NAME LEN HEX` (the
/// bytes it read, and the first 32 of them). Prints `ready` once it watches.
const WATCHER: &str = r#"
import ctypes, os, sys, threading
d = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
IN_CREATE, IN_MOVED_TO = 0x100, 0x80
if fd < 0 or libc.inotify_add_watch(fd, d.encode(), IN_CREATE | IN_MOVED_TO) < 0:
    print("inotify failed", ctypes.get_errno(), flush=True)
    sys.exit(1)
tried = set()
lock = threading.Lock()
def attempt(name):
    try:
        f = os.open(os.path.join(d, name), os.O_RDONLY)
    except OSError:
        return
    with lock:
        if name in tried:
            os.close(f)
            return
        tried.add(name)
    threading.Timer(0.5, report, (name, f)).start()
def report(name, f):
    data = b""
    while True:
        b = os.read(f, 1 << 20)
        if not b:
            break
        data += b
    os.close(f)
    print("opened", name, len(data), data[:32].hex(), flush=True)
def listing():
    while True:
        for name in os.listdir(d):
            if name != "os.img":
                attempt(name)
threading.Thread(target=listing, daemon=True).start()
print("ready", flush=True)
while True:
    events = os.read(fd, 65536)
    i = 0
    while i < len(events):
        # struct inotify_event: wd, mask, cookie, len (4 bytes each), then the name.
        ln = int.from_bytes(events[i + 12:i + 16], "little")
        attempt(events[i + 16:i + 16 + ln].rstrip(b"\0").decode())
        i += 16 + ln
"#;

/// A reflink clone of a 0600 source disk is never open to another user: nobody, watching the
/// source's directory with inotify and a listing loop, tries to open every file that appears
/// there while root creates points cloned on XFS, and opens none. (Before the fix the clone was
/// created 0644, filled, then made 0600: nobody opened it and read the disk.)
#[test]
fn reflink_clone_is_never_open_to_other_users() {
    if !root_or_skip("reflink_clone_is_never_open_to_other_users") {
        return;
    }
    require_tool("python3");
    umask_022();
    let mut r = rng(seed());
    let ts = TestStore::new(64 * KIB as u32);
    let mnt = ts.path("mnt");
    let _mount = Mounted::xfs_with_reflinks(&ts.path("xfs.img"), &mnt, "512M");
    // The source directory is root's and 0755, as /var/lib/libvirt/images is: anyone may list
    // and watch it; the disk in it is 0600.
    let src_dir = mnt.join("vms");
    fs::create_dir(&src_dir).expect("source dir");
    open_up(&src_dir);
    let disk = src_dir.join("os.img");
    // Fragmented (4 KiB of data every 8 KiB, thousands of extents), so that cloning it takes a
    // while, as cloning a real disk image does: that is the window raced.
    let mut content = vec![0u8; 32 * MIB as usize];
    for chunk in content.chunks_mut(8 * KIB as usize) {
        r.fill_bytes(&mut chunk[..4 * KIB as usize]);
    }
    write_sparse(&disk, &content);
    fs::set_permissions(&disk, fs::Permissions::from_mode(0o600)).expect("chmod 0600");
    fs::File::open(&disk)
        .and_then(|f| f.sync_all())
        .expect("sync source");
    ts.engine
        .add_vm(&VmSpec {
            name: "vm1".into(),
            disks: vec![("os".into(), disk.clone())],
            ..VmSpec::default()
        })
        .expect("add vm");
    ts.engine.create_collection("c", "vm1", None).expect("c");

    let watcher = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            WATCHER,
        ])
        .arg(&src_dir)
        .current_dir("/")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the watcher");
    let mut watcher = KillOnDrop::new(watcher);
    let stdout = watcher
        .as_mut()
        .and_then(|c| c.stdout.take())
        .expect("watcher stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    assert_eq!(first, "ready", "the watcher did not start");

    for i in 0..6 {
        let out = ts
            .engine
            .create_point(
                &CreateRequest {
                    collection: "c".into(),
                    name: format!("p{i}"),
                    exclude: vec![],
                    consistency: Some(Consistency::Crash),
                },
                &Silent,
            )
            .expect("create");
        assert_eq!(
            out.cloned_disks,
            ["os"],
            "point p{i} was not captured by a clone"
        );
    }
    // Let the watcher report what it opened during the last creations, then stop it.
    std::thread::sleep(Duration::from_secs(1));
    if let Some(mut c) = watcher.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let opened: Vec<String> = lines.map_while(|l| l.ok()).collect();
    let leaked: Vec<&String> = opened
        .iter()
        .filter(|l| {
            l.split(' ')
                .nth(3)
                .is_some_and(|hex| !hex.is_empty() && content_hex(&content[..32]) == hex)
        })
        .collect();
    assert!(
        opened.is_empty(),
        "nobody opened files root's capture made beside the 0600 source ({} of them held the \
         disk's data):\n{}",
        leaked.len(),
        opened.join("\n")
    );
    assert_eq!(
        read_image(&ts.engine, "c", "p5", "os"),
        content,
        "the clone captured the disk"
    );
    // Nothing is left beside the source.
    let mut left: Vec<_> = fs::read_dir(&src_dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    left.sort();
    assert_eq!(left, ["os.img"]);
}

fn content_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A directory `name` in the test's directory owned by nobody (a directory another user
/// controls), with the directories above it open as real ones are.
fn nobodys_dir(ts: &TestStore, name: &str) -> PathBuf {
    let d = ts.path(name);
    fs::create_dir(&d).expect("mkdir");
    open_up(&d);
    nix::unistd::chown(
        &d,
        Some(nix::unistd::Uid::from_raw(NOBODY)),
        Some(nix::unistd::Gid::from_raw(NOBODY)),
    )
    .expect("chown nobody");
    d
}

/// A file only root may read, holding `content`.
fn roots_secret(path: &Path, content: &[u8]) {
    fs::write(path, content).expect("secret");
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod 0600");
}

/// Whether any file of the store holds `needle`.
fn store_holds(ts: &TestStore, needle: &[u8]) -> bool {
    snapshot(&ts.store_path())
        .values()
        .any(|v| v.windows(needle.len()).any(|w| w == needle))
}

/// Adds VM `vm1` with `args` (its disks and configuration), then collection `c` and its first
/// point `p1`.
fn add_vm_with_a_point(ts: &TestStore, args: &[String]) {
    expect_exit(ts.cli().args(["vm", "add", "vm1"]).args(args), 0);
    expect_exit(
        ts.cli().args(["collection", "create", "c", "--vm", "vm1"]),
        0,
    );
    expect_exit(ts.cli().args(["point", "create", "c", "p1"]), 0);
}

/// Runs `swap` as nobody in `dir`; the next creation (`p2`) must then be refused (exit 7) with a
/// message naming each of `names`, and leave `c/p1` the only point.
fn swap_then_refused(ts: &TestStore, dir: &Path, swap: &str, names: &[&str]) {
    let out = as_nobody(dir, swap);
    assert!(out.status.success(), "nobody could not swap: {out:?}");
    let (_, err) = expect_exit(ts.cli().args(["point", "create", "c", "p2"]), 7);
    assert_mentions(&err, names);
    assert_eq!(point_names(ts), ["c/p1"]);
}

/// A source disk in a directory nobody controls, swapped by nobody for a symbolic link to a
/// file only root may read between `vm add` and `point create`: the creation is refused, naming
/// the VM, the disk and the reason, and no point holds the file.
#[test]
fn a_source_swapped_for_a_symbolic_link_is_refused() {
    if !root_or_skip("a_source_swapped_for_a_symbolic_link_is_refused") {
        return;
    }
    umask_022();
    let mut r = rng(seed());
    let ts = TestStore::new(64 * KIB as u32);
    let os = ts.path("os.img");
    random_image(&os, 256 * KIB as usize, &mut r);
    let shared = nobodys_dir(&ts, "shared");
    let data1 = shared.join("data1.img");
    random_image(&data1, 256 * KIB as usize, &mut r);
    let secret_path = ts.path("secret.img");
    let secret = random_image(&secret_path, 256 * KIB as usize, &mut r);
    roots_secret(&secret_path, &secret);
    add_vm_with_a_point(
        &ts,
        &[
            "--disk".into(),
            format!("os={}", os.display()),
            "--disk".into(),
            format!("data1={}", data1.display()),
        ],
    );
    swap_then_refused(
        &ts,
        &shared,
        &format!(
            "rm -f data1.img && ln -s '{}' data1.img",
            secret_path.display()
        ),
        &[
            "disk 'data1'",
            &data1.display().to_string(),
            "is now a symbolic link",
            "it was not when VM 'vm1' was added",
        ],
    );
    assert!(read_image(&ts.engine, "c", "p1", "data1") != secret);

    // Swapped back for a regular file (a copy, with another inode): captured again.
    let back = as_nobody(
        &shared,
        &format!(
            "rm data1.img && head -c {} /dev/zero > data1.img",
            256 * KIB
        ),
    );
    assert!(back.status.success(), "{back:?}");
    expect_exit(ts.cli().args(["point", "create", "c", "p3"]), 0);
    assert_eq!(
        read_image(&ts.engine, "c", "p3", "data1"),
        vec![0u8; 256 * KIB as usize]
    );
}

/// One level up: the directory holding a source, in a directory nobody controls, swapped by
/// nobody for a symbolic link to a directory of root's holding a file of the same name. The last
/// component is no link, but the path now goes through one it did not have at `vm add`: refused.
#[test]
fn a_directory_on_a_source_path_swapped_for_a_symbolic_link_is_refused() {
    if !root_or_skip("a_directory_on_a_source_path_swapped_for_a_symbolic_link_is_refused") {
        return;
    }
    umask_022();
    let mut r = rng(seed());
    let ts = TestStore::new(64 * KIB as u32);
    let shared = nobodys_dir(&ts, "shared");
    let images = shared.join("images");
    fs::create_dir(&images).expect("images");
    let os = images.join("os.img");
    random_image(&os, 256 * KIB as usize, &mut r);
    let roots = ts.path("roots");
    fs::create_dir(&roots).expect("root's images");
    fs::set_permissions(&roots, fs::Permissions::from_mode(0o700)).expect("chmod");
    let secret_path = roots.join("os.img");
    let secret = random_image(&secret_path, 256 * KIB as usize, &mut r);
    roots_secret(&secret_path, &secret);
    add_vm_with_a_point(&ts, &["--disk".into(), format!("os={}", os.display())]);
    swap_then_refused(
        &ts,
        &shared,
        &format!("mv images images.old && ln -s '{}' images", roots.display()),
        &[
            "disk 'os'",
            &os.display().to_string(),
            "a symbolic link on its path",
            "VM 'vm1'",
        ],
    );
    assert!(read_image(&ts.engine, "c", "p1", "os") != secret);
}

/// The same for `--config-file`: a configuration file in a directory nobody controls, swapped
/// for a symbolic link to root's own secret, makes the creation fail naming the VM and the file;
/// no point, and no file of the store, holds the secret.
#[test]
fn a_config_file_swapped_for_a_symbolic_link_is_refused() {
    if !root_or_skip("a_config_file_swapped_for_a_symbolic_link_is_refused") {
        return;
    }
    umask_022();
    let mut r = rng(seed());
    let ts = TestStore::new(64 * KIB as u32);
    let os = ts.path("os.img");
    random_image(&os, 256 * KIB as usize, &mut r);
    let shared = nobodys_dir(&ts, "shared");
    let cfg = shared.join("vm1.xml");
    fs::write(&cfg, "<domain>vm1</domain>").expect("config");
    let secret_path = ts.path("shadow");
    let secret = b"root:$6$the-root-password-hash:19000:0:99999:7:::";
    roots_secret(&secret_path, secret);
    add_vm_with_a_point(
        &ts,
        &[
            "--disk".into(),
            format!("os={}", os.display()),
            "--config-file".into(),
            cfg.display().to_string(),
        ],
    );
    swap_then_refused(
        &ts,
        &shared,
        &format!("rm -f vm1.xml && ln -s '{}' vm1.xml", secret_path.display()),
        &[
            "configuration file",
            &cfg.display().to_string(),
            "VM 'vm1'",
            "is now a symbolic link",
        ],
    );
    assert!(!store_holds(&ts, secret), "the store holds root's secret");
}

/// What was a symbolic link at `vm add` (a disk and a configuration file) keeps working, and
/// the file it names may be replaced by a copy; but a link is only followed to the kind of file
/// it named then: a disk that was a regular file and is now a block device is refused.
#[test]
fn sources_that_were_links_at_vm_add_keep_working() {
    if !root_or_skip("sources_that_were_links_at_vm_add_keep_working") {
        return;
    }
    umask_022();
    let mut r = rng(seed());
    let ts = TestStore::new(64 * KIB as u32);
    let images = ts.path("images");
    fs::create_dir(&images).expect("images");
    let real = images.join("os-real.img");
    let content = random_image(&real, 256 * KIB as usize, &mut r);
    let link = ts.path("os.img");
    symlink(&real, &link).expect("symlink");
    fs::write(images.join("vm1.xml"), "<domain>vm1</domain>").expect("config");
    let cfg_link = ts.path("vm1.xml");
    symlink(images.join("vm1.xml"), &cfg_link).expect("symlink");
    ts.engine
        .add_vm(&VmSpec {
            name: "vm1".into(),
            disks: vec![("os".into(), link.clone())],
            config: ConfigSource::File(cfg_link.clone()),
            ..VmSpec::default()
        })
        .expect("add vm");
    ts.engine.create_collection("c", "vm1", None).expect("c");
    ts.create("c", "p1");
    assert_eq!(read_image(&ts.engine, "c", "p1", "os"), content);

    // The image replaced by a copy (another inode), as an administrator may do.
    let copy = images.join("copy.img");
    fs::copy(&real, &copy).expect("copy");
    fs::rename(&copy, &real).expect("rename");
    let p2 = ts.create("c", "p2");
    assert_eq!(read_image(&ts.engine, "c", "p2", "os"), content);
    assert_eq!(
        ts.engine.point_config(&p2).expect("config"),
        b"<domain>vm1</domain>"
    );

    // The link now names a block device with the same bytes: refused, it named a file.
    let dev = LoopDevice::attach_read_only(&real);
    fs::remove_file(&link).expect("rm link");
    symlink(&dev.0, &link).expect("symlink to the device");
    let (_, err) = expect_exit(ts.cli().args(["point", "create", "c", "p3"]), 7);
    assert_mentions(
        &err,
        &[
            "disk 'os'",
            "is now a block device",
            "it was a regular file when VM 'vm1' was added",
        ],
    );
}
