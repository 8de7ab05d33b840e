//! Inode numbers: which node a number names, and how many times the kernel was given it.
//!
//! Two ranges, so that browsing a guest filesystem costs no entry here per file:
//! - Nodes of the catalog (collections, points, their files and directories) get numbers from 1
//!   on, kept in a table while the kernel holds them (or a listing named them).
//! - A file of a guest filesystem is numbered `fs << GUEST_SHIFT | guest inode`, where `fs`, from
//!   one on, is the filesystem's own number, given once per (point, disk, partition) for the
//!   life of the mount: a guest number is computed, never stored, and names the same file for
//!   the life of the mount, even while its filesystem is closed as idle (it reopens on demand).
//!   The filesystems' numbers cost one key (36 bytes) per filesystem ever entered.
//!
//! Invariants: a number names one node while the kernel holds it (from the lookup that gave it
//! until the `forget` that returns it), and a catalog node keeps its number while it is in the
//! table; the root is never forgotten. A lookup takes its count ([`Inodes::hold`]) in the same
//! critical section that finds or assigns the number, so a `forget` racing it can never drop a
//! number the kernel is about to be given. What the table holds grows with the nodes the kernel
//! holds and the catalog's size, never with guest files seen (their lookups are counted by
//! their filesystem, which keeps their paths).

use std::collections::HashMap;

use uuid::Uuid;

use super::node::{Node, ROOT_INO};

/// Guest files are numbered above this many bits: guest inode numbers must be below 2^40.
pub const GUEST_SHIFT: u32 = 40;
const GUEST_MASK: u64 = (1 << GUEST_SHIFT) - 1;

/// A guest filesystem: (point id, disk id, partition number or 0 for the whole disk).
pub type GuestKey = (Uuid, Uuid, u32);

struct Slot {
    node: Node,
    /// Lookups the kernel has not forgotten.
    lookups: u64,
}

/// The two-way map between nodes and inode numbers, and the kernel's lookup counts.
pub struct Inodes {
    by_node: HashMap<Node, u64>,
    slots: HashMap<u64, Slot>,
    next: u64,
    /// Guest filesystems by number (index + 1), and their numbers by key.
    fs_keys: Vec<GuestKey>,
    fs_numbers: HashMap<GuestKey, u64>,
}

impl Default for Inodes {
    fn default() -> Self {
        Inodes {
            by_node: HashMap::from([(Node::Root, ROOT_INO)]),
            slots: HashMap::from([(
                ROOT_INO,
                Slot {
                    node: Node::Root,
                    lookups: 1,
                },
            )]),
            next: ROOT_INO + 1,
            fs_keys: Vec::new(),
            fs_numbers: HashMap::new(),
        }
    }
}

impl Inodes {
    /// The inode number of `node`, assigning one on first sight; `None` for a guest file whose
    /// own number does not fit below 2^40.
    pub fn ino(&mut self, node: Node) -> Option<u64> {
        if let Node::Guest(p, d, n, ino) = node {
            if ino > GUEST_MASK {
                return None;
            }
            let fs = match self.fs_numbers.get(&(p, d, n)) {
                Some(&fs) => fs,
                None => {
                    self.fs_keys.push((p, d, n));
                    let fs = self.fs_keys.len() as u64;
                    self.fs_numbers.insert((p, d, n), fs);
                    fs
                }
            };
            return Some(fs << GUEST_SHIFT | ino);
        }
        if let Some(&ino) = self.by_node.get(&node) {
            return Some(ino);
        }
        let ino = self.next;
        self.next += 1;
        self.by_node.insert(node, ino);
        self.slots.insert(ino, Slot { node, lookups: 0 });
        Some(ino)
    }

    /// The node `ino` names, if it names one.
    pub fn node(&self, ino: u64) -> Option<Node> {
        let fs = ino >> GUEST_SHIFT;
        if fs == 0 {
            return self.slots.get(&ino).map(|s| s.node);
        }
        let (p, d, n) = *self.fs_keys.get(usize::try_from(fs - 1).ok()?)?;
        Some(Node::Guest(p, d, n, ino & GUEST_MASK))
    }

    /// The number of `node` for a lookup about to answer the kernel with it: found or assigned,
    /// and counted, at once. A guest file's count is its filesystem's to keep.
    pub fn hold(&mut self, node: Node) -> Option<u64> {
        let ino = self.ino(node)?;
        if let Some(slot) = self.slots.get_mut(&ino) {
            slot.lookups = slot.lookups.saturating_add(1);
        }
        Some(ino)
    }

    /// The kernel forgets `n` of its lookups of `ino`; a catalog node it holds no more leaves
    /// the table. For a guest file, says which (filesystem, guest inode) to tell.
    pub fn forget(&mut self, ino: u64, n: u64) -> Option<(GuestKey, u64)> {
        if ino == ROOT_INO {
            return None;
        }
        if ino >> GUEST_SHIFT != 0 {
            return match self.node(ino)? {
                Node::Guest(p, d, part, guest) => Some(((p, d, part), guest)),
                _ => None,
            };
        }
        let slot = self.slots.get_mut(&ino)?;
        slot.lookups = slot.lookups.saturating_sub(n);
        if slot.lookups == 0 {
            let node = slot.node;
            self.slots.remove(&ino);
            self.by_node.remove(&node);
        }
        None
    }

    /// Drops the numbers of catalog nodes the kernel does not hold and `keep` rejects (nodes of
    /// points and collections that are gone).
    pub fn prune(&mut self, keep: impl Fn(&Node) -> bool) {
        let gone: Vec<u64> = self
            .slots
            .iter()
            .filter(|(_, s)| s.lookups == 0 && !keep(&s.node))
            .map(|(&ino, _)| ino)
            .collect();
        for ino in gone {
            if let Some(slot) = self.slots.remove(&ino) {
                self.by_node.remove(&slot.node);
            }
        }
    }

    /// Catalog nodes the kernel holds or a listing named (never zero: the root is there).
    #[allow(clippy::len_without_is_empty, reason = "the root is always there")]
    pub fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_while_held_and_forgotten_after() {
        let mut t = Inodes::default();
        assert_eq!(t.ino(Node::Root), Some(ROOT_INO));
        let p = Uuid::new_v4();
        let a = t.ino(Node::Point(p)).expect("ino");
        let b = t.ino(Node::PointJson(p)).expect("ino");
        assert_ne!(a, b);
        assert_eq!(t.ino(Node::Point(p)), Some(a));
        assert_eq!(t.node(a), Some(Node::Point(p)));
        assert_eq!(t.node(0), None);
        assert_eq!(t.node(u64::MAX), None);
        assert_eq!(t.node(b + 1), None);
        assert_eq!(t.hold(Node::Point(p)), Some(a));
        assert_eq!(t.hold(Node::Point(p)), Some(a));
        t.forget(a, 1);
        assert_eq!(t.node(a), Some(Node::Point(p)), "one lookup left");
        t.forget(a, 1);
        assert_eq!(t.node(a), None, "forgotten");
        assert_ne!(
            t.ino(Node::Point(p)),
            Some(a),
            "a new number, never the old one"
        );
        t.forget(ROOT_INO, 10);
        assert_eq!(t.node(ROOT_INO), Some(Node::Root));
    }

    #[test]
    fn guest_files_are_numbered_without_a_table_entry() {
        let mut t = Inodes::default();
        let (p, d) = (Uuid::new_v4(), Uuid::new_v4());
        let before = t.len();
        let inos: Vec<u64> = (0..10_000)
            .map(|i| t.ino(Node::Guest(p, d, 1, i)).expect("ino"))
            .collect();
        assert_eq!(t.len(), before, "listing guest files costs nothing here");
        for (i, &ino) in inos.iter().enumerate() {
            assert_eq!(t.node(ino), Some(Node::Guest(p, d, 1, i as u64)));
        }
        let other = t.ino(Node::Guest(p, d, 2, 5)).expect("ino");
        assert_ne!(other, inos[5], "another filesystem, another range");
        assert_eq!(t.ino(Node::Guest(p, d, 1, 1 << GUEST_SHIFT)), None);
        assert_eq!(t.hold(Node::Guest(p, d, 1, 7)), Some(inos[7]));
        assert_eq!(
            t.len(),
            before,
            "its filesystem counts a guest file's lookups"
        );
        assert_eq!(t.forget(inos[7], 1), Some(((p, d, 1), 7)));
        assert_eq!(
            t.node(inos[7]),
            Some(Node::Guest(p, d, 1, 7)),
            "still computed"
        );
    }

    #[test]
    fn pruning_keeps_what_the_kernel_holds() {
        let mut t = Inodes::default();
        let (gone, held) = (Uuid::new_v4(), Uuid::new_v4());
        let a = t.ino(Node::Point(gone)).expect("ino");
        let b = t.hold(Node::Point(held)).expect("ino");
        t.prune(|_| false);
        assert_eq!(t.node(a), None);
        assert_eq!(t.node(b), Some(Node::Point(held)));
    }
}
