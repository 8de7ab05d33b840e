//! Times whole-disk sequential reads of restore points from one process that opens the store
//! once, as a long-running reader (the mount daemon) does. Used by the bench (`scripts/bench/`).
//!
//! Usage: read_passes STORE COLLECTION DISK PASSES POINT...
//! Prints one JSON object: {"POINT": [seconds of pass 1, pass 2, ...], ...}; the passes of the
//! points are interleaved so drift in the machine's state falls on all alike.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use rpfs::engine::{Engine, OpenOptions};
use rpfs::store::LocalStorage;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 6,
        "usage: read_passes STORE COLLECTION DISK PASSES POINT..."
    );
    let (store, coll, disk) = (&args[1], &args[2], &args[3]);
    let passes: usize = args[4].parse()?;
    // No block cache: every pass decodes every block, measuring resolution and decoding.
    let engine = Engine::open(
        Arc::new(LocalStorage::new(store)),
        OpenOptions {
            cache_bytes: 0,
            ..OpenOptions::default()
        },
    )?;
    let cat = engine.catalog()?;
    let mut images = Vec::new();
    for name in &args[5..] {
        let (_, p) = cat.point(coll, name)?;
        images.push((name.clone(), engine.open_disk(coll, p, disk)?));
    }
    let mut times: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut buf = vec![0u8; 4 << 20];
    for _ in 0..passes {
        for (name, image) in &images {
            let start = Instant::now();
            let mut offset = 0;
            while offset < image.size() {
                offset += image.read_at(offset, &mut buf)? as u64;
            }
            times
                .entry(name.clone())
                .or_default()
                .push(start.elapsed().as_secs_f64());
        }
    }
    println!("{}", serde_json::to_string(&times)?);
    Ok(())
}
