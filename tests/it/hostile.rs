//! Hostile store content: each fixture plants one kind of malicious or absurd data in a real
//! store. Listing, reading, restoring and checking must reject it with a typed error naming the
//! file, in well under a second, without large allocations (the CLI runs under a 2 GiB
//! address-space limit), and without opening anything outside the store.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rpfs::store::blockmap::BlockMap;
use rpfs::store::records::PointRecord;
use rpfs::store::{envelope, frames, kind, layout, pack};

use crate::common::images::{KIB, random_image};
use crate::common::store::{Golden, create, golden_format, open};
use crate::common::sys::{require_tool, rng, seed};

/// A store with one VM ("vm", disks os and data) and points c/p1, c/p2, plus a second VM
/// ("other", one disk) with point o/x.
struct Fixture {
    g: Golden,
    p1: PointRecord,
    other: PointRecord,
}

fn fixture() -> Fixture {
    fixture_format(rpfs::store::format::DEFAULT)
}

/// Format 1, for the tests that edit its pack tables and block maps in place (format 2's frame
/// tables have tests of their own below).
const FORMAT_1: u32 = 1;

/// [`fixture`] in a store of on-disk format `version`.
fn fixture_format(version: u32) -> Fixture {
    let g = golden_format(2, version);
    let engine = open(&g.store);
    let disk = g.dir.path().join("other.img");
    random_image(&disk, 64 * KIB as usize, &mut rng(seed()));
    engine
        .add_vm(&rpfs::engine::vms::VmSpec {
            name: "other".into(),
            disks: vec![("d".into(), disk)],
            ..Default::default()
        })
        .expect("vm");
    engine.create_collection("o", "other", None).expect("o");
    let other = create(&engine, "o", "x");
    let p1 = engine
        .catalog()
        .expect("catalog")
        .point("c", "p1")
        .expect("p1")
        .1
        .clone();
    Fixture { g, p1, other }
}

impl Fixture {
    fn key(&self, key: &str) -> PathBuf {
        self.g.store.join(key)
    }
    fn point_key(&self) -> String {
        layout::point(self.p1.vm_id, self.p1.id)
    }
    fn pack_key(&self) -> String {
        let d = &self.p1.disks[0];
        layout::pack(self.p1.vm_id, d.disk_id, d.drp_id)
    }
    fn map_key(&self) -> String {
        let d = &self.p1.disks[0];
        layout::map(self.p1.vm_id, d.disk_id, d.drp_id)
    }

    /// Rewrites the body of the record at `key` (a `kind` envelope) with `edit`.
    fn edit_record(&self, key: &str, kind: &str, edit: impl FnOnce(&mut serde_json::Value)) {
        let bytes = fs::read(self.key(key)).expect("record");
        let body = envelope::open(key, kind, &bytes).expect("envelope");
        let mut v: serde_json::Value = serde_json::from_slice(body).expect("json");
        edit(&mut v);
        let body = serde_json::to_vec(&v).expect("json");
        fs::write(self.key(key), envelope::seal(kind, &body)).expect("write");
    }

    /// Format 2: the key of the first frame pack p1's first disk's page map names.
    fn frame_pack_key(&self) -> String {
        use rpfs::store::storage::Storage;
        let storage = rpfs::store::LocalStorage::new(&self.g.store);
        let key = self.map_key();
        let obj = storage.open(&key).expect("open map");
        let map = rpfs::store::pagemap::PageMap::open(&key, &*obj).expect("map");
        layout::shared_pack(map.packs[0])
    }

    /// Format 2: rewrites frame table entry `i` of [`Fixture::frame_pack_key`] with `edit`,
    /// resealing every checksum, so only the entry's own checks can refuse it.
    fn edit_frame_entry(&self, i: usize, edit: impl FnOnce(&mut [u8])) {
        let path = self.key(&self.frame_pack_key());
        let mut b = fs::read(&path).expect("pack");
        let t = b.len() - frames::TRAILER_LEN;
        let table_offset = u64::from_le_bytes(b[t + 16..t + 24].try_into().expect("8")) as usize;
        let at = table_offset + i * frames::ENTRY_LEN;
        edit(&mut b[at..at + frames::ENTRY_LEN]);
        frames::reseal(&mut b);
        fs::write(&path, b).expect("write pack");
    }

    /// Rewrites pack table entry `i` of p1's first pack with `edit`, resealing the checksums.
    fn edit_pack_entry(&self, i: usize, edit: impl FnOnce(&mut [u8])) {
        let path = self.key(&self.pack_key());
        let mut b = fs::read(&path).expect("pack");
        let n = b.len();
        let t = n - pack::TRAILER_LEN;
        let table_offset = u64::from_le_bytes(b[t + 8..t + 16].try_into().expect("8")) as usize;
        let at = table_offset + i * pack::ENTRY_LEN;
        edit(&mut b[at..at + pack::ENTRY_LEN]);
        let crc = crc32c::crc32c(&b[table_offset..t]);
        b[t + 24..t + 28].copy_from_slice(&crc.to_le_bytes());
        let crc = crc32c::crc32c(&b[t..t + 28]);
        b[t + 28..t + 32].copy_from_slice(&crc.to_le_bytes());
        fs::write(&path, b).expect("write pack");
    }
}

/// Runs the CLI on the store, traced and memory-limited; returns (exit code, output, the files
/// it opened outside the store and the system's own places).
fn rpfs(store: &Path, args: &[&str], allowed: &Path) -> (i32, String, Vec<String>) {
    require_tool("strace");
    require_tool("prlimit");
    let bin = assert_cmd::cargo::cargo_bin("rpfs");
    let log = tempfile::NamedTempFile::new().expect("strace log");
    let out = Command::new("prlimit")
        .arg(format!("--as={}", 2u64 << 30))
        .args([
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=open,openat,openat2",
            "-o",
        ])
        .arg(log.path())
        .arg(&bin)
        .args(args)
        .env("RPFS_STORE", store)
        .env_remove("RPFS_LOG")
        .output()
        .expect("run rpfs");
    let trace = fs::read_to_string(log.path()).expect("trace");
    let store = fs::canonicalize(store).expect("store path");
    let outside = trace
        .lines()
        .filter(|l| !l.contains("= -1"))
        .filter_map(|l| l.split('"').nth(1))
        .map(normalize)
        .filter(|p| {
            p.is_absolute()
                && !p.starts_with(&store)
                && !["/etc", "/lib", "/usr", "/proc", "/sys", "/dev"]
                    .iter()
                    .any(|s| p.starts_with(s))
                && !p.starts_with(bin.parent().expect("bin dir"))
                && !p.starts_with(allowed)
                // The directories above the restore target, walked (O_PATH) to reach it.
                && !allowed.starts_with(p)
        })
        .map(|p| p.display().to_string())
        .collect();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text, outside)
}

/// `path` with `.` and `..` resolved lexically, so `store/../x` counts as outside the store.
fn normalize(path: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Lists, reads every disk of every point, restores, and checks; each must end (quickly, with
/// no crash) and the error text must mention every one of `mentions`.
fn assert_rejected(f: &Fixture, what: &str, mentions: &[&str]) {
    let restore_dir = tempfile::tempdir().expect("restore target");
    let restore_to = restore_dir.path().join("to");
    let restore_arg = restore_to.display().to_string();
    let mut all = String::new();
    for args in [
        vec!["point", "list"],
        vec!["cat", "c/p1", "--disk", "os"],
        vec!["cat", "c/p2", "--disk", "data"],
        vec!["restore", "c/p1", "--to", restore_arg.as_str()],
        vec!["check", "--read-data"],
    ] {
        let started = Instant::now();
        let (code, text, outside) = rpfs(&f.g.store, &args, &restore_to);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: `rpfs {}` took {:?}",
            args.join(" "),
            started.elapsed()
        );
        assert!(
            (0..=11).contains(&code),
            "{what}: `rpfs {}` crashed ({code}): {text}",
            args.join(" ")
        );
        assert!(
            !text.contains("panicked"),
            "{what}: `rpfs {}` panicked: {text}",
            args.join(" ")
        );
        assert!(
            outside.is_empty(),
            "{what}: `rpfs {}` opened {outside:?}",
            args.join(" ")
        );
        all.push_str(&text);
    }
    // A disk named "../../escape" would have been restored here.
    let escaped = restore_dir.path().parent().expect("tmp").join("escape.img");
    assert!(
        !escaped.exists(),
        "{what}: a restore wrote {}",
        escaped.display()
    );
    for m in mentions {
        assert!(all.contains(m), "{what}: nothing mentions {m:?}:\n{all}");
    }
    // The engine reports it as a typed error, not a panic, in well under a second.
    let started = Instant::now();
    let engine = open(&f.g.store);
    match engine.check(true, &rpfs::engine::progress::Silent) {
        Ok(report) => assert!(!report.problems.is_empty(), "{what}: check found nothing"),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{what}: check took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_huge_metadata_file_is_refused_unread() {
    let f = fixture();
    let key = f.point_key();
    let file = fs::OpenOptions::new()
        .write(true)
        .open(f.key(&key))
        .expect("open");
    file.set_len(1 << 36).expect("64 GiB sparse record");
    assert_rejected(&f, "huge record", &[&key, "more than a record can be"]);
}

#[test]
fn deeply_nested_json_is_refused() {
    let f = fixture();
    let key = f.point_key();
    // Nested inside a field the record does not know, which serde skips recursively.
    let body = format!(
        "{{\"unknown\": {}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    fs::write(f.key(&key), envelope::seal(kind::POINT, body.as_bytes())).expect("write");
    assert_rejected(&f, "nested json", &[&key, "invalid point record"]);
}

#[test]
fn a_block_claiming_a_terabyte_fails_alone() {
    let f = fixture_format(FORMAT_1);
    // A zstd frame whose header claims 2^40 bytes of content, holding one RLE block.
    let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0xe0];
    frame.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let block_header: u32 = 1 | (1 << 1) | (4096 << 3);
    frame.extend_from_slice(&block_header.to_le_bytes()[..3]);
    frame.push(0xab);
    let mut offset = 0;
    f.edit_pack_entry(0, |e| {
        offset = u64::from_le_bytes(e[8..16].try_into().expect("8")) as usize;
        e[16..20].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        e[20..24].copy_from_slice(&1u32.to_le_bytes());
    });
    let path = f.key(&f.pack_key());
    let mut b = fs::read(&path).expect("pack");
    b[offset..offset + frame.len()].copy_from_slice(&frame);
    fs::write(&path, b).expect("write");
    assert_rejected(&f, "terabyte block", &["damaged"]);
}

#[test]
fn offsets_near_the_end_of_u64_are_refused() {
    let f = fixture_format(FORMAT_1);
    f.edit_pack_entry(0, |e| {
        e[8..16].copy_from_slice(&(u64::MAX - 7).to_le_bytes())
    });
    assert_rejected(
        &f,
        "huge offset",
        &[&f.pack_key(), "table entry 0 is invalid"],
    );
}

#[test]
fn overlapping_block_entries_are_refused() {
    let f = fixture_format(FORMAT_1);
    // Entry 1 claims entry 0's bytes.
    let path = f.key(&f.pack_key());
    let b = fs::read(&path).expect("pack");
    let t = b.len() - pack::TRAILER_LEN;
    let table = u64::from_le_bytes(b[t + 8..t + 16].try_into().expect("8")) as usize;
    let first = b[table + 8..table + 16].to_vec();
    f.edit_pack_entry(1, |e| e[8..16].copy_from_slice(&first));
    assert_rejected(&f, "overlap", &[&f.pack_key(), "table entry 1 is invalid"]);
}

#[test]
fn a_map_naming_a_pack_of_another_vm_resolves_nothing_outside_its_own() {
    let f = fixture_format(FORMAT_1);
    // The format has no parent pointers (every map is complete), so a chain cannot loop; the
    // nearest attack is a map that points at another VM's pack.
    let key = f.map_key();
    let bytes = fs::read(f.key(&key)).expect("map");
    let mut map = BlockMap::decode(&key, &bytes, 4096).expect("map");
    map.packs[0] = f.other.disks[0].drp_id;
    fs::write(f.key(&key), map.encode().expect("encode")).expect("write");
    assert_rejected(&f, "foreign pack", &[&f.other.disks[0].drp_id.to_string()]);
}

#[test]
fn frame_entries_near_the_end_of_u64_or_past_a_frame_are_refused() {
    // Format 2's frame tables: an offset near u64::MAX, then a stored length no frame can have
    // (a read must never allocate what an entry claims).
    let f = fixture();
    f.edit_frame_entry(0, |e| {
        e[0..8].copy_from_slice(&(u64::MAX - 7).to_le_bytes())
    });
    assert_rejected(
        &f,
        "huge frame offset",
        &[&f.frame_pack_key(), "frame 0 is invalid"],
    );
    let f = fixture();
    f.edit_frame_entry(0, |e| e[12..16].copy_from_slice(&u32::MAX.to_le_bytes()));
    assert_rejected(
        &f,
        "huge frame length",
        &[&f.frame_pack_key(), "frame 0 is invalid"],
    );
}

#[test]
fn overlapping_frame_entries_are_refused() {
    let f = fixture();
    // Frame 1 claims frame 0's bytes.
    let mut first = [0u8; 8];
    f.edit_frame_entry(0, |e| first.copy_from_slice(&e[0..8]));
    f.edit_frame_entry(1, |e| e[0..8].copy_from_slice(&first));
    assert_rejected(
        &f,
        "frame overlap",
        &[&f.frame_pack_key(), "frame 1 is invalid"],
    );
}

#[test]
fn unsafe_names_inside_metadata_are_refused() {
    for bad in ["../../escape", "a/b", "nul\u{0}inside"] {
        let f = fixture();
        let key = f.point_key();
        f.edit_record(&key, kind::POINT, |v| {
            v["disks"][0]["name"] = serde_json::Value::String(bad.into());
        });
        assert_rejected(&f, bad, &[&key, "not a safe file name"]);
    }
}

#[test]
fn symbolic_links_inside_the_store_are_never_followed() {
    let f = fixture();
    // A record replaced by a link to a copy outside the store, and a disk directory by a link
    // to a directory outside.
    let key = f.point_key();
    let outside = f.g.dir.path().join("outside.json");
    fs::copy(f.key(&key), &outside).expect("copy");
    fs::remove_file(f.key(&key)).expect("rm");
    std::os::unix::fs::symlink(&outside, f.key(&key)).expect("symlink");
    let d = &f.other.disks[0];
    let dir = f.key(&layout::disk_dir(f.other.vm_id, d.disk_id));
    let moved = f.g.dir.path().join("outside-disk");
    fs::rename(&dir, &moved).expect("move");
    std::os::unix::fs::symlink(&moved, &dir).expect("symlink");
    assert_rejected(&f, "symlinks", &["symbolic link"]);
}
