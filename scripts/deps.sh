#!/usr/bin/env bash
# Installs the Debian packages rpfs's demo and tests use, when any is missing.
# Sourced by scripts/demo.sh and scripts/test.sh; needs root (or sudo) only when installing.
set -euo pipefail

# command → Debian package that provides it
declare -A RPFS_PACKAGES=(
  [mkfs.ext4]=e2fsprogs [debugfs]=e2fsprogs [e2fsck]=e2fsprogs
  [qemu-img]=qemu-utils
  [mkfs.xfs]=xfsprogs
  [losetup]=mount [mount]=mount
  [fusermount3]=fuse3
  [setpriv]=util-linux [prlimit]=util-linux
  [strace]=strace
  [sfdisk]=fdisk
  [mkfs.fat]=dosfstools [mcopy]=mtools [mkntfs]=ntfs-3g [ntfs-3g]=ntfs-3g
  [python3]=python3
)

rpfs_install_deps() {
  command -v cargo >/dev/null || {
    echo "rpfs: cargo is not installed; install Rust (https://rustup.rs) first" >&2
    exit 1
  }
  local missing=()
  for cmd in "${!RPFS_PACKAGES[@]}"; do
    command -v "$cmd" >/dev/null || missing+=("${RPFS_PACKAGES[$cmd]}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local pkgs
  pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "rpfs: installing Debian packages: $pkgs" >&2
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $pkgs >/dev/null
}
