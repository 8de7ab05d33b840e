//! Metadata records, stored as JSON inside an envelope (see `envelope.rs`).
//!
//! Invariants: records are identified by UUIDs that never change; names are only labels, so a
//! VM rename rewrites one record and breaks no link. A point record is the commit point of a
//! restore point: it is published last, after every file it references is durable, and a point
//! whose record exists is complete. Records are replaced whole, never edited in place.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::block::Compression;

/// The store's own header record (`rpfs.store`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreHeader {
    /// Always "rpfs".
    pub format: String,
    /// On-disk format version.
    pub version: u32,
    pub store_id: Uuid,
    /// Block size of every disk chain in the store, in bytes.
    pub block_size: u32,
    /// What new blocks are compressed with; stores made before the choice existed are LZ4.
    #[serde(default)]
    pub compression: Compression,
    /// RFC 3339 creation time.
    pub created: String,
}

/// How the VM is deployed; uniform scale sets cannot have restore points.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Orchestration {
    #[default]
    Standalone,
    AvailabilitySet,
    VmssFlexible,
    VmssUniform,
}

/// Kind of disk; only `managed` disks can be captured.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DiskType {
    #[default]
    Managed,
    Ultra,
    Ephemeral,
    Shared,
}

impl DiskType {
    /// True for disk types restore points can include.
    pub fn is_supported(self) -> bool {
        self == DiskType::Managed
    }
}

/// One disk of a source VM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskSpec {
    /// Identity of the disk's incremental chain.
    pub id: Uuid,
    pub name: String,
    /// Raw image file or block device.
    pub path: PathBuf,
    pub disk_type: DiskType,
    /// `None` for the OS disk, else the data disk's LUN.
    pub lun: Option<u32>,
    /// What `path` was when the VM was added; `None` in records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_as: Option<AddedAs>,
}

/// What a source path (a disk or a configuration file) was when its VM was added. Capture opens
/// the path as it was then: through a symbolic link only if the path was one, and only the same
/// kind of file.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct AddedAs {
    /// The path itself (its last component) was a symbolic link.
    pub symlink: bool,
    /// A directory on the path was a symbolic link. When none was, capture opens the path
    /// through no link at all (RESOLVE_NO_SYMLINKS), so that a directory swapped for a link to
    /// another (holding a file of the same name) is refused too.
    pub linked_dirs: bool,
    /// What it named.
    pub kind: PathKind,
}

/// The kinds of file a source path may name.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    File,
    BlockDevice,
}

/// Where the VM configuration captured at each point comes from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ConfigSource {
    #[default]
    None,
    File(PathBuf),
    Command(String),
}

/// A source VM (`vms/<id>/vm.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmRecord {
    pub id: Uuid,
    pub name: String,
    pub created: String,
    pub orchestration: Orchestration,
    /// OS disk first, then data disks in LUN order.
    pub disks: Vec<DiskSpec>,
    pub config: ConfigSource,
    /// What the configuration file's path was when the VM was added (see [`AddedAs`]); `None`
    /// without a configuration file and in records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_added_as: Option<AddedAs>,
    pub pre_script: Option<String>,
    pub post_script: Option<String>,
    pub script_timeout_secs: u64,
    /// Shortest time allowed between two creations for this VM (any collection); None: no
    /// limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_interval_secs: Option<u64>,
}

/// A restore point collection (`vms/<vm>/collections/<id>.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CollectionRecord {
    pub id: Uuid,
    pub name: String,
    pub vm_id: Uuid,
    pub location: String,
    pub created: String,
    /// What a creation applies when it does not say otherwise (`mkdir` never does).
    #[serde(default)]
    pub defaults: PointDefaults,
    /// The outcome of the last creation or deletion made through the mount.
    #[serde(default)]
    pub last_operation: Option<LastOperation>,
    /// Points taken at regular intervals, and which to keep (`rpfs collection set --schedule`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleRecord>,
}

/// A collection's schedule: a point every `interval_secs`, pruned by `retain`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleRecord {
    pub interval_secs: u64,
    /// Which points to keep; None keeps them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain: Option<RetentionPolicy>,
    /// When the next point is due (RFC 3339).
    pub next_run: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<ScheduledRun>,
}

/// Keep-rules: each keeps the newest point of each of the most recent N periods that have
/// points (`last`: the N newest points); a point kept by any rule stays.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct RetentionPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yearly: Option<u32>,
}

/// The outcome of one scheduled run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledRun {
    /// When it ran (RFC 3339).
    pub at: String,
    /// The point it created, or tried to.
    pub point: String,
    /// "Succeeded", "Busy" (another creation ran; retried at the next tick) or "Failed".
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Points the retention policy deleted in this run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<String>,
}

/// Defaults of a collection for new points (`rpfs collection set`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct PointDefaults {
    /// Disks left out unless a creation names its own exclusions.
    pub exclude_disks: Vec<String>,
    /// Consistency asked for unless a creation names one; `None`: the engine's default.
    pub consistency: Option<ConsistencyMode>,
}

/// The outcome of one creation or deletion, kept so a user can read why `mkdir` failed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LastOperation {
    /// "create" or "delete".
    pub operation: String,
    /// The restore point's name.
    pub point: String,
    pub finished: String,
    /// "Succeeded" or "Failed".
    pub status: String,
    /// The error, when it failed.
    pub error: Option<String>,
}

/// Consistency a point was asked for, or achieved (Azure's `consistencyMode`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ConsistencyMode {
    CrashConsistent,
    FileSystemConsistent,
    ApplicationConsistent,
}

impl ConsistencyMode {
    /// Azure's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsistencyMode::CrashConsistent => "CrashConsistent",
            ConsistencyMode::FileSystemConsistent => "FileSystemConsistent",
            ConsistencyMode::ApplicationConsistent => "ApplicationConsistent",
        }
    }
}

/// One disk restore point inside a point record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskPointRecord {
    /// Names the block map (`<drp_id>.map`) and, when blocks were stored, the pack.
    pub drp_id: Uuid,
    pub disk_id: Uuid,
    pub name: String,
    pub lun: Option<u32>,
    /// Size of the disk at capture, in bytes.
    pub size: u64,
    /// The source path at capture.
    pub source: PathBuf,
    /// Blocks stored by this point (changed since the previous point, or all for a first one).
    pub new_blocks: u64,
    /// Bytes this point added to the store for this disk (pack and map).
    pub stored_bytes: u64,
    /// True when a pack `<drp_id>.pack` was written.
    pub has_pack: bool,
    /// Format 2: pages of the disk this point did not store because they were found stored
    /// already (by another disk, VM or point; pages unchanged since the previous point are not
    /// counted). 0 in format 1 and in records written before it existed.
    #[serde(default)]
    pub found_pages: u64,
}

/// A disk left out of a point.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExcludedDisk {
    pub disk_id: Uuid,
    pub name: String,
}

/// A VM restore point (`vms/<vm>/points/<id>.json`); its existence commits the point.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PointRecord {
    pub id: Uuid,
    pub name: String,
    pub collection_id: Uuid,
    pub vm_id: Uuid,
    /// Creation order among the VM's points; the chain follows it.
    pub seq: u64,
    pub created: String,
    /// VM name when the point was taken.
    pub vm_name: String,
    pub consistency_mode: ConsistencyMode,
    pub disks: Vec<DiskPointRecord>,
    pub excluded: Vec<ExcludedDisk>,
    /// Length of the captured configuration (`<id>.config`).
    pub config_len: u64,
    pub block_size: u32,
}

/// An operation in flight on a VM (`vms/<vm>/pending.json`); present only while one runs or
/// after a crash, when recovery finishes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingOp {
    pub op: PendingKind,
    pub point_id: Uuid,
    /// Names a reflink clone of a source disk may have had for an instant (where O_TMPFILE is
    /// not supported), removed by recovery.
    pub clones: Vec<PathBuf>,
    pub started: String,
    /// Set while the VM may be frozen (its pre-script was started and its post-script has not
    /// finished): recovery then runs the post-script, so a crash never leaves the VM frozen.
    #[serde(default)]
    pub frozen: bool,
    /// Collection of the point, for the environment of a post-script run by recovery.
    #[serde(default)]
    pub collection: String,
    /// Name of the point, for the same environment (empty in markers written before it was
    /// kept).
    #[serde(default)]
    pub point: String,
    /// Garbage collection still owes work (a repack deferred for lack of space): whoever ends
    /// the operation runs it again before removing the marker.
    #[serde(default)]
    pub gc_owed: bool,
}

/// What a pending operation was doing.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PendingKind {
    Create,
    Delete,
}

/// What a record must satisfy beyond parsing: stored content is untrusted, and names become
/// directory entries and file names (a restore writes `<disk>.img`), so every name is checked
/// before anything uses it.
pub trait Record {
    /// The names the record holds.
    fn names(&self) -> Vec<&str> {
        Vec::new()
    }
}

/// Whether `name` is safe as one path component and on a terminal: not empty, not `.` or `..`,
/// no `/` and no control characters (NUL included), at most 255 bytes. (The engine's naming
/// rules are stricter; this is the floor for anything read back from a store.)
pub fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && !name.chars().any(|c| c == '/' || c.is_control())
}

impl Record for StoreHeader {}

impl Record for PendingOp {
    fn names(&self) -> Vec<&str> {
        [self.collection.as_str(), self.point.as_str()]
            .into_iter()
            .filter(|n| !n.is_empty())
            .collect()
    }
}

impl Record for VmRecord {
    fn names(&self) -> Vec<&str> {
        std::iter::once(self.name.as_str())
            .chain(self.disks.iter().map(|d| d.name.as_str()))
            .collect()
    }
}

impl Record for CollectionRecord {
    fn names(&self) -> Vec<&str> {
        vec![self.name.as_str()]
    }
}

impl Record for PointRecord {
    fn names(&self) -> Vec<&str> {
        std::iter::once(self.name.as_str())
            .chain(std::iter::once(self.vm_name.as_str()))
            .chain(self.disks.iter().map(|d| d.name.as_str()))
            .chain(self.excluded.iter().map(|d| d.name.as_str()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VM record written before `added_as` was kept still reads, with nothing recorded.
    #[test]
    fn vm_records_without_added_as_still_read() {
        let old = r#"{"id":"6f1c1a52-9c2e-4a3e-8d0e-0b9d5f6c7a11","name":"vm1",
            "created":"2026-01-01T00:00:00Z","orchestration":"standalone",
            "disks":[{"id":"0d7f2c54-3b0e-4c8e-9a51-7e0c3f1b2d44","name":"os",
                      "path":"/var/lib/images/os.img","disk_type":"managed","lun":null}],
            "config":{"file":"/etc/vm1.xml"},"pre_script":null,"post_script":null,
            "script_timeout_secs":60}"#;
        let vm: VmRecord = serde_json::from_str(old).expect("old record");
        assert_eq!(vm.disks[0].added_as, None);
        assert_eq!(vm.config_added_as, None);
        let mut new = vm.clone();
        new.disks[0].added_as = Some(AddedAs {
            symlink: true,
            linked_dirs: false,
            kind: PathKind::BlockDevice,
        });
        let json = serde_json::to_string(&new).expect("json");
        assert!(
            json.contains(
                r#""added_as":{"symlink":true,"linked_dirs":false,"kind":"block-device"}"#
            ),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<VmRecord>(&json).expect("new"), new);
    }
}
