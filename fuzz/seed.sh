#!/usr/bin/env bash
# Writes the seed corpora under fuzz/corpus from a small real store (run from the repo root
# after `cargo build`). The fuzzers and tests/it/fuzz_replay.rs grow and replay them.
set -euo pipefail
cd "$(dirname "$0")/.."
rpfs=target/debug/rpfs
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export RPFS_STORE=$work/store
head -c 40960 /dev/urandom > "$work/os.img"
{ yes "restore point seed text" || true; } | head -c 24576 >> "$work/os.img"
head -c 12288 /dev/urandom > "$work/data.img"
$rpfs init --block-size 4K >/dev/null
$rpfs vm add vm --disk "os=$work/os.img" --disk "data=$work/data.img" >/dev/null
$rpfs collection create c --vm vm >/dev/null
$rpfs point create c p1 >/dev/null
dd if=/dev/urandom of="$work/os.img" bs=4096 count=2 seek=3 conv=notrunc status=none
$rpfs point create c p2 >/dev/null
for t in records block_map pack_index name vfs_ops; do mkdir -p "fuzz/corpus/$t"; done
n=0
while IFS= read -r f; do
  case "$f" in
    *.map) cp "$f" "fuzz/corpus/block_map/seed-$((n++)).map" ;;
    *.pack) cp "$f" "fuzz/corpus/pack_index/seed-$((n++)).pack" ;;
    *.json|*.store|*.config) cp "$f" "fuzz/corpus/records/seed-$((n++))-$(basename "$f")" ;;
  esac
done < <(find "$RPFS_STORE" -type f ! -path '*/locks/*' | sort)
for name in p1 2026-11-26T10-00-00Z "../x" "a/b" "" ".hidden" "x y" "ünïcödé" \
  "$(printf 'n%.0s' {1..100})"; do
  printf '%s' "$name" > "fuzz/corpus/name/seed-$((n++))"
done
# Index segments are not written by the CLI yet: a unit test writes small ones.
cargo test --lib --features testing store::index::tests::write_fuzz_seeds -- --ignored >/dev/null
for i in 1 2 3 4 5 6; do head -c $((i * 24)) /dev/urandom > "fuzz/corpus/vfs_ops/seed-$i"; done
# lookup(1,"c") → lookup(2,"p1") → readdir; and a read of a disk image.
printf '\x01\x01\x01c\x01\x02\x02p1\x02\x02\x0d\x00\x10\x00\x00\x00\x00\x00\x00\xff\xff\x00\x00\x00\x00\x00\x00' \
  > fuzz/corpus/vfs_ops/seed-walk
# Guest filesystems: small ext4 (with and without extents, ext2) and FAT images of a tree with a
# nested file, a symlink and a hard link (fuzz with -max_len=262144).
mkdir -p fuzz/corpus/guest_fs "$work/tree/d/e"
echo hello > "$work/tree/d/e/f"; ln -s d/e/f "$work/tree/link"; ln "$work/tree/d/e/f" "$work/tree/hard"
for opts in "-t ext4 -O ^has_journal,^resize_inode" "-t ext4 -O ^has_journal,^resize_inode,^extent,^64bit,^metadata_csum" "-t ext2"; do
  mkfs.ext4 -q -F $opts -b 1024 -N 16 -d "$work/tree" "$work/g.img" 128k 2>/dev/null
  cp "$work/g.img" "fuzz/corpus/guest_fs/seed-$((n++))-ext"
done
for s in 1 2; do
  rm -f "$work/g.img"; truncate -s $((32 + s * 32))k "$work/g.img"
  mkfs.fat -F 12 -s "$s" "$work/g.img" >/dev/null
  mcopy -s -i "$work/g.img" "$work/tree/d" ::/
  cp "$work/g.img" "fuzz/corpus/guest_fs/seed-$((n++))-fat"
done
# Frame packs (format 3) are not written by the engine yet: the module's own fixtures seed them.
cargo test --lib --features testing store::frames::tests::write_fuzz_seeds -- --ignored >/dev/null
echo "seeded: $(find fuzz/corpus -type f | wc -l) inputs" >&2
