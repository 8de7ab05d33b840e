//! Who may read what through the mount: the owners and modes the tree reports, which the kernel
//! enforces when other users are let in (`--allow-other` mounts with `default_permissions`).
//!
//! Invariants:
//! - Raw views of VM data (whole-disk images, partition images, `vm-config`: every node whose
//!   bytes are a disk's or the configuration's, see [`Node::is_raw_view`]) are 0400 to the
//!   mounting user, or 0440 with the image group (`--image-group`), whatever else the mount
//!   allows: reading them bypasses every mode inside the guest.
//! - Under `--allow-other`, a guest uid or gid never grants a host user anything: every guest
//!   file is owned by the mounting user (group: the image group if given, else the mounting
//!   user's); its owner bits are the guest owner's bits, and its group and other bits are both
//!   the guest's *other* bits, so a host user gets exactly what the guest grants everyone.
//!   setuid and setgid are dropped (as `chown` drops them); the sticky bit stays.
//! - Without `--allow-other` only the mounting user can enter the mount, and guest files keep
//!   the guest's own numbers and modes, so `cp -a` as root restores ownership.

use super::VfsOptions;

/// Owner, group and permission bits of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ownership {
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
}

/// Permission bits of a raw view without and with an image group.
const RAW_PRIVATE: u16 = 0o400;
const RAW_GROUP: u16 = 0o440;

/// The ownership of a raw view of VM data (see the module's invariants).
pub(super) fn raw_view(o: &VfsOptions) -> Ownership {
    match o.image_gid {
        Some(gid) => Ownership {
            perm: RAW_GROUP,
            uid: o.owner_uid,
            gid,
        },
        None => Ownership {
            perm: RAW_PRIVATE,
            uid: o.owner_uid,
            gid: o.owner_gid,
        },
    }
}

/// The ownership of a guest file whose guest mode is `perm` (0o7777) and owners `uid`, `gid`
/// (None where the filesystem has none), as the mount shows it.
pub(super) fn guest_file(
    o: &VfsOptions,
    perm: u16,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Ownership {
    if !o.allow_other {
        return Ownership {
            perm,
            uid: uid.unwrap_or(o.owner_uid),
            gid: gid.unwrap_or(o.owner_gid),
        };
    }
    let sticky = perm & 0o1000;
    let owner = perm & 0o700;
    let others = perm & 0o007;
    Ownership {
        perm: sticky | owner | others << 3 | others,
        uid: o.owner_uid,
        gid: o.image_gid.unwrap_or(o.owner_gid),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn options(allow_other: bool, image_gid: Option<u32>) -> VfsOptions {
        VfsOptions {
            allow_delete: false,
            allow_other,
            owner_uid: 10,
            owner_gid: 20,
            image_gid,
            catalog_max_age: Duration::ZERO,
        }
    }

    #[test]
    fn raw_views_are_private_or_shared_with_the_image_group_only() {
        let own = |perm, uid, gid| Ownership { perm, uid, gid };
        assert_eq!(raw_view(&options(true, None)), own(0o400, 10, 20));
        assert_eq!(raw_view(&options(true, Some(7))), own(0o440, 10, 7));
        assert_eq!(raw_view(&options(false, None)), own(0o400, 10, 20));
    }

    #[test]
    fn guest_owners_map_to_the_mounting_user_under_allow_other() {
        let own = |perm, uid, gid| Ownership { perm, uid, gid };
        let o = options(true, None);
        // A guest 0600 file of guest uid 65534: nobody on the host gets nothing.
        assert_eq!(
            guest_file(&o, 0o600, Some(65534), Some(65534)),
            own(0o600, 10, 20)
        );
        // Group bits never come from the guest's group.
        assert_eq!(guest_file(&o, 0o640, Some(0), Some(0)), own(0o600, 10, 20));
        assert_eq!(guest_file(&o, 0o754, Some(0), Some(0)), own(0o744, 10, 20));
        // setuid/setgid dropped, sticky kept.
        assert_eq!(guest_file(&o, 0o4755, Some(0), None), own(0o755, 10, 20));
        assert_eq!(guest_file(&o, 0o1777, None, None), own(0o1777, 10, 20));
        assert_eq!(
            guest_file(&options(true, Some(7)), 0o750, Some(1), Some(1)),
            own(0o700, 10, 7)
        );
        // Without --allow-other: the guest's own numbers and mode.
        let o = options(false, Some(7));
        assert_eq!(
            guest_file(&o, 0o4750, Some(1000), Some(100)),
            own(0o4750, 1000, 100)
        );
        assert_eq!(guest_file(&o, 0o644, None, None), own(0o644, 10, 20));
    }
}
