//! The command-line front end: turns arguments into engine requests, prints results, and maps
//! errors to documented exit codes. Results go to standard output, diagnostics to standard error.

pub mod args;
mod failure;
mod mount;
mod output;
mod progress;
mod store;

pub use failure::{Failure, exit, failure};
use store::{default_store, load_catalog, open_store};

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use rpfs::engine::create::{Consistency, CreateRequest};
use rpfs::engine::restore::RestoreRequest;
use rpfs::engine::vms::VmSpec;
use rpfs::engine::{Engine, catalog::split_point_path, schedule};
use rpfs::resource;
use rpfs::store::records::{
    ConfigSource, ConsistencyMode, DiskType, Orchestration, RetentionPolicy,
};

use args::{
    Cli, CollectionCommand, Command, ConsistencyArg, DefaultConsistencyArg, DiskTypeArg,
    OrchestrationArg, PointCommand, VmCommand,
};
use output::{human, print_json, say};
use progress::Bar;

/// Runs one command.
pub fn run(cli: Cli) -> Result<(), Failure> {
    let dir = cli.store.clone().unwrap_or_else(default_store);
    match cli.command {
        Command::Init {
            block_size,
            format,
            compression,
        } => {
            let bs = rpfs::engine::validate_block_size_for(block_size, format)?;
            let options = rpfs::engine::InitOptions {
                block_size: bs,
                version: format,
                compression,
            };
            let engine = store::init(&dir, options)?;
            say!(
                "initialised store {} at {} (block size {}, {} compression)",
                engine.header().store_id,
                dir.display(),
                human(u64::from(bs)),
                compression
            );
            Ok(())
        }
        Command::Vm(cmd) => vm(&open_store(&dir)?, cmd),
        Command::Collection(cmd) => collection(&open_store(&dir)?, cmd),
        Command::Point(cmd) => point(&open_store(&dir)?, cmd),
        Command::Restore {
            point,
            to,
            disk,
            mode,
        } => {
            let engine = open_store(&dir)?;
            let (c, n) = split_point_path(&point)?;
            let cat = engine.catalog()?;
            let (coll, p) = cat.point(c, n)?;
            let json = resource::point(engine.header().store_id, coll, cat.vm_by_id(p.vm_id), p);
            let json = serde_json::to_vec_pretty(&json)
                .map_err(|e| failure(exit::FAILURE, e.to_string()))?;
            let req = RestoreRequest {
                collection: c.to_string(),
                name: n.to_string(),
                to,
                disk,
                documents: vec![(resource::POINT_DOCUMENT.to_string(), json)],
                mode,
            };
            let out = engine.restore(&req, &Bar::new())?;
            for name in &out.leftovers_removed {
                eprintln!(
                    "removed {}, left by a restore that was interrupted",
                    req.to.join(name).display()
                );
            }
            say!(
                "restored {point} to {}: {} files, {} of images ({} of data written, verified), {:.2} s",
                req.to.display(),
                out.files.len(),
                human(out.image_bytes),
                human(out.bytes_written),
                out.elapsed.as_secs_f64()
            );
            Ok(())
        }
        Command::Cat { point, disk } => cat(&open_store(&dir)?, &point, &disk),
        Command::Mount(args) => mount::mount(&dir, args),
        Command::Umount { mountpoint } => mount::umount(&mountpoint),
        Command::Check {
            read_data,
            repair,
            yes,
        } => check(&open_store(&dir)?, read_data, repair, yes),
        Command::Prune {
            collection,
            dry_run,
        } => prune(&open_store(&dir)?, collection.as_deref(), dry_run),
        Command::RunDue => run_due(&open_store(&dir)?),
        Command::Stats { json } => {
            let stats = open_store(&dir)?.stats()?;
            if json {
                return print_json(&stats);
            }
            output::stats(&stats);
            Ok(())
        }
        Command::Migrate { from, json } => migrate(&open_store(&dir)?, &from, json),
    }
}

/// `rpfs migrate --from OLD [--json]`: one line per point copied, then a summary.
fn migrate(engine: &Engine, from: &Path, json: bool) -> Result<(), Failure> {
    let old = open_store(from)?;
    let out = if json {
        engine.migrate_from(&old, &rpfs::engine::progress::Silent)?
    } else {
        engine.migrate_from(&old, &Bar::new())?
    };
    if json {
        let copied: Vec<_> = out
            .copied
            .iter()
            .map(|p| {
                serde_json::json!({
                    "collection": p.collection,
                    "point": p.point,
                    "bytesRead": p.bytes_read,
                    "bytesStored": p.bytes_stored,
                })
            })
            .collect();
        return print_json(&serde_json::json!({
            "from": from,
            "vmsAdded": out.vms_added,
            "collectionsAdded": out.collections_added,
            "copied": copied,
            "skipped": out.skipped,
        }));
    }
    for p in &out.copied {
        say!(
            "copied {}/{}: read {}, stored {} (verified)",
            p.collection,
            p.point,
            human(p.bytes_read),
            human(p.bytes_stored)
        );
    }
    say!(
        "migrated {} into {}: VMs added {}, collections added {}, restore points copied {}, \
         already here {}",
        from.display(),
        engine.header().store_id,
        out.vms_added.len(),
        out.collections_added.len(),
        out.copied.len(),
        out.skipped
    );
    Ok(())
}

/// `rpfs prune [COLLECTION] [--dry-run]`: one line per point, the same with and without
/// `--dry-run`, then what was (or would be) deleted.
fn prune(engine: &Engine, collection: Option<&str>, dry_run: bool) -> Result<(), Failure> {
    let names: Vec<String> = match collection {
        Some(c) => vec![c.to_string()],
        None => load_catalog(engine)?
            .collections
            .iter()
            .filter(|c| c.schedule.as_ref().is_some_and(|s| s.retain.is_some()))
            .map(|c| c.name.clone())
            .collect(),
    };
    for name in names {
        let (decisions, deleted) = engine.prune(&name, dry_run)?;
        for d in &decisions {
            if d.kept() {
                let rules: Vec<&str> = d.kept_by.iter().map(|r| r.name()).collect();
                say!("{name}/{}\tkeep\t{}", d.point, rules.join(","));
            } else {
                say!("{name}/{}\tdelete", d.point);
            }
        }
        let doomed = decisions.iter().filter(|d| !d.kept()).count();
        if dry_run {
            say!(
                "{name}: would delete {doomed} of {} restore points (dry run)",
                decisions.len()
            );
        } else {
            say!(
                "{name}: deleted {} of {} restore points",
                deleted.len(),
                decisions.len()
            );
        }
    }
    Ok(())
}

/// `rpfs run-due`: runs what is due once; fails when a run failed or found the VM busy.
fn run_due(engine: &Engine) -> Result<(), Failure> {
    let reports = engine.run_due()?;
    if reports.is_empty() {
        say!("nothing is due");
    }
    let mut worst = None;
    for r in &reports {
        let run = &r.run;
        let pruned = if run.pruned.is_empty() {
            String::new()
        } else {
            format!("; pruned {}", run.pruned.join(", "))
        };
        match &run.error {
            None => say!("{}/{}: {}{pruned}", r.collection, run.point, run.result),
            Some(e) => {
                eprintln!(
                    "{}/{}: {}: {e}{pruned}",
                    r.collection, run.point, run.result
                );
                let code = if run.result == "Busy" {
                    exit::BUSY
                } else {
                    exit::FAILURE
                };
                worst = Some(worst.map_or(code, |w: i32| w.max(code)));
            }
        }
    }
    match worst {
        Some(code) => Err(failure(
            code,
            "a scheduled run did not create its point (see above)",
        )),
        None => Ok(()),
    }
}

/// `rpfs check [--read-data] [--repair [--yes]]`.
fn check(engine: &Engine, read_data: bool, repair: bool, yes: bool) -> Result<(), Failure> {
    let started = Instant::now();
    let report = if repair {
        engine.repair(yes, &Bar::new())?
    } else {
        engine.check(read_data, &Bar::new())?
    };
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    for n in &report.notes {
        eprintln!("note: {n}");
    }
    let unreachable = report.unreachable.len();
    let mut remaining = 0;
    for p in &report.problems {
        // A repair speaks of the unreachable files itself, below.
        if repair && report.unreachable.iter().any(|u| p.starts_with(u.as_str())) {
            continue;
        }
        remaining += 1;
        eprintln!("problem: {p}");
    }
    if repair {
        // What was removed (format 1: exactly the unreachable files; format 2: what the sweep
        // freed of them).
        let keys = if yes {
            &report.removed
        } else {
            &report.unreachable
        };
        for key in keys {
            if yes {
                say!("removed {key} (referenced by no committed point)");
            } else {
                say!("would remove {key} (referenced by no committed point)");
            }
        }
        for p in &report.damaged_points {
            say!(
                "cannot keep restore point {p} whole: it is damaged (see the problems above); delete it or restore what still reads"
            );
        }
    }
    say!(
        "checked {} VMs, {} collections, {} restore points, {} disk restore points, {} packs{}: {} problems{}, {:.2} s",
        report.vms,
        report.collections,
        report.points,
        report.disk_points,
        report.packs,
        if read_data || repair {
            format!(", {} blocks verified", report.blocks_verified)
        } else {
            String::new()
        },
        remaining,
        match (repair, yes) {
            (false, _) => String::new(),
            (true, false) =>
                format!(", {unreachable} unreachable files to remove (run again with --yes)"),
            (true, true) => format!(", {} unreachable files removed", report.removed.len()),
        },
        started.elapsed().as_secs_f64()
    );
    // A dry run that found files to remove has something left to do, like a problem.
    if remaining > 0 || (repair && !yes && unreachable > 0) {
        Err(failure(
            exit::DAMAGED,
            format!("check found {} problems", remaining.max(unreachable)),
        ))
    } else {
        Ok(())
    }
}

fn vm(engine: &Engine, cmd: VmCommand) -> Result<(), Failure> {
    match cmd {
        VmCommand::Add(a) => {
            let config = match (a.config_file, a.config_command) {
                (Some(f), _) => ConfigSource::File(f),
                (None, Some(c)) => ConfigSource::Command(c),
                (None, None) => ConfigSource::None,
            };
            let spec = VmSpec {
                name: a.name,
                disks: a.disks,
                disk_types: a
                    .disk_types
                    .into_iter()
                    .map(|(n, t)| {
                        let t = match t {
                            DiskTypeArg::Managed => DiskType::Managed,
                            DiskTypeArg::Ultra => DiskType::Ultra,
                            DiskTypeArg::Ephemeral => DiskType::Ephemeral,
                            DiskTypeArg::Shared => DiskType::Shared,
                        };
                        (n, t)
                    })
                    .collect(),
                orchestration: match a.orchestration {
                    OrchestrationArg::Standalone => Orchestration::Standalone,
                    OrchestrationArg::AvailabilitySet => Orchestration::AvailabilitySet,
                    OrchestrationArg::VmssFlexible => Orchestration::VmssFlexible,
                    OrchestrationArg::VmssUniform => Orchestration::VmssUniform,
                },
                config,
                pre_script: a.pre_script,
                post_script: a.post_script,
                script_timeout_secs: a.script_timeout,
            };
            let vm = engine.add_vm(&spec)?;
            say!(
                "added VM {} ({}) with {} disks",
                vm.name,
                vm.id,
                vm.disks.len()
            );
            Ok(())
        }
        VmCommand::List { json } => {
            let cat = load_catalog(engine)?;
            if json {
                return print_json(&cat.vms);
            }
            output::vm_table(&cat);
            Ok(())
        }
        VmCommand::Show { name, json } => {
            let cat = load_catalog(engine)?;
            let vm = cat.vm(&name)?;
            if json {
                return print_json(vm);
            }
            output::vm_details(&cat, vm);
            Ok(())
        }
        VmCommand::Rename { old, new } => {
            let vm = engine.rename_vm(&old, &new)?;
            say!("renamed VM {old} to {} ({})", vm.name, vm.id);
            Ok(())
        }
        VmCommand::Set { name, min_interval } => {
            let Some(text) = min_interval else {
                return Err(failure(exit::USAGE, "nothing to set: give --min-interval"));
            };
            let secs = if text == "off" {
                None
            } else {
                let d = humantime::parse_duration(&text).map_err(|e| {
                    failure(
                        exit::USAGE,
                        format!("minimum interval '{text}' is not a duration like 20m or 1h: {e}"),
                    )
                })?;
                Some(d.as_secs())
            };
            let vm = engine.set_vm_min_interval(&name, secs)?;
            match vm.min_interval_secs {
                Some(s) => say!(
                    "VM {}: at most one restore point every {}",
                    vm.name,
                    humantime::format_duration(std::time::Duration::from_secs(s))
                ),
                None => say!("VM {}: no minimum interval between restore points", vm.name),
            }
            Ok(())
        }
        VmCommand::Remove { name } => {
            let vm = engine.remove_vm(&name)?;
            say!("removed VM {} ({})", vm.name, vm.id);
            Ok(())
        }
    }
}

fn collection(engine: &Engine, cmd: CollectionCommand) -> Result<(), Failure> {
    let store_id = engine.header().store_id;
    match cmd {
        CollectionCommand::Create { name, vm, location } => {
            let c = engine.create_collection(&name, &vm, location.as_deref())?;
            say!("created collection {} for VM {vm} ({})", c.name, c.id);
            Ok(())
        }
        CollectionCommand::List { json } => {
            let cat = load_catalog(engine)?;
            if json {
                let all: Vec<_> = cat
                    .collections
                    .iter()
                    .map(|c| resource::collection(store_id, &cat, c))
                    .collect();
                return print_json(&all);
            }
            output::collection_table(&cat);
            Ok(())
        }
        CollectionCommand::Show { name, json } => {
            let cat = load_catalog(engine)?;
            let c = cat.collection(&name)?;
            if json {
                return print_json(&resource::collection(store_id, &cat, c));
            }
            output::collection_details(&cat, c);
            Ok(())
        }
        CollectionCommand::Set {
            name,
            exclude,
            include_all_disks,
            consistency,
            schedule,
            retain,
        } => {
            // Everything is checked before anything is written: the schedule here, the disks by
            // the defaults' own write, which comes first.
            let schedule = schedule_change(engine, &name, schedule.as_deref(), retain.as_deref())?;
            let exclude = if include_all_disks {
                Some(Vec::new())
            } else if exclude.is_empty() {
                None
            } else {
                Some(exclude)
            };
            let consistency = consistency.map(|c| match c {
                DefaultConsistencyArg::Application => Some(ConsistencyMode::ApplicationConsistent),
                DefaultConsistencyArg::Filesystem => Some(ConsistencyMode::FileSystemConsistent),
                DefaultConsistencyArg::Crash => Some(ConsistencyMode::CrashConsistent),
                DefaultConsistencyArg::Default => None,
            });
            if schedule.is_none() || exclude.is_some() || consistency.is_some() {
                let c = engine.set_collection_defaults(&name, exclude, consistency)?;
                say!(
                    "collection {}: new points exclude [{}], consistency {}",
                    c.name,
                    c.defaults.exclude_disks.join(", "),
                    c.defaults.consistency.map_or("default", |m| m.as_str())
                );
            }
            if let Some((interval, policy)) = schedule {
                let c = engine.set_schedule(&name, interval, policy)?;
                match &c.schedule {
                    Some(s) => say!(
                        "collection {}: a restore point every {}, keeping {}; next at {}",
                        c.name,
                        humantime::format_duration(std::time::Duration::from_secs(s.interval_secs)),
                        s.retain
                            .as_ref()
                            .map_or("all".to_string(), schedule::policy_text),
                        s.next_run
                    ),
                    None => say!("collection {}: no schedule", c.name),
                }
            }
            Ok(())
        }
        CollectionCommand::Delete { name, force } => {
            let out = engine.delete_collection(&name, force)?;
            for w in &out.warnings {
                eprintln!("warning: {w}");
            }
            say!(
                "deleted collection {name} and {} restore points, freed {}",
                out.points_deleted,
                human(out.freed_bytes)
            );
            Ok(())
        }
    }
}

/// A schedule as `collection set` sets it: the interval (None: off) and the policy.
type Schedule = (Option<std::time::Duration>, Option<RetentionPolicy>);

/// The schedule change `collection set` asks for, checked: None when it asks none.
fn schedule_change(
    engine: &Engine,
    name: &str,
    schedule: Option<&str>,
    retain: Option<&str>,
) -> Result<Option<Schedule>, Failure> {
    if schedule.is_none() && retain.is_none() {
        return Ok(None);
    }
    let current = load_catalog(engine)?.collection(name)?.schedule.clone();
    let interval = match schedule {
        Some("off") => {
            if retain.is_some() {
                return Err(failure(
                    exit::USAGE,
                    "--retain needs a schedule: it cannot go with --schedule off",
                ));
            }
            return Ok(Some((None, None)));
        }
        Some(text) => schedule::parse_interval(text)?,
        None => match &current {
            Some(s) => std::time::Duration::from_secs(s.interval_secs),
            None => {
                return Err(failure(
                    exit::USAGE,
                    format!(
                        "collection '{name}' has no schedule: give --schedule INTERVAL with \
                         --retain"
                    ),
                ));
            }
        },
    };
    let policy = match retain {
        Some("all") => None,
        Some(text) => Some(schedule::parse_policy(text)?),
        None => current.and_then(|s| s.retain),
    };
    if let Some(p) = &policy {
        engine.check_policy(name, p)?;
    }
    Ok(Some((Some(interval), policy)))
}

fn point(engine: &Engine, cmd: PointCommand) -> Result<(), Failure> {
    let store_id = engine.header().store_id;
    match cmd {
        PointCommand::Create {
            collection,
            name,
            exclude,
            consistency,
        } => {
            let req = CreateRequest {
                collection,
                name,
                exclude,
                consistency: consistency.map(|c| match c {
                    ConsistencyArg::Application => Consistency::Application,
                    ConsistencyArg::Filesystem => Consistency::FileSystem,
                    ConsistencyArg::Crash => Consistency::Crash,
                }),
            };
            let out = engine.create_point(&req, &Bar::new())?;
            for w in &out.warnings {
                eprintln!("warning: {w}");
            }
            let size: u64 = out.point.disks.iter().map(|d| d.size).sum();
            let frozen = out
                .frozen
                .map(|f| format!(", frozen {:.3} s", f.as_secs_f64()))
                .unwrap_or_default();
            say!(
                "created restore point {}/{} ({}, {} disks): read {}, stored {} ({:.1}% of {}), {:.2} s{frozen}",
                out.collection,
                out.point.name,
                out.point.consistency_mode.as_str(),
                out.point.disks.len(),
                human(out.bytes_read),
                human(out.bytes_stored),
                out.bytes_stored as f64 * 100.0 / size.max(1) as f64,
                human(size),
                out.elapsed.as_secs_f64()
            );
            Ok(())
        }
        PointCommand::List { collection, json } => {
            let cat = load_catalog(engine)?;
            let coll_id = match &collection {
                Some(c) => Some(cat.collection(c)?.id),
                None => None,
            };
            let points: Vec<_> = cat
                .points
                .iter()
                .filter(|p| coll_id.is_none_or(|id| p.collection_id == id))
                .collect();
            if json {
                let all: Vec<_> = points
                    .iter()
                    .filter_map(|p| {
                        let c = cat.collection_by_id(p.collection_id)?;
                        Some(resource::point(store_id, c, cat.vm_by_id(p.vm_id), p))
                    })
                    .collect();
                return print_json(&all);
            }
            output::point_table(&cat, &points);
            Ok(())
        }
        PointCommand::Show { point, json } => {
            let cat = load_catalog(engine)?;
            let (c, n) = split_point_path(&point)?;
            let (coll, p) = cat.point(c, n)?;
            if json {
                return print_json(&resource::point(store_id, coll, cat.vm_by_id(p.vm_id), p));
            }
            let paged = engine.header().version == rpfs::store::format::PAGED;
            output::point_details(coll, p, paged);
            Ok(())
        }
        PointCommand::Delete { point } => {
            let (c, n) = split_point_path(&point)?;
            let out = engine.delete_point(c, n)?;
            for w in &out.warnings {
                eprintln!("warning: {w}");
            }
            say!(
                "deleted restore point {point}, freed {}",
                human(out.freed_bytes)
            );
            Ok(())
        }
    }
}

fn cat(engine: &Engine, point: &str, disk: &str) -> Result<(), Failure> {
    let stdout = std::io::stdout();
    if stdout.is_terminal() {
        return Err(failure(
            exit::USAGE,
            "refusing to write a disk image to a terminal; redirect standard output",
        ));
    }
    let catalog = load_catalog(engine)?;
    let (c, n) = split_point_path(point)?;
    let (_, p) = catalog.point(c, n)?;
    let image = engine.open_disk(c, p, disk)?;
    let mut out = std::io::BufWriter::with_capacity(4 << 20, stdout.lock());
    let chunk = 4u64 << 20;
    let mut buf = vec![0u8; chunk as usize];
    let mut offset = 0;
    while offset < image.size() {
        let n = image.read_at(offset, &mut buf)?;
        out.write_all(&buf[..n])
            .map_err(|e| failure(exit::FAILURE, format!("writing standard output: {e}")))?;
        offset += n as u64;
    }
    out.flush()
        .map_err(|e| failure(exit::FAILURE, format!("writing standard output: {e}")))
}
