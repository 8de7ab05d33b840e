//! The catalog as the mount sees it: a snapshot of the store's records, reloaded when older
//! than the configured age, with the JSON documents made from it.
//!
//! Invariants: a snapshot never changes once made (its documents are made once, on first use,
//! from it alone); one reload runs at a time, and whoever waited for it uses a reload that
//! started after it asked; a newer snapshot is never replaced by an older one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use uuid::Uuid;

use super::errno::FsError;
use super::node::Node;
use crate::engine::{Catalog, Engine};
use crate::store::records::{CollectionRecord, PointRecord};

/// A catalog, and the documents made from it.
pub struct Snapshot {
    /// When the load that produced it started: anything committed before then is in it.
    pub loaded: Instant,
    pub cat: Catalog,
    /// Generated JSON of this snapshot's collections and points, made on first use.
    documents: Mutex<HashMap<Node, Arc<Vec<u8>>>>,
}

impl Snapshot {
    pub fn new(cat: Catalog, loaded: Instant) -> Snapshot {
        Snapshot {
            loaded,
            cat,
            documents: Mutex::new(HashMap::new()),
        }
    }

    pub fn point(&self, id: Uuid) -> Result<&PointRecord, FsError> {
        self.cat.point_by_id(id).ok_or(FsError::NotFound)
    }

    pub fn collection(&self, id: Uuid) -> Result<&CollectionRecord, FsError> {
        self.cat.collection_by_id(id).ok_or(FsError::NotFound)
    }

    /// The newest point of a collection.
    pub fn latest(&self, collection: Uuid) -> Option<&PointRecord> {
        self.cat.points_in(collection).max_by_key(|p| p.seq)
    }

    /// The document of `node`, made by `make` the first time it is asked for.
    pub fn document(
        &self,
        node: Node,
        make: impl FnOnce() -> Result<Vec<u8>, FsError>,
    ) -> Result<Arc<Vec<u8>>, FsError> {
        if let Some(d) = self.documents.lock().get(&node) {
            return Ok(d.clone());
        }
        let bytes = Arc::new(make()?);
        self.documents.lock().insert(node, bytes.clone());
        Ok(bytes)
    }

    /// True when `node` belongs to something this snapshot still holds.
    pub fn holds(&self, node: &Node) -> bool {
        match *node {
            Node::Root => true,
            Node::Collection(c) | Node::CollectionJson(c) | Node::Latest(c) => {
                self.cat.collection_by_id(c).is_some()
            }
            Node::Point(p)
            | Node::PointJson(p)
            | Node::VmConfig(p)
            | Node::Disks(p)
            | Node::DiskImage(p, _)
            | Node::Partitions(p)
            | Node::PartitionDisk(p, _)
            | Node::PartitionImage(p, _, _)
            | Node::Files(p)
            | Node::FilesDisk(p, _)
            | Node::Guest(p, _, _, _) => self.cat.point_by_id(p).is_some(),
        }
    }
}

/// The current snapshot, and how it is renewed.
pub struct Snapshots {
    current: Mutex<Arc<Snapshot>>,
    /// Held while the catalog is reloaded: one reload at a time.
    reloading: Mutex<()>,
    max_age: Duration,
}

impl Snapshots {
    pub fn new(engine: &Engine, max_age: Duration) -> Result<Snapshots, FsError> {
        let first = Snapshot::new(engine.catalog()?, Instant::now());
        Ok(Snapshots {
            current: Mutex::new(Arc::new(first)),
            reloading: Mutex::new(()),
            max_age,
        })
    }

    /// The current snapshot, reloaded when older than the age allowed. The flag says whether
    /// this call loaded it.
    pub fn get(&self, engine: &Engine) -> Result<(Arc<Snapshot>, bool), FsError> {
        let current = self.current.lock().clone();
        if current.loaded.elapsed() <= self.max_age {
            return Ok((current, false));
        }
        // Whoever waited uses a reload that started after it asked.
        let asked = Instant::now();
        let _reloading = self.reloading.lock();
        let current = self.current.lock().clone();
        if current.loaded >= asked {
            return Ok((current, false));
        }
        Ok((self.load(engine)?, true))
    }

    /// Reloads now (after a change made through the mount).
    pub fn refresh(&self, engine: &Engine) -> Result<Arc<Snapshot>, FsError> {
        let _reloading = self.reloading.lock();
        self.load(engine)
    }

    /// Loads a snapshot and installs it unless a newer one is there. The caller holds
    /// `reloading`.
    fn load(&self, engine: &Engine) -> Result<Arc<Snapshot>, FsError> {
        let fresh = Arc::new(Snapshot::new(engine.catalog()?, Instant::now()));
        let mut slot = self.current.lock();
        if slot.loaded < fresh.loaded {
            *slot = fresh.clone();
        }
        Ok(fresh)
    }
}
