//! Fuzz targets: the parsers of everything read back from a store, the name validator,
//! sequences of file system operations on the vfs core, and guest filesystems (ext4, FAT). `fuzz/` drives them with cargo-fuzz;
//! `tests/it/fuzz_replay.rs` replays the kept corpora and crashes, and random inputs, on stable.
//!
//! Invariant each target asserts: any input gives a value or a typed error, never a panic,
//! and never an allocation beyond the bounds the format sets.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::create::CreateRequest;
use crate::engine::progress::Silent;
use crate::engine::vms::VmSpec;
use crate::engine::{Engine, OpenOptions, names};
use crate::inspect::guest::{FsType, Guest, GuestKind, Source};
use crate::store::LocalStorage;
use crate::store::records::{CollectionRecord, PendingOp, PointRecord, StoreHeader, VmRecord};
use crate::store::storage::{Object, Storage};
use crate::store::{blockmap, envelope, frames, index, pack, pagemap};
use crate::vfs::{Vfs, VfsOptions};

/// Block size the parsers are told to expect.
const BLOCK: u32 = 4096;

/// An object held in memory, for parsers that read through [`Object`].
#[derive(Debug)]
struct Bytes(Vec<u8>);

impl Object for Bytes {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| std::io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .filter(|&e| e <= self.0.len())
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(&self.0[start..end]);
        Ok(())
    }
}

/// Every kind of record, parsed the way the store reads records: the input as a whole file,
/// and its body (what follows the first line, or all of it) sealed in a valid envelope of each
/// kind, so mutations reach the JSON parser and the name checks rather than the checksum.
pub fn records(data: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir for a fuzz input");
    let storage = LocalStorage::new(dir.path());
    record_file(&storage, data);
    let body = data.splitn(2, |&b| b == b'\n').nth(1).unwrap_or(data);
    for kind in [
        crate::store::kind::STORE,
        crate::store::kind::VM,
        crate::store::kind::COLLECTION,
        crate::store::kind::POINT,
        crate::store::kind::PENDING,
    ] {
        record_file(&storage, &envelope::seal(kind, body));
    }
}

fn record_file(storage: &LocalStorage, data: &[u8]) {
    if storage.put("r.json", data).is_err() {
        return;
    }
    let s: &dyn Storage = storage;
    let _ = crate::store::read_record::<StoreHeader>(s, "r.json", crate::store::kind::STORE);
    let _ = crate::store::read_record::<VmRecord>(s, "r.json", crate::store::kind::VM);
    let _ =
        crate::store::read_record::<CollectionRecord>(s, "r.json", crate::store::kind::COLLECTION);
    let _ = crate::store::read_record::<PointRecord>(s, "r.json", crate::store::kind::POINT);
    let _ = crate::store::read_record::<PendingOp>(s, "r.json", crate::store::kind::PENDING);
    let _ = envelope::open("r.json", crate::store::kind::CONFIG, data);
}

/// Block maps, as given and with their checksums made right (so mutations reach the parser).
pub fn block_map(data: &[u8]) {
    let mut resealed = data.to_vec();
    if resealed.len() >= blockmap::HEADER_LEN {
        let body = crc32c::crc32c(&resealed[blockmap::HEADER_LEN..]);
        resealed[40..44].copy_from_slice(&body.to_le_bytes());
        let header = crc32c::crc32c(&resealed[..60]);
        resealed[60..64].copy_from_slice(&header.to_le_bytes());
    }
    for bytes in [data, &resealed] {
        if let Ok(map) = blockmap::BlockMap::decode("f.map", bytes, BLOCK) {
            assert_eq!(
                map.entries.len() as u64,
                blockmap::block_count(map.disk_size, BLOCK)
            );
            assert!(map.entries.iter().all(|&e| e as usize <= map.packs.len()));
        }
    }
}

/// Pack tables and every block they index, as given and with the table and trailer checksums
/// made right (so mutations reach the entry checks).
pub fn pack_index(data: &[u8]) {
    pack_bytes(data);
    let mut resealed = data.to_vec();
    let n = resealed.len();
    if n >= pack::HEADER_LEN + pack::TRAILER_LEN {
        let t = n - pack::TRAILER_LEN;
        let mut at = [0u8; 8];
        at.copy_from_slice(&resealed[t + 8..t + 16]);
        if let Ok(table) = usize::try_from(u64::from_le_bytes(at))
            && table <= t
        {
            let crc = crc32c::crc32c(&resealed[table..t]);
            resealed[t + 24..t + 28].copy_from_slice(&crc.to_le_bytes());
        }
        let crc = crc32c::crc32c(&resealed[t..t + 28]);
        resealed[t + 28..t + 32].copy_from_slice(&crc.to_le_bytes());
        pack_bytes(&resealed);
    }
}

fn pack_bytes(data: &[u8]) {
    let obj = Bytes(data.to_vec());
    let id = if data.len() >= 32 {
        uuid::Uuid::from_slice(&data[16..32]).unwrap_or_default()
    } else {
        uuid::Uuid::nil()
    };
    if let Ok(index) = pack::PackIndex::load(&obj, "f.pack", id, BLOCK) {
        let mut out = vec![0u8; BLOCK as usize];
        for e in index.entries.iter().take(256) {
            let _ = index.read_block(&obj, e, &mut out);
        }
    }
}

/// Frame packs (pack format 3): header, trailer and directory, then table and fingerprint
/// chunks and the frames they index, as given and with every checksum made right (so
/// mutations reach the entry checks).
pub fn frame_pack(data: &[u8]) {
    frame_pack_bytes(data);
    let mut resealed = data.to_vec();
    frames::reseal(&mut resealed);
    frame_pack_bytes(&resealed);
}

fn frame_pack_bytes(data: &[u8]) {
    const KEY: &str = "f.pack";
    let obj = Bytes(data.to_vec());
    let (id, frame_size) = match data.get(12..32) {
        Some(h) => (
            uuid::Uuid::from_slice(&h[4..]).unwrap_or_default(),
            u32::from_le_bytes([h[0], h[1], h[2], h[3]]),
        ),
        None => (uuid::Uuid::nil(), BLOCK),
    };
    let Ok(pack) = frames::FramePack::open(KEY, &obj, id, frame_size) else {
        return;
    };
    let mut out = Vec::new();
    for chunk in 0..pack.table_chunks().min(4) {
        let Ok(entries) = pack.table_chunk(KEY, &obj, chunk) else {
            continue;
        };
        assert!(entries.len() <= frames::FRAMES_PER_CHUNK as usize);
        for e in entries.iter().take(256) {
            assert!(u64::from(e.first_page) + u64::from(e.pages()) <= u64::from(pack.page_count()));
            assert!(e.decoded_len() <= pack.frame_size as usize);
            for slot in 0..16 {
                if let Some(i) = e.page_fingerprint_index(slot) {
                    assert!(i < pack.page_count());
                }
            }
            out.resize(e.decoded_len(), 0);
            let _ = pack.read_frame(&obj, e, &mut out);
            let _ = pack.read_stored(&obj, e);
        }
    }
    for chunk in 0..pack.fingerprint_chunks().min(4) {
        if let Ok(fps) = pack.fingerprint_chunk(KEY, &obj, chunk) {
            assert!(fps.len() <= frames::FINGERPRINTS_PER_CHUNK as usize);
        }
    }
    assert!(pack.table_chunk(KEY, &obj, pack.table_chunks()).is_err());
    assert!(
        pack.fingerprint_chunk(KEY, &obj, pack.fingerprint_chunks())
            .is_err()
    );
}

/// Page maps (format 2), as given and with every checksum made right (so mutations reach the
/// checks behind them): open, then every map page (up to 64) and the summary.
pub fn page_map(data: &[u8]) {
    let mut resealed = data.to_vec();
    pagemap::reseal(&mut resealed);
    for bytes in [data.to_vec(), resealed] {
        let obj = Bytes(bytes);
        let Ok(map) = pagemap::PageMap::open("f.map", &obj) else {
            continue;
        };
        assert_eq!(map.pages, pagemap::page_count(map.disk_size));
        assert_eq!(
            u64::from(map.map_pages()),
            pagemap::map_page_count(map.pages)
        );
        for i in 0..map.map_pages().min(64) {
            if let Ok(entries) = map.read_page("f.map", &obj, i) {
                assert_eq!(entries.len(), map.page_entries(i));
                for r in entries.iter().filter_map(|&e| pagemap::decode_entry(e)) {
                    assert!(r.pack as usize <= map.packs.len());
                    assert!(u32::from(r.slot) < map.frame_size / 4096);
                }
            }
        }
        if let Ok(summary) = map.summary("f.map", &obj) {
            assert!(summary.page_count() <= map.data_pages);
            assert!(summary.packs().all(|p| map.packs.contains(&p)));
        }
    }
}

/// Dedup index segments, as given and with every checksum made right (so mutations reach the
/// checks behind them): opened, iterated, verified, and searched for the ids they hold and for
/// ids they do not. A lookup that finds something finds the id it was asked for.
pub fn index_segment(data: &[u8]) {
    segment_bytes(data);
    let mut resealed = data.to_vec();
    index::reseal(&mut resealed);
    segment_bytes(&resealed);
}

fn segment_bytes(data: &[u8]) {
    const KEY: &str = "index/f.idx";
    let obj = Bytes(data.to_vec());
    let Ok(segment) = index::Segment::open(KEY, &obj) else {
        return;
    };
    let listed = segment.packs().len();
    assert!(listed as u64 <= segment.entries());
    let held: Vec<index::IndexEntry> = segment
        .iter(KEY, &obj)
        .take(1024)
        .map_while(Result::ok)
        .collect();
    assert!(
        held.iter()
            .all(|e| segment.packs().contains(&e.pack) && e.slot < 16)
    );
    let mut asked: Vec<[u8; 32]> = held.iter().step_by(4).take(128).map(|e| e.id).collect();
    let mut tail = [0u8; 32];
    let n = data.len().min(32);
    tail[..n].copy_from_slice(&data[data.len() - n..]);
    asked.extend([[0u8; 32], [0xff; 32], tail]);
    for id in &asked {
        let _ = segment.may_contain(id);
        if let Ok(Some(hit)) = segment.lookup(KEY, &obj, id) {
            assert_eq!(&hit.id, id);
        }
    }
    let _ = segment.verify(KEY, &obj);
}

/// Names as users type them.
pub fn name(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data)
        && names::validate("restore point", s).is_ok()
    {
        assert!(
            crate::store::records::safe_name(s),
            "{s:?} validated but unsafe"
        );
    }
}

/// A store with a VM of two small disks, collection `c` and points `p1`, `p2`, under `dir`,
/// and a vfs over it that allows deleting points.
pub fn vfs_fixture(dir: &Path) -> Vfs {
    let store = dir.join("store");
    std::fs::create_dir_all(&store).expect("store dir");
    let engine = Engine::init(Arc::new(LocalStorage::new(&store)), BLOCK).expect("init");
    let mut disks = Vec::new();
    for (name, len) in [("os", 96 * 1024), ("data", 20 * 1024 + 123)] {
        let path = dir.join(format!("{name}.img"));
        let content: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, content).expect("disk");
        disks.push((name.to_string(), path));
    }
    engine
        .add_vm(&VmSpec {
            name: "vm".into(),
            disks,
            ..VmSpec::default()
        })
        .expect("vm");
    engine
        .create_collection("c", "vm", None)
        .expect("collection");
    for p in ["p1", "p2"] {
        engine
            .create_point(
                &CreateRequest {
                    collection: "c".into(),
                    name: p.into(),
                    exclude: vec![],
                    consistency: None,
                },
                &Silent,
            )
            .expect("point");
    }
    let engine =
        Engine::open(Arc::new(LocalStorage::new(&store)), OpenOptions::default()).expect("open");
    Vfs::new(
        engine,
        VfsOptions {
            allow_delete: true,
            allow_other: false,
            owner_uid: 0,
            owner_gid: 0,
            image_gid: None,
            catalog_max_age: Duration::ZERO,
        },
    )
    .expect("vfs")
}

/// Reads little-endian numbers and byte strings off the fuzz input.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |v, i| v | u64::from(self.byte().unwrap_or(0)) << (8 * i))
    }
    /// Small numbers most of the time (real inodes and handles), anything sometimes.
    fn id(&mut self) -> u64 {
        match self.byte().unwrap_or(0) {
            b @ 0..=239 => u64::from(b % 40),
            _ => self.u64(),
        }
    }
    fn name(&mut self) -> Vec<u8> {
        let len = usize::from(self.byte().unwrap_or(0) % 24);
        let n = len.min(self.0.len());
        let (name, rest) = self.0.split_at(n);
        self.0 = rest;
        name.to_vec()
    }
}

/// A sequence of operations with arbitrary inodes, handles, offsets, sizes and names; every one
/// must return a value or an error, and reads never return more than asked.
pub fn vfs_ops(vfs: &Vfs, data: &[u8]) {
    let mut input = Input(data);
    let mut steps = 0;
    while let Some(op) = input.byte() {
        steps += 1;
        if steps > 64 {
            break;
        }
        match op % 14 {
            0 => {
                let _ = vfs.getattr(input.id());
            }
            1 => {
                let (parent, name) = (input.id(), input.name());
                let _ = vfs.lookup(parent, OsStr::from_bytes(&name));
            }
            2 => {
                let _ = vfs.readdir(input.id());
            }
            3 => {
                let _ = vfs.readlink(input.id());
            }
            4 => {
                let (ino, flags) = (input.id(), input.u64() as i32);
                let _ = vfs.open(ino, flags);
            }
            5 => {
                let _ = vfs.opendir(input.id());
            }
            6 => {
                let (fh, off) = (input.id(), input.u64());
                let _ = vfs.readdir_at(fh, off);
            }
            7 => {
                let (fh, off, size) = (input.id(), input.u64(), input.u64() as u32 % (1 << 20));
                if let Ok(bytes) = vfs.read(fh, off, size) {
                    assert!(
                        bytes.len() <= size as usize,
                        "read returned more than asked"
                    );
                }
            }
            8 => vfs.release(input.id()),
            9 => {
                let (fh, off, whence) = (input.id(), input.u64() as i64, input.byte().unwrap_or(0));
                let _ = vfs.lseek(fh, off, i32::from(whence % 6));
            }
            10 => {
                let _ = vfs.statfs();
            }
            11 => {
                let (parent, name, uid) = (input.id(), input.name(), input.byte().unwrap_or(0));
                let _ = vfs.mkdir(parent, OsStr::from_bytes(&name), u32::from(uid % 2));
            }
            12 => {
                let (parent, name, uid) = (input.id(), input.name(), input.byte().unwrap_or(0));
                let _ = vfs.rmdir(parent, OsStr::from_bytes(&name), u32::from(uid % 2));
            }
            _ => {
                // Walk to a real disk image and read it at an arbitrary place.
                let (off, size) = (
                    input.u64() % (200 * 1024),
                    input.u64() as u32 % (256 * 1024),
                );
                if let Some(fh) = open_disk(vfs) {
                    if let Ok(bytes) = vfs.read(fh, off, size) {
                        assert!(bytes.len() <= size as usize);
                    }
                    vfs.release(fh);
                }
            }
        }
    }
}

fn open_disk(vfs: &Vfs) -> Option<u64> {
    let mut ino = crate::vfs::ROOT_INO;
    for name in ["c", "p1", "disks", "os.img"] {
        ino = vfs.lookup(ino, OsStr::new(name)).ok()?.attr.ino;
    }
    vfs.open(ino, libc::O_RDONLY).ok().map(|o| o.fh)
}

/// A guest filesystem image: probed, then (when rpfs reads it) walked through [`Guest`] as the
/// mount would: every directory listed, every link read, every file read at its start and end,
/// up to `MAX_NODES` files. Damage must give errors; parser panics stay in the parser's thread.
pub fn guest_fs(data: &[u8]) {
    const MAX_NODES: usize = 2000;
    let source: Arc<dyn Source> = Arc::new(data.to_vec());
    let Some(fs) = FsType::probe(source.as_ref()) else {
        return;
    };
    let guest = Guest::new(fs, source);
    let Ok(root) = guest.root() else {
        return;
    };
    let mut queue = vec![root.ino];
    let mut seen = std::collections::HashSet::new();
    while let Some(dir) = queue.pop() {
        if seen.len() >= MAX_NODES || !seen.insert(dir) {
            continue;
        }
        let Ok(listing) = guest.list(dir) else {
            continue;
        };
        for (name, attr) in listing.entries() {
            if listing.unreadable(name).is_some() {
                // A damaged inode fails alone: its lookup, not the listing.
                assert!(guest.lookup(dir, name).is_err());
                continue;
            }
            // What a listing names, a lookup and a stat find (a damaged directory may name
            // one file twice, so the attributes may be the other one's).
            assert!(guest.lookup(dir, name).is_ok());
            assert!(guest.attr(attr.ino).is_ok());
            match attr.kind {
                GuestKind::Directory => queue.push(attr.ino),
                GuestKind::Symlink => {
                    let _ = guest.read_link(attr.ino);
                }
                GuestKind::File => {
                    for at in [0, attr.size.saturating_sub(4096)] {
                        if let Ok(bytes) = guest.read(attr.ino, at, 65536) {
                            assert_eq!(bytes.len() as u64, attr.size.saturating_sub(at).min(65536));
                        }
                    }
                }
                _ => {}
            }
        }
    }
}
