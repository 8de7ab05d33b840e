#!/usr/bin/env bash
# End-to-end demo on a local store under ./demo (in the current working directory):
# build rpfs, make a small VM from generated images (a real ext4 OS disk and a data disk),
# take restore points with changes between them, list them, restore one and verify it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/scripts/deps.sh"
rpfs_install_deps

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "build"
cargo build --release --quiet --manifest-path "$here/Cargo.toml"
rpfs="$here/target/release/rpfs"

demo="$PWD/demo"
rm -rf "$demo"
mkdir -p "$demo/files/etc" "$demo/files/srv" "$demo/expected"
export RPFS_STORE="$demo/store"
cd "$demo"

step "make a VM: a 256 MiB ext4 OS disk (mkfs.ext4 -d) and a 64 MiB data disk"
for i in $(seq 1 30); do head -c $((RANDOM * 4)) /dev/urandom > "files/srv/blob$i"; done
for i in $(seq 1 30); do seq 1 $((RANDOM % 2000 + 1)) | sed "s/^/config line $i: /" > "files/etc/conf$i"; done
mkfs.ext4 -q -F -b 4096 -E root_owner=0:0 -d files os.img 256M
truncate -s 64M data.img
dd if=/dev/urandom of=data.img bs=1M count=24 seek=8 conv=notrunc status=none
cat > domain.xml <<XML
<domain type='kvm'><name>demo-vm</name><memory unit='MiB'>1024</memory></domain>
XML
echo "freeze/thaw log" > hooks.log

"$rpfs" init
"$rpfs" vm add demo-vm --disk os=os.img --disk data=data.img --config-file domain.xml \
  --pre-script "echo freeze >> $demo/hooks.log" --post-script "echo thaw >> $demo/hooks.log"
"$rpfs" collection create daily --vm demo-vm --location westeurope

change() { # $1: generation — add a file to the guest filesystem, overwrite data blocks
  head -c 2M /dev/urandom > "new$1.bin"
  debugfs -w -R "write new$1.bin /srv/new$1.bin" os.img >/dev/null 2>&1
  for j in 1 2 3 4; do
    dd if=/dev/urandom of=data.img bs=64K count=4 seek=$(( (RANDOM % 256) * 4 )) conv=notrunc status=none
  done
}

step "take three restore points with changes between them"
for g in 1 2 3; do
  [ "$g" -gt 1 ] && change "$g"
  cp --sparse=always os.img "expected/os-$g.img"
  cp --sparse=always data.img "expected/data-$g.img"
  "$rpfs" point create daily "rp$g"
done
cat hooks.log

step "list and show"
"$rpfs" vm list
"$rpfs" point list
"$rpfs" point show daily/rp2
"$rpfs" collection show daily --json > collection.json && head -n 12 collection.json

step "restore daily/rp2 and verify it"
"$rpfs" restore daily/rp2 --to restored
cmp restored/os.img expected/os-2.img
cmp restored/data.img expected/data-2.img
cmp restored/vm-config domain.xml
e2fsck -fn restored/os.img >/dev/null 2>&1
listing=$(debugfs -R "ls /srv" restored/os.img 2>/dev/null | tr -s ' ' '\n')
grep -qx 'new2.bin' <<<"$listing" || { echo "rp2 lacks /srv/new2.bin" >&2; exit 1; }
if grep -qx 'new3.bin' <<<"$listing"; then
  echo "rp2 holds a file created after it" >&2; exit 1
fi
echo "/srv in the restored filesystem holds new2.bin and not new3.bin"
du -h --apparent-size restored/os.img; du -h restored/os.img
echo "restored images are byte-identical to generation 2; e2fsck finds the filesystem clean"

step "delete the first point; the others still read identically"
"$rpfs" point delete daily/rp1
"$rpfs" cat daily/rp3 --disk os | cmp - expected/os-3.img
"$rpfs" check --read-data
du -sh store

step "schedule hourly points with a retention policy; run what is due; see what pruning keeps"
"$rpfs" collection set daily --schedule 1h --retain last=3,daily=7
"$rpfs" run-due
"$rpfs" prune daily --dry-run
"$rpfs" collection show daily | grep -E '^(schedule|last run|next run):'

step "mount the store, take a point with mkdir, copy files out of it"
mkdir -p mnt
"$rpfs" mount mnt --log-file "$demo/mount.log"
trap '"$rpfs" umount "$demo/mnt" 2>/dev/null || true' EXIT
ls -l mnt/daily
change 4
mkdir mnt/daily/by-mkdir
ls -l mnt/daily/by-mkdir mnt/daily/by-mkdir/disks
readlink mnt/daily/latest
cmp mnt/daily/by-mkdir/disks/os.img os.img
# Single files come straight out of files/, as any user the guest's modes allow.
ls -l mnt/daily/by-mkdir/files/os/srv/new4.bin
cp mnt/daily/by-mkdir/files/os/srv/new4.bin restored-from-files.bin
cmp restored-from-files.bin new4.bin
cmp mnt/daily/rp3/files/os/srv/new3.bin new3.bin
test ! -e mnt/daily/rp2/files/os/srv/new3.bin
echo "copied /srv/new4.bin out of daily/by-mkdir/files/os/: identical; rp2 predates /srv/new3.bin"
if [ "$(id -u)" -eq 0 ]; then
  mkdir -p guest
  mount -o loop,ro mnt/daily/by-mkdir/disks/os.img guest
  cp guest/srv/new4.bin restored-file.bin
  umount guest
  cmp restored-file.bin new4.bin
  echo "copied /srv/new4.bin out of daily/by-mkdir through a loop mount: identical"
else
  echo "(not root: skipping the loop mount of the guest filesystem)"
fi
"$rpfs" umount mnt
trap - EXIT
echo; echo "demo finished: store in $demo/store"
