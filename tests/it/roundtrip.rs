//! Round trip through real images: an ext4 disk made with `mkfs.ext4 -d` and changed with
//! `debugfs`, and a disk of mixed random and zero regions changed at random blocks. Six
//! generations, a point per generation, every point read back through `read_at` and through
//! `rpfs restore`, then deletes from the start, middle and end of the chain.

use std::fs;

use rand::RngCore;

use crate::common::images::{
    KIB, MIB, change_blocks, ext4_image, file_tree, mixed_image, write_sparse,
};
use crate::common::store::{TestStore, read_image};
use crate::common::sys::{require_tool, rng, seed, sh};

#[test]
fn six_generations_round_trip_then_delete_first_middle_last() {
    require_tool("debugfs");
    require_tool("e2fsck");
    let mut rng = rng(seed());
    let ts = TestStore::new(64 * KIB as u32);
    let tree = ts.path("tree");
    file_tree(&tree, 40, &mut rng);
    let os = ts.path("os.img");
    ext4_image(&tree, &os, 32 * MIB);
    let data = ts.path("data.img");
    let mut mixed = mixed_image(&data, 24 * MIB + 12 * KIB, &mut rng);
    ts.vm("vm1", &[("os", &os), ("data", &data)], "c1");

    let mut gens: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for g in 0..6 {
        if g > 0 {
            let file = ts.path(&format!("new{g}.bin"));
            let mut content = vec![0u8; 300 * KIB as usize];
            rng.fill_bytes(&mut content);
            fs::write(&file, content).expect("write file");
            sh(&format!(
                "debugfs -w -R 'write {} /d1/gen{g}.bin' '{}'",
                file.display(),
                os.display()
            ));
            change_blocks(&data, &mut mixed, 64 * KIB, 0.03, &mut rng);
        }
        gens.push((fs::read(&os).expect("read os"), mixed.clone()));
        ts.create("c1", &format!("g{g}"));
    }

    let verify = |alive: &[usize]| {
        let engine = ts.reopen();
        let cat = engine.catalog().expect("catalog");
        let names: Vec<String> = cat.points.iter().map(|p| p.name.clone()).collect();
        let want: Vec<String> = alive.iter().map(|g| format!("g{g}")).collect();
        assert_eq!(names, want);
        for &g in alive {
            let name = format!("g{g}");
            assert!(
                read_image(&engine, "c1", &name, "os") == gens[g].0,
                "os of {name} differs"
            );
            assert!(
                read_image(&engine, "c1", &name, "data") == gens[g].1,
                "data of {name} differs"
            );
        }
    };
    verify(&[0, 1, 2, 3, 4, 5]);

    // Through the CLI: restore writes sparse images that match, and the ext4 one is clean.
    for (g, (os_gen, data_gen)) in gens.iter().enumerate() {
        let out = ts.path(&format!("restore{g}"));
        ts.cli()
            .args(["restore", &format!("c1/g{g}"), "--to"])
            .arg(&out)
            .assert()
            .success();
        assert!(
            fs::read(out.join("os.img")).expect("os") == *os_gen,
            "restored os g{g}"
        );
        assert!(
            fs::read(out.join("data.img")).expect("data") == *data_gen,
            "restored data g{g}"
        );
        sh(&format!("e2fsck -fn '{}'", out.join("os.img").display()));
        let listing = sh(&format!(
            "debugfs -R 'ls -l /d1' '{}'",
            out.join("os.img").display()
        ));
        for h in 1..=5 {
            assert_eq!(
                listing.contains(&format!("gen{h}.bin")),
                h <= g,
                "g{g} listing: {listing}"
            );
        }
        fs::remove_dir_all(&out).expect("cleanup");
    }

    let before = ts.size();
    for (victim, alive) in [
        (0, vec![1, 2, 3, 4, 5]),
        (3, vec![1, 2, 4, 5]),
        (5, vec![1, 2, 4]),
    ] {
        ts.cli()
            .args(["point", "delete", &format!("c1/g{victim}")])
            .assert()
            .success();
        verify(&alive);
    }
    let after = ts.size();
    assert!(
        after < before,
        "deleting three points freed nothing ({before} -> {after})"
    );
    ts.cli().args(["check", "--read-data"]).assert().success();

    // The chain goes on from what is left.
    change_blocks(&data, &mut mixed, 64 * KIB, 0.02, &mut rng);
    ts.create("c1", "g6");
    let engine = ts.reopen();
    assert!(read_image(&engine, "c1", "g6", "data") == mixed);
    assert!(read_image(&engine, "c1", "g6", "os") == gens[5].0);
}

#[test]
fn deleting_the_base_frees_only_what_it_alone_used() {
    let mut rng = rng(seed());
    let ts = TestStore::new(64 * KIB as u32);
    let disk = ts.path("d.img");
    let mut content = vec![0u8; 16 * MIB as usize];
    rng.fill_bytes(&mut content);
    write_sparse(&disk, &content);
    ts.vm("vm1", &[("d", &disk)], "c1");
    let first = content.clone();
    ts.create("c1", "a");
    change_blocks(&disk, &mut content, 64 * KIB, 0.25, &mut rng);
    ts.create("c1", "b");
    let full = ts.size();
    ts.engine.delete_point("c1", "a").expect("delete base");
    let freed = full - ts.size();
    // "a" alone held the 25% of blocks that "b" overwrote (random data, stored raw).
    let expect = content.len() as u64 / 4;
    assert!(
        freed >= expect * 95 / 100 && freed <= expect * 105 / 100 + 64 * KIB,
        "freed {freed}, expected about {expect}"
    );
    assert!(read_image(&ts.reopen(), "c1", "b", "d") == content);
    assert!(first != content);
}
