//! Unit tests of a guest filesystem: listings, the listing cache's bound, garbage as damage.

use super::*;

/// A listing of `names` (in that order) whose entry `bad` is unreadable.
fn listing(names: &[&str], bad: usize) -> Listing {
    let mut l = Listing {
        names: Vec::new(),
        ends: Vec::new(),
        attrs: Vec::new(),
        by_name: Vec::new(),
        unreadable: vec![(bad as u32, "too many blocks".into())],
    };
    for (i, n) in names.iter().enumerate() {
        l.names.extend_from_slice(n.as_bytes());
        l.ends.push(l.names.len() as u32);
        l.attrs.push(GuestAttr {
            ino: (i as u64).saturating_add(10),
            ..GuestAttr::synthetic_dir(std::time::UNIX_EPOCH)
        });
    }
    let mut by_name: Vec<u32> = (0..names.len() as u32).collect();
    by_name.sort_unstable_by(|&a, &b| l.name(a as usize).cmp(l.name(b as usize)));
    l.by_name = by_name;
    l
}

#[test]
fn a_listing_keeps_its_order_finds_by_name_and_knows_its_unreadable_entry() {
    let l = listing(&["zeta", "alpha", "", "mid"], 3);
    let order: Vec<&[u8]> = l.entries().map(|(n, _)| n).collect();
    assert_eq!(order, [&b"zeta"[..], b"alpha", b"", b"mid"]);
    assert_eq!(l.get(b"alpha").map(|a| a.ino), Some(11));
    assert_eq!(l.get(b"zeta").map(|a| a.ino), Some(10));
    assert_eq!(l.get(b"none"), None);
    assert_eq!(l.unreadable(b"mid"), Some("too many blocks"));
    assert_eq!(l.unreadable(b"alpha"), None);
}

#[test]
fn the_listing_cache_is_bounded_by_bytes_and_keeps_the_newest() {
    let one = listing(&["a", "b", "c"], 0).bytes();
    let cache = ListingCache::new(one.saturating_mul(2));
    for dir in 0..10 {
        cache.put((1, dir), Arc::new(listing(&["a", "b", "c"], 0)));
        assert!(cache.bytes() <= one.saturating_mul(2));
    }
    assert!(cache.get((1, 9)).is_some() && cache.get((1, 0)).is_none());
    cache.put((2, 0), Arc::new(listing(&["a", "b", "c"], 0)));
    cache.drop_guest(1);
    assert_eq!(cache.bytes(), one, "only guest 2's listing is left");
    // Larger than the whole cache: kept, as the newest.
    let tiny = ListingCache::new(1);
    tiny.put((1, 1), Arc::new(listing(&["a"], 0)));
    assert!(tiny.get((1, 1)).is_some());
}

#[test]
fn garbage_with_a_signature_is_damage_not_a_crash() {
    for fs in [FsType::Ext4, FsType::Fat, FsType::Ntfs] {
        let mut junk = vec![0xA5u8; 64 * 1024];
        junk[1024 + 56..1024 + 58].copy_from_slice(&[0x53, 0xEF]);
        let g = Guest::new(fs, Arc::new(junk));
        let e = g.root().expect_err("garbage");
        assert!(matches!(e, GuestError::Damaged(_)), "{fs:?}: {e:?}");
        // Unknown numbers are simply not there.
        assert!(g.attr(12345).is_err());
    }
}
