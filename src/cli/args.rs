//! Command-line definitions. Help text comes from these doc comments; nothing here reaches the
//! engine, which takes plain request structs built in `cli/mod.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Point-in-time, incremental restore points of virtual machines.
#[derive(Debug, Parser)]
#[command(name = "rpfs", version, about, max_term_width = 100)]
pub struct Cli {
    /// Store directory [default: /var/lib/rpfs as root, else $XDG_DATA_HOME/rpfs or
    /// ~/.local/share/rpfs]
    #[arg(long, global = true, env = "RPFS_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new, empty store
    Init {
        /// Block size of every disk chain: a power of two from 4K to 4M (K, M are binary)
        #[arg(long, default_value = "64K", value_parser = parse_size, value_name = "SIZE")]
        block_size: u64,
        /// On-disk format: 2 (4 KiB pages, deduplicated across disks and VMs; block size up to
        /// 64K) or 1 (whole blocks per disk chain, as stores made before format 2)
        #[arg(long, default_value_t = rpfs::store::format::DEFAULT)]
        format: u32,
        /// What new data is compressed with: lz4 (fastest to write and read), zstd (the same
        /// as zstd:3) or zstd:LEVEL with LEVEL 1 to 19 (fewer bytes stored, slower)
        #[arg(long, default_value = "lz4", value_parser = rpfs::store::block::Compression::parse, value_name = "CODEC")]
        compression: rpfs::store::block::Compression,
    },
    /// Manage source VMs
    #[command(subcommand)]
    Vm(VmCommand),
    /// Manage restore point collections
    #[command(subcommand)]
    Collection(CollectionCommand),
    /// Create, list, show and delete restore points
    #[command(subcommand)]
    Point(PointCommand),
    /// Write a restore point's disks (sparse raw images) and configuration to a directory
    Restore {
        /// The restore point, as COLLECTION/NAME
        point: String,
        /// Directory to write into (created 0700 if missing; not a symbolic link); existing
        /// files are never overwritten
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Restore only this disk
        #[arg(long, value_name = "DISK")]
        disk: Option<String>,
        /// Permission bits of the files written, in octal (e.g. 0640); the directories restore
        /// creates get the matching read and search bits (0640 gives 0750)
        #[arg(long, value_name = "MODE", default_value = "0600",
              value_parser = rpfs::engine::restore::parse_mode)]
        mode: u32,
    },
    /// Stream one disk of a restore point to standard output as a raw image
    Cat {
        /// The restore point, as COLLECTION/NAME
        point: String,
        /// The disk to stream
        #[arg(long, value_name = "DISK")]
        disk: String,
    },
    /// Mount the store as a filesystem of collections, restore points and disk images
    Mount(MountArgs),
    /// Unmount a mounted store (also when its daemon died)
    Umount {
        /// Where the store is mounted
        mountpoint: PathBuf,
    },
    /// Apply retention policies now: print, per point, kept (and by which rules) or deleted
    Prune {
        /// Only this collection [default: every collection with a retention policy]
        collection: Option<String>,
        /// Print the decisions and delete nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Run every schedule that is due, once, and exit (for cron or a systemd timer)
    RunDue,
    /// Copy every VM, collection and restore point of an older store (format 1) into this
    /// store, made with `rpfs init --format 2`: same names, times and contents; points already
    /// here are skipped, so an interrupted run is resumed by running it again
    Migrate {
        /// The store to copy from; migrate only reads it (opening it finishes an operation a
        /// crash interrupted there, as every command does)
        #[arg(long, value_name = "OLD_STORE_DIR")]
        from: PathBuf,
        /// Print what was done as JSON
        #[arg(long)]
        json: bool,
    },
    /// Verify the store's structure and indexes (and every block with --read-data)
    Check {
        /// Also read every stored block and verify its hash
        #[arg(long)]
        read_data: bool,
        /// Find what no committed point references (reading every block) and say what would
        /// be removed; with --yes, remove it. Damaged points are named, never removed
        #[arg(long)]
        repair: bool,
        /// With --repair: remove, rather than only list
        #[arg(long, requires = "repair")]
        yes: bool,
    },
    /// Show what the store holds: per VM and collection, logical size, stored size, bytes
    /// shared with other VMs and what deleting it would free
    Stats {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// An existing, empty directory to mount on
    pub mountpoint: PathBuf,
    /// Memory for decoded blocks, shared by all readers (K, M, G are binary)
    #[arg(long, default_value = "256M", value_parser = parse_size, value_name = "SIZE")]
    pub cache_size: u64,
    /// Let other users use the mount (the JSON resources, and files/ as the guest's modes
    /// grant everyone); the kernel then enforces permissions, and only root or the mounting
    /// user may create or delete points
    #[arg(long)]
    pub allow_other: bool,
    /// Group (name or number) that may read disk and partition images, `vm-config` and the
    /// daemon's log; without it they are the mounting user's alone, even with --allow-other
    #[arg(long, value_name = "GROUP")]
    pub image_group: Option<String>,
    /// Let `rmdir MOUNT/<collection>/<point>` delete the point
    #[arg(long)]
    pub allow_delete: bool,
    /// Stay attached and unmount on SIGINT/SIGTERM, instead of returning once mounted
    #[arg(long)]
    pub foreground: bool,
    /// Do not run the collections' schedules while mounted
    #[arg(long)]
    pub no_schedule: bool,
    /// Where the background daemon logs, a file private to the mounting user (0600, 0640 with
    /// --image-group; not a symbolic link) [default: /var/log/rpfs/mount.log as root, else
    /// $XDG_STATE_HOME/rpfs/mount.log or ~/.local/state/rpfs/mount.log]
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Add a source VM; the first --disk is the OS disk, the others data disks (LUN 0, 1, …)
    Add(VmAdd),
    /// List source VMs
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one source VM
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Rename a VM; its collections and restore points follow it
    Rename { old: String, new: String },
    /// Change a VM's settings
    Set {
        name: String,
        /// Refuse a creation within this time of the VM's newest point (e.g. 20m); `off` clears
        #[arg(long, value_name = "DURATION")]
        min_interval: Option<String>,
    },
    /// Remove a VM (refused while it has restore points); its empty collections go with it
    Remove { name: String },
}

#[derive(Debug, Args)]
pub struct VmAdd {
    /// Name of the VM
    pub name: String,
    /// A disk as NAME=PATH (raw image file or block device); repeat for data disks
    #[arg(long = "disk", value_name = "DISK=PATH", required = true, value_parser = parse_disk)]
    pub disks: Vec<(String, PathBuf)>,
    /// Type of a disk as DISK=TYPE (default managed); ultra, ephemeral and shared disks must be
    /// excluded from restore points
    #[arg(long = "disk-type", value_name = "DISK=TYPE", value_parser = parse_disk_type)]
    pub disk_types: Vec<(String, DiskTypeArg)>,
    /// How the VM is deployed; VMs in a uniform scale set cannot have restore points
    #[arg(long, value_enum, default_value_t = OrchestrationArg::Standalone)]
    pub orchestration: OrchestrationArg,
    /// File whose contents are captured as the VM configuration at every point
    #[arg(long, value_name = "PATH", conflicts_with = "config_command")]
    pub config_file: Option<PathBuf>,
    /// Command whose output is captured as the VM configuration (e.g. "virsh dumpxml vm1")
    #[arg(long, value_name = "CMD")]
    pub config_command: Option<String>,
    /// Command run before capture to freeze the VM (application consistency)
    #[arg(long, value_name = "CMD")]
    pub pre_script: Option<String>,
    /// Command run after capture to thaw the VM; runs even when capture fails
    #[arg(long, value_name = "CMD")]
    pub post_script: Option<String>,
    /// Seconds a script or configuration command may run before it is killed [default: 60]
    #[arg(long, value_name = "SECS")]
    pub script_timeout: Option<u64>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DiskTypeArg {
    Managed,
    Ultra,
    Ephemeral,
    Shared,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OrchestrationArg {
    Standalone,
    AvailabilitySet,
    VmssFlexible,
    VmssUniform,
}

#[derive(Debug, Subcommand)]
pub enum CollectionCommand {
    /// Create a restore point collection for a VM
    Create {
        name: String,
        /// The source VM
        #[arg(long)]
        vm: String,
        /// Location recorded in the collection [default: local]
        #[arg(long, value_name = "REGION")]
        location: Option<String>,
    },
    /// List collections
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one collection and its restore points
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Set a collection's defaults for new points (what `mkdir` in the mount uses)
    Set {
        name: String,
        /// Leave this disk out of new points unless told otherwise; repeat for several
        #[arg(
            long = "exclude-disk",
            value_name = "DISK",
            conflicts_with = "include_all_disks"
        )]
        exclude: Vec<String>,
        /// Include every disk by default again
        #[arg(long)]
        include_all_disks: bool,
        /// Consistency new points aim for; `default` returns to application with a
        /// pre-script, else crash
        #[arg(long, value_enum)]
        consistency: Option<DefaultConsistencyArg>,
        /// Take a point every INTERVAL (30s, 15m, 1h, 1d, 1w…), named by its UTC time; `off`
        /// stops the schedule
        #[arg(long, value_name = "INTERVAL")]
        schedule: Option<String>,
        /// Keep-rules applied after each scheduled point, e.g.
        /// last=24,hourly=48,daily=7,weekly=4,monthly=6,yearly=2 (each keeps the newest point of
        /// its N most recent periods; `all` keeps everything)
        #[arg(long, value_name = "POLICY")]
        retain: Option<String>,
    },
    /// Delete a collection; refused unless empty, or with --force, which deletes its points
    Delete {
        name: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DefaultConsistencyArg {
    Application,
    Filesystem,
    Crash,
    Default,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ConsistencyArg {
    Application,
    Filesystem,
    Crash,
}

#[derive(Debug, Subcommand)]
pub enum PointCommand {
    /// Create a restore point of the collection's VM
    Create {
        collection: String,
        name: String,
        /// Leave this disk out of the point; repeatable
        #[arg(long = "exclude-disk", value_name = "DISK")]
        exclude: Vec<String>,
        /// Consistency to aim for [default: application when the VM has a pre-script, else crash]
        #[arg(long, value_enum)]
        consistency: Option<ConsistencyArg>,
    },
    /// List restore points, of one collection or all
    List {
        collection: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one restore point (COLLECTION/NAME)
    Show {
        point: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete one restore point (COLLECTION/NAME); the others keep reading identically
    Delete { point: String },
}

/// Parses sizes like `64K`, `4M`, `65536`, `64KiB`; single-letter units are binary.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let binary = match t.char_indices().last() {
        Some((i, c)) if "kKmMgGtT".contains(c) && t[..i].trim().parse::<f64>().is_ok() => {
            format!("{} {}iB", &t[..i], c.to_ascii_uppercase())
        }
        _ => t.to_string(),
    };
    binary
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("invalid size {s:?}: {e}"))
}

fn parse_disk(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_string(), PathBuf::from(path)))
        }
        _ => Err(format!("expected DISK=PATH, got {s:?}")),
    }
}

fn parse_disk_type(s: &str) -> Result<(String, DiskTypeArg), String> {
    let (name, ty) = s
        .split_once('=')
        .ok_or_else(|| format!("expected DISK=TYPE, got {s:?}"))?;
    let ty = DiskTypeArg::from_str(ty, true).map_err(|_| {
        format!("unknown disk type {ty:?}; use managed, ultra, ephemeral or shared")
    })?;
    Ok((name.to_string(), ty))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn definitions_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
