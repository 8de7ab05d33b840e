//! Security tests: store (see the module list in `security`). Root's store holds whole VM disks
//! and configurations with passwords in them; the attacker (nobody) must read nothing of it
//! (through rpfs or the files), must not be able to take its locks, must not have root adopt a
//! store directory it prepared, and must not make a full store impossible to clean.
//!
//! - a store root makes is private (0700/0600 whatever the umask): `rpfs cat`, reading packs
//!   and captured configurations as nobody all fail;
//! - a store made by an older rpfs (0755/0644) is made private by the next open, which says so
//!   once, and says nothing when there was nothing to change;
//! - root refuses a store directory another user owns (made beforehand, to own its records);
//! - nobody cannot open the store's or a VM's lock file (`flock` fails), and root's creations
//!   go on meanwhile; a lock held by another process is waited for a bounded time (busy, exit 6);
//! - deletions (`point delete`, `collection delete --force`, `rmdir` in the mount) work on a
//!   store whose filesystem the attacker filled to the last block, and `check` warns.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::attacker::{
    NOBODY, as_nobody, exposed_under, open_up, rpfs_as_nobody, umask_022,
};
use crate::common::cli::{assert_mentions, expect_exit, point_names_at, rpfs_at};
use crate::common::guards::{LoopDevice, Mounted};
use crate::common::images::{KIB, MIB, change_blocks, ext4_image, random_image};
use crate::common::mount::{MountGuard, fuse_or_skip};
use crate::common::sys::{require_tool, rng, root_or_skip, seed, sh};

/// The secret in the VM's configuration file.
const PASSWORD: &str = "password=hunter2-rpfs-store";
/// The secret in a guest file only the guest's root may read.
const GUEST_SECRET: &str = "guest-secret-rpfs-store";

/// Root's store made with the CLI under umask 022, in a temporary directory opened up as real
/// ones are: VM `vm` (one ext4 disk `os` holding `/root/secret`, 0600 in the guest, and a
/// configuration file holding a password), collection `c`, point `c/p1`.
struct Fixture {
    dir: tempfile::TempDir,
    store: PathBuf,
}

fn fixture() -> Fixture {
    umask_022();
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("root")).expect("tree");
    fs::write(tree.join("root/secret"), GUEST_SECRET).expect("secret");
    sh(&format!(
        "chmod 0755 '{t}' && chmod 0700 '{t}/root' && chmod 0600 '{t}/root/secret'",
        t = tree.display()
    ));
    let disk = dir.path().join("os.img");
    ext4_image(&tree, &disk, 4 * MIB);
    let config = dir.path().join("vm.conf");
    fs::write(&config, format!("{PASSWORD}\n")).expect("config");
    // The sources are root's alone: whatever nobody reads, it reads through the store.
    sh(&format!(
        "chmod 0600 '{}' '{}'",
        disk.display(),
        config.display()
    ));
    let store = dir.path().join("store");
    expect_exit(rpfs_at(&store).arg("init"), 0);
    expect_exit(
        rpfs_at(&store)
            .args(["vm", "add", "vm"])
            .arg(format!("--disk=os={}", disk.display()))
            .arg(format!("--config-file={}", config.display())),
        0,
    );
    expect_exit(
        rpfs_at(&store).args(["collection", "create", "c", "--vm", "vm"]),
        0,
    );
    expect_exit(rpfs_at(&store).args(["point", "create", "c", "p1"]), 0);
    open_up(dir.path());
    Fixture { dir, store }
}

/// Every regular file under `root`, as root sees them.
fn files_under(root: &Path) -> Vec<PathBuf> {
    sh(&format!("find '{}' -type f", root.display()))
        .lines()
        .map(PathBuf::from)
        .collect()
}

/// Asserts that nobody can read nothing of the store: not through `rpfs` (`cat` of the disk,
/// `point show`), not by opening any of its files, not by searching it for the secrets.
fn assert_nobody_reads_nothing(store: &Path) {
    let cat = rpfs_as_nobody(store, &["cat", "c/p1", "--disk", "os"]);
    assert!(
        !cat.status.success() && cat.stdout.is_empty(),
        "nobody ran rpfs cat: {} bytes out, {}",
        cat.stdout.len(),
        String::from_utf8_lossy(&cat.stderr)
    );
    let show = rpfs_as_nobody(store, &["point", "show", "c/p1"]);
    assert!(!show.status.success(), "nobody ran point show: {show:?}");
    let files = files_under(store);
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "pack"))
            && files
                .iter()
                .any(|f| f.extension().is_some_and(|e| e == "config")),
        "the store holds no pack or configuration: {files:?}"
    );
    for f in &files {
        let out = as_nobody(Path::new("/"), &format!("cat '{}'", f.display()));
        assert!(
            !out.status.success() && out.stdout.is_empty(),
            "nobody read {}",
            f.display()
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{}: {out:?}",
            f.display()
        );
    }
    let grep = as_nobody(
        Path::new("/"),
        &format!(
            "grep -r -a -l -e '{PASSWORD}' -e '{GUEST_SECRET}' '{}'",
            store.display()
        ),
    );
    assert!(grep.stdout.is_empty(), "nobody found a secret: {grep:?}");
    assert_eq!(exposed_under(store), Vec::<String>::new());
}

#[test]
fn nobody_reads_nothing_of_a_store_root_made() {
    if !root_or_skip("nobody_reads_nothing_of_a_store_root_made") {
        return;
    }
    let f = fixture();
    assert_nobody_reads_nothing(&f.store);
    // What nobody was refused is there for root: the secrets are in the store.
    let (out, _) = expect_exit(
        rpfs_at(&f.store)
            .args(["restore", "c/p1", "--to"])
            .arg(f.dir.path().join("r")),
        0,
    );
    assert!(out.contains("restored c/p1"), "{out}");
    assert_eq!(
        fs::read_to_string(f.dir.path().join("r/vm-config")).expect("vm-config"),
        format!("{PASSWORD}\n")
    );
}

/// The one line an open prints when it made an older store private.
fn tightened_message(store: &Path) -> String {
    format!(
        "rpfs: store {} was readable by other users; made it private (0700/0600)",
        store.display()
    )
}

#[test]
fn a_store_an_older_rpfs_left_open_is_made_private_by_the_next_open() {
    if !root_or_skip("a_store_an_older_rpfs_left_open_is_made_private_by_the_next_open") {
        return;
    }
    let f = fixture();
    // The modes an older rpfs gave its stores under umask 022: 0755 directories, 0644 files.
    sh(&format!("chmod -R go+rX '{}'", f.store.display()));
    assert!(!exposed_under(&f.store).is_empty());
    let config = files_under(&f.store)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "config"))
        .expect("a captured configuration");
    let read = as_nobody(Path::new("/"), &format!("cat '{}'", config.display()));
    assert!(
        String::from_utf8_lossy(&read.stdout).contains(PASSWORD),
        "the old modes are not open: {read:?}"
    );

    // Any open by its owner makes it private, and says so once.
    let (_, err) = expect_exit(rpfs_at(&f.store).args(["point", "list"]), 0);
    let message = tightened_message(&f.store);
    assert_eq!(err.matches(&message).count(), 1, "{err}");
    assert_nobody_reads_nothing(&f.store);
    // Nothing left to change: nothing said.
    let (_, err) = expect_exit(rpfs_at(&f.store).args(["point", "list"]), 0);
    assert!(!err.contains("private"), "{err}");
    expect_exit(rpfs_at(&f.store).args(["check", "--read-data"]), 0);
}

#[test]
fn root_refuses_a_store_directory_another_user_owns() {
    if !root_or_skip("root_refuses_a_store_directory_another_user_owns") {
        return;
    }
    umask_022();
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    fs::create_dir(&work).expect("mkdir");
    open_up(dir.path());
    fs::set_permissions(&work, fs::Permissions::from_mode(0o1777)).expect("chmod 1777");
    // Nobody makes the directory root will be told to use, and a whole store of its own.
    let planted = work.join("store");
    let out = as_nobody(&work, &format!("mkdir '{}'", planted.display()));
    assert!(out.status.success(), "{out:?}");
    let (_, err) = expect_exit(rpfs_at(&planted).arg("init"), 1);
    assert_mentions(
        &err,
        &[
            &format!("store {}", planted.display()),
            &format!("owned by uid {NOBODY} (nobody)"),
            "not by uid 0 (root)",
        ],
    );
    assert!(!planted.join("rpfs.store").exists(), "root initialised it");

    let theirs = work.join("theirs");
    let out = rpfs_as_nobody(&theirs, &["init"]);
    assert!(out.status.success(), "nobody's own init: {out:?}");
    let (_, err) = expect_exit(rpfs_at(&theirs).args(["vm", "list"]), 1);
    assert_mentions(
        &err,
        &[
            &format!("store {}", theirs.display()),
            &format!("owned by uid {NOBODY} (nobody)"),
        ],
    );
    // Nobody's own store is nobody's to use.
    let out = rpfs_as_nobody(&theirs, &["vm", "list"]);
    assert!(out.status.success(), "{out:?}");
}

/// A process group started for a test, killed (SIGKILL) and reaped when dropped: `flock`
/// holds its lock in its child too.
struct Group(Child);

impl Group {
    fn spawn(cmd: &mut Command) -> Group {
        Group(cmd.process_group(0).spawn().expect("spawn"))
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.0.wait();
    }
}

/// `flock -x LOCK sleep 30` as the attacker, in a group of its own.
fn nobody_holds(lock: &Path) -> Group {
    Group::spawn(
        Command::new("setpriv")
            .args([
                &format!("--reuid={NOBODY}"),
                &format!("--regid={NOBODY}"),
                "--clear-groups",
                "flock",
                "-x",
            ])
            .arg(lock)
            .args(["sleep", "30"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// `cmd` with a deadline: an rpfs that waits on a lock forever fails the test instead of
/// hanging it.
fn within(cmd: &mut assert_cmd::Command, secs: u64) -> &mut assert_cmd::Command {
    cmd.timeout(Duration::from_secs(secs))
}

#[test]
fn nobody_cannot_take_the_store_or_a_vm_lock() {
    if !root_or_skip("nobody_cannot_take_the_store_or_a_vm_lock") {
        return;
    }
    require_tool("flock");
    let f = fixture();
    let locks = f.store.join("locks");
    let store_lock = locks.join("store.lock");
    let vm_lock = fs::read_dir(&locks)
        .expect("locks")
        .map(|e| e.expect("entry").path())
        .find(|p| p.to_string_lossy().contains("/vm-"))
        .expect("a VM lock file");
    for lock in [&store_lock, &vm_lock] {
        let out = as_nobody(
            Path::new("/"),
            &format!("flock -x -n '{}' true", lock.display()),
        );
        assert!(!out.status.success(), "nobody locked {}", lock.display());
        assert_mentions(
            &String::from_utf8_lossy(&out.stderr),
            &["Permission denied"],
        );
    }

    // While nobody tries to hold both, root's creations go on as usual.
    let _store_holder = nobody_holds(&store_lock);
    let _vm_holder = nobody_holds(&vm_lock);
    std::thread::sleep(Duration::from_millis(300));
    expect_exit(
        within(rpfs_at(&f.store).args(["point", "create", "c", "p2"]), 60),
        0,
    );
    expect_exit(
        within(
            rpfs_at(&f.store).args(["collection", "create", "c2", "--vm", "vm"]),
            60,
        ),
        0,
    );
    expect_exit(
        within(rpfs_at(&f.store).args(["point", "create", "c2", "q1"]), 60),
        0,
    );
    assert_eq!(point_names_at(&f.store), ["c/p1", "c/p2", "c2/q1"]);
}

#[test]
fn a_held_store_lock_is_waited_for_a_bounded_time_then_busy() {
    if !root_or_skip("a_held_store_lock_is_waited_for_a_bounded_time_then_busy") {
        return;
    }
    require_tool("flock");
    let f = fixture();
    // Whoever holds it (here root itself: a stuck or stopped process), it delays others by
    // the wait and no more.
    let _holder = Group::spawn(
        Command::new("flock")
            .arg("-x")
            .arg(f.store.join("locks/store.lock"))
            .args(["sleep", "60"]),
    );
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let (_, err) = expect_exit(
        within(
            rpfs_at(&f.store).env("RPFS_LOCK_WAIT", "2").args([
                "collection",
                "create",
                "c2",
                "--vm",
                "vm",
            ]),
            30,
        ),
        6,
    );
    let took = start.elapsed();
    assert_mentions(&err, &["store lock", "held by another process", "2 s"]);
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "gave up after {took:?}"
    );
    expect_exit(rpfs_at(&f.store).args(["collection", "show", "c2"]), 3);
}

/// A 128 MiB ext4 filesystem with no blocks reserved for root (`-m 0`, as data volumes are
/// often made), on a loop device, mounted, with a world-writable `tmp` where nobody fills it.
/// Unmounted, then detached, when dropped (fields drop in order), even when the test fails.
struct FullFs {
    _mounted: Mounted,
    _loop: LoopDevice,
    _dir: tempfile::TempDir,
    mnt: PathBuf,
    fills: std::cell::Cell<u32>,
}

impl FullFs {
    fn new() -> FullFs {
        require_tool("mkfs.ext4");
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).expect("mkdir");
        sh(&format!("truncate -s 128M '{}'", img.display()));
        let dev = LoopDevice::attach(&img);
        sh(&format!("mkfs.ext4 -q -F -m 0 -b 4096 '{}'", dev.0));
        let mounted = Mounted::run(&mnt, &format!("mount '{}' '{}'", dev.0, mnt.display()));
        fs::create_dir(mnt.join("tmp")).expect("tmp");
        fs::set_permissions(mnt.join("tmp"), fs::Permissions::from_mode(0o1777)).expect("chmod");
        open_up(&mnt);
        FullFs {
            _mounted: mounted,
            _loop: dev,
            _dir: dir,
            mnt,
            fills: std::cell::Cell::new(0),
        }
    }

    /// Nobody writes to `tmp` until not one more block fits, even for root. (Rounds: ext4
    /// reserves room for metadata while writes are delayed, and gives the rest back once they
    /// are written out.)
    fn fill(&self) {
        for _ in 0..20 {
            let n = self.fills.get() + 1;
            self.fills.set(n);
            let out = as_nobody(
                &self.mnt.join("tmp"),
                &format!(
                    "dd if=/dev/zero of=big{n} bs=1M 2>/dev/null; dd if=/dev/zero of=small{n} \
                     bs=4k 2>/dev/null; i=0; while [ $i -lt 1000 ] && echo x > tiny{n}-$i \
                     2>/dev/null; do i=$((i+1)); done; sync"
                ),
            );
            assert!(out.status.success(), "filling: {out:?}");
            let probe = self.mnt.join("probe");
            let written =
                fs::write(&probe, [1u8; 4096]).and_then(|()| fs::File::open(&probe)?.sync_all());
            let _ = fs::remove_file(&probe);
            sh(&format!("sync -f '{}'", self.mnt.display()));
            if written.is_err() {
                return;
            }
        }
        panic!("root can still write: the filesystem is not full");
    }

    fn empty(&self) {
        sh(&format!(
            "rm -rf '{}'/tmp/* && sync -f '{}'",
            self.mnt.display(),
            self.mnt.display()
        ));
    }
}

#[test]
fn deletions_work_on_a_store_nobody_filled() {
    if !root_or_skip("deletions_work_on_a_store_nobody_filled")
        || !fuse_or_skip("deletions_work_on_a_store_nobody_filled")
    {
        return;
    }
    umask_022();
    let full = FullFs::new();
    let store = full.mnt.join("store");
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.img");
    let mut r = rng(seed());
    // Every block changes between points: each point holds a pack of its own, 16 MiB.
    let mut content = random_image(&disk, 16 * MIB as usize, &mut r);
    expect_exit(rpfs_at(&store).arg("init"), 0);
    expect_exit(
        rpfs_at(&store)
            .args(["vm", "add", "vm"])
            .arg(format!("--disk=d={}", disk.display())),
        0,
    );
    for c in ["c", "d"] {
        expect_exit(
            rpfs_at(&store).args(["collection", "create", c, "--vm", "vm"]),
            0,
        );
    }
    for (c, p) in [("c", "p1"), ("c", "p2"), ("d", "q1"), ("c", "p3")] {
        expect_exit(rpfs_at(&store).args(["point", "create", c, p]), 0);
        change_blocks(&disk, &mut content, 64 * KIB, 1.0, &mut r);
    }
    let reserve = store.join("reserve");

    full.fill();
    let (out, _) = expect_exit(rpfs_at(&store).args(["point", "delete", "c/p2"]), 0);
    assert!(out.contains("deleted restore point c/p2"), "{out}");
    assert!(reserve.exists(), "the reserve was not made again");

    full.fill();
    let (_, err) = expect_exit(rpfs_at(&store).arg("check"), 0);
    assert_mentions(&err, &["warning: ", "low on space", "0 MiB free"]);
    expect_exit(
        rpfs_at(&store).args(["collection", "delete", "d", "--force"]),
        0,
    );
    assert!(reserve.exists(), "the reserve was not made again");

    full.fill();
    {
        let m = MountGuard::new(&store, &["--allow-delete"]);
        fs::remove_dir(m.path("c/p1")).expect("rmdir c/p1 in the mount");
    }
    assert_eq!(point_names_at(&store), ["c/p3"]);

    full.empty();
    expect_exit(rpfs_at(&store).args(["check", "--read-data"]), 0);
    assert!(reserve.exists());
}
