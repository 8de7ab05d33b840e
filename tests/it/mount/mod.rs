//! Real mounts (`rpfs mount`, FUSE) used as users use them, with the tools they use: `find`,
//! `ls`, `cmp`, `qemu-img compare`, `e2fsck`, `cp`, `mkdir`/`rmdir`. One module per topic: what
//! a mount shows and reads, changes through it, and the daemon's life; the fixture store of
//! three generations they share is here.

mod changes;
mod daemon;
mod reads;

use std::fs;
use std::path::PathBuf;

use rand::RngCore;

use crate::common::images::{KIB, MIB, change_blocks, ext4_image, file_tree, mixed_image};
use crate::common::mount::MountGuard;
use crate::common::store::TestStore;
use crate::common::sys::{require_tool, rng, seed, sh};

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
