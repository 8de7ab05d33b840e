//! Human-readable tables and details, and JSON output.

use rpfs::engine::Catalog;
use rpfs::engine::stats::{StoreStats, Usage};
use rpfs::store::records::{CollectionRecord, ConfigSource, PointRecord, VmRecord};
use serde::Serialize;

use super::failure::{Failure, exit};

/// Writes one line to standard output. A closed pipe (`rpfs point list | head`) ends the process
/// quietly with the status a SIGPIPE death would give; any other write error is reported.
pub fn write_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{args}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("rpfs: error: writing standard output: {e}");
        std::process::exit(exit::FAILURE);
    }
}

/// `println!` that survives a closed pipe; see [`write_line`].
macro_rules! say {
    ($($arg:tt)*) => { $crate::cli::output::write_line(format_args!($($arg)*)) };
}
pub(crate) use say;

/// Bytes as "95.4 MiB".
pub fn human(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).to_string()
}

pub fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Failure {
        code: exit::FAILURE,
        message: format!("formatting JSON: {e}"),
    })?;
    say!("{text}");
    Ok(())
}

/// Prints rows as left-aligned columns.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        say!("{}", s.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
}

pub fn vm_table(cat: &Catalog) {
    let rows = cat
        .vms
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.disks
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                format!("{:?}", v.orchestration),
                cat.points_of_vm(v.id).count().to_string(),
            ]
        })
        .collect();
    table(&["NAME", "DISKS", "ORCHESTRATION", "POINTS"], rows);
}

pub fn vm_details(cat: &Catalog, vm: &VmRecord) {
    say!("name:           {}", vm.name);
    say!("id:             {}", vm.id);
    say!("created:        {}", vm.created);
    say!("orchestration:  {:?}", vm.orchestration);
    let config = match &vm.config {
        ConfigSource::None => "none".to_string(),
        ConfigSource::File(p) => format!("file {}", p.display()),
        ConfigSource::Command(c) => format!("command {c}"),
    };
    say!("configuration:  {config}");
    say!(
        "pre-script:     {}",
        vm.pre_script.as_deref().unwrap_or("none")
    );
    say!(
        "post-script:    {}",
        vm.post_script.as_deref().unwrap_or("none")
    );
    say!("script timeout: {} s", vm.script_timeout_secs);
    say!("restore points: {}", cat.points_of_vm(vm.id).count());
    say!("disks:");
    for d in &vm.disks {
        let role = d.lun.map_or("os".to_string(), |l| format!("lun {l}"));
        say!(
            "  {:<12} {:<8} {:<10} {}",
            d.name,
            role,
            format!("{:?}", d.disk_type),
            d.path.display()
        );
    }
}

pub fn collection_table(cat: &Catalog) {
    let rows = cat
        .collections
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                cat.vm_by_id(c.vm_id).map_or("?".into(), |v| v.name.clone()),
                c.location.clone(),
                cat.points_in(c.id).count().to_string(),
            ]
        })
        .collect();
    table(&["NAME", "VM", "LOCATION", "POINTS"], rows);
}

pub fn collection_details(cat: &Catalog, c: &CollectionRecord) {
    say!("name:     {}", c.name);
    say!("id:       {}", c.id);
    say!(
        "vm:       {}",
        cat.vm_by_id(c.vm_id).map_or("?", |v| v.name.as_str())
    );
    say!("location: {}", c.location);
    say!("created:  {}", c.created);
    match &c.schedule {
        None => say!("schedule: none"),
        Some(s) => {
            say!(
                "schedule: a restore point every {}, keeping {}",
                humantime::format_duration(std::time::Duration::from_secs(s.interval_secs)),
                s.retain
                    .as_ref()
                    .map_or("all".to_string(), rpfs::engine::schedule::policy_text)
            );
            match &s.last_run {
                None => say!("last run: none yet"),
                Some(r) => say!(
                    "last run: {} {} {}{}{}",
                    r.at,
                    r.point,
                    r.result,
                    r.error.as_ref().map_or(String::new(), |e| format!(": {e}")),
                    if r.pruned.is_empty() {
                        String::new()
                    } else {
                        format!("; pruned {}", r.pruned.join(", "))
                    }
                ),
            }
            say!("next run: {}", s.next_run);
        }
    }
    let points: Vec<&PointRecord> = cat.points_in(c.id).collect();
    say!("restore points: {}", points.len());
    if !points.is_empty() {
        point_table(cat, &points);
    }
}

pub fn point_table(cat: &Catalog, points: &[&PointRecord]) {
    let rows = points
        .iter()
        .map(|p| {
            let coll = cat
                .collection_by_id(p.collection_id)
                .map_or("?", |c| c.name.as_str());
            vec![
                format!("{coll}/{}", p.name),
                p.created.clone(),
                p.consistency_mode.as_str().to_string(),
                p.disks
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                human(p.disks.iter().map(|d| d.stored_bytes).sum()),
            ]
        })
        .collect();
    table(
        &["POINT", "CREATED", "CONSISTENCY", "DISKS", "STORED"],
        rows,
    );
}

/// `paged`: the store is format 2, where a point stores pages and finds some stored already.
pub fn point_details(c: &CollectionRecord, p: &PointRecord, paged: bool) {
    say!("name:        {}/{}", c.name, p.name);
    say!("id:          {}", p.id);
    say!("created:     {}", p.created);
    say!("vm:          {} ({})", p.vm_name, p.vm_id);
    say!("consistency: {}", p.consistency_mode.as_str());
    say!("config:      {} bytes", p.config_len);
    say!("disks:");
    for d in &p.disks {
        let new = if paged {
            format!(
                "{} new pages, {} stored, {} pages found stored already",
                d.new_blocks,
                human(d.stored_bytes),
                d.found_pages
            )
        } else {
            format!(
                "{} new blocks, {} stored",
                d.new_blocks,
                human(d.stored_bytes)
            )
        };
        say!(
            "  {:<12} {:>12}  {new}  ({})",
            d.name,
            human(d.size),
            d.source.display()
        );
    }
    for e in &p.excluded {
        say!("  {:<12} excluded", e.name);
    }
}

/// `rpfs stats`: the store's totals, then one row per VM and per collection (indented).
pub fn stats(s: &StoreStats) {
    say!(
        "store (format {}, {}): {} stored ({} packs, {} index, {} maps), {} logical, dedup ratio \
         {:.2}",
        s.format,
        s.compression,
        human(s.stored_bytes),
        human(s.pack_bytes),
        human(s.index_bytes),
        human(s.map_bytes),
        human(s.logical_bytes),
        s.dedup_ratio
    );
    if s.unreferenced_bytes > 0 {
        say!(
            "{} stored that no restore point references (freed by the next deletion)",
            human(s.unreferenced_bytes)
        );
    }
    let row = |name: String, points: u64, u: &Usage| {
        vec![
            name,
            points.to_string(),
            human(u.logical_bytes),
            human(u.referenced_bytes),
            human(u.shared_bytes),
            human(u.exclusive_bytes),
        ]
    };
    let mut rows = Vec::new();
    for v in &s.vms {
        rows.push(row(v.name.clone(), v.points, &v.usage));
        for c in &v.collections {
            rows.push(row(format!("  {}", c.name), c.points, &c.usage));
        }
    }
    say!("");
    table(
        &[
            "VM / COLLECTION",
            "POINTS",
            "LOGICAL",
            "STORED",
            "SHARED",
            "FREED IF DELETED",
        ],
        rows,
    );
    for w in &s.warnings {
        eprintln!("warning: {w}");
    }
}
