//! What issue 16's choice of granularity depends on, measured on a real image: the LZ4 ratio
//! and speed of compressing it in units of 4, 16 and 64 KiB (all-zero units skipped, and a unit
//! kept raw when LZ4 saves under 1/32 of it, as rpfs stores blocks), and the speed of xxh3-128
//! and BLAKE3 (unkeyed and keyed) over 4 KiB pages and 64 KiB blocks. One thread: figures are
//! per core.
//!
//! Usage: `cargo run --release --example unit_costs -- IMAGE [MAX_MIB]` (default 512 MiB read).

use std::fs::File;
use std::io::Read;
use std::time::Instant;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// The key of the keyed hash (any key costs the same).
const KEY: [u8; 32] = [7; 32];

/// A hash, reduced to one byte of its output.
type HashFn = dyn Fn(&[u8]) -> u8;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: unit_costs IMAGE [MAX_MIB]"))?;
    let max_mib: usize = args.next().map_or(Ok(512), |s| s.parse())?;
    let mut data = Vec::new();
    File::open(&path)?
        .take((max_mib * MIB) as u64)
        .read_to_end(&mut data)?;
    data.truncate(data.len() / (64 * KIB) * (64 * KIB));
    println!(
        "{path}: {} MiB read, {} MiB of it in non-zero 64 KiB blocks",
        data.len() / MIB,
        data.chunks(64 * KIB)
            .filter(|c| c.iter().any(|&b| b != 0))
            .count()
            * 64
            / 1024
    );

    println!("\n| unit | non-zero units | stored / non-zero bytes | LZ4 speed (MB/s of input) |");
    println!("|---|---|---|---|");
    for unit in [4 * KIB, 16 * KIB, 64 * KIB] {
        let nonzero: Vec<&[u8]> = data
            .chunks(unit)
            .filter(|c| c.iter().any(|&b| b != 0))
            .collect();
        let (mut units, mut input, mut stored) = (0usize, 0usize, 0usize);
        let t = Instant::now();
        for c in nonzero {
            let z = lz4_flex::block::compress(c);
            units += 1;
            input += c.len();
            stored += if z.len() > c.len() - c.len() / 32 {
                c.len()
            } else {
                z.len()
            };
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "| {} KiB | {units} | {:.3} | {:.0} |",
            unit / KIB,
            stored as f64 / input.max(1) as f64,
            input as f64 / secs / 1e6
        );
    }

    println!("\n| hash | over 4 KiB pages (MB/s) | over 64 KiB blocks (MB/s) |");
    println!("|---|---|---|");
    let hashes: [(&str, &HashFn); 3] = [
        ("xxh3-128", &|c| xxhash_rust::xxh3::xxh3_128(c) as u8),
        ("BLAKE3", &|c| blake3::hash(c).as_bytes()[0]),
        ("BLAKE3 keyed", &|c| {
            blake3::keyed_hash(&KEY, c).as_bytes()[0]
        }),
    ];
    let mut fold = 0u8;
    for (name, f) in hashes {
        let rate = |unit: usize| {
            let t = Instant::now();
            // Folded into a value that is printed, so that no hash is optimised away.
            let acc = data.chunks(unit).fold(0u8, |a, c| a ^ f(c));
            (data.len() as f64 / t.elapsed().as_secs_f64() / 1e6, acc)
        };
        let ((small, a), (large, b)) = (rate(4 * KIB), rate(64 * KIB));
        fold ^= a ^ b;
        println!("| {name} | {small:.0} | {large:.0} |");
    }
    println!("\n(every hash folded: {fold})");
    Ok(())
}
