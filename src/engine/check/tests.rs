//! Unit tests of the store check: the record rules and the block ranges it reports.

use super::*;
use crate::store::records::{ConsistencyMode, DiskPointRecord, DiskSpec, DiskType};

fn vm(disks: &[&str]) -> VmRecord {
    VmRecord {
        id: Uuid::new_v4(),
        name: "vm".into(),
        created: String::new(),
        orchestration: Default::default(),
        disks: disks
            .iter()
            .enumerate()
            .map(|(i, n)| DiskSpec {
                id: Uuid::new_v4(),
                name: n.to_string(),
                path: "/dev/null".into(),
                disk_type: DiskType::Managed,
                lun: (i > 0).then(|| i as u32 - 1),
                added_as: None,
            })
            .collect(),
        config: Default::default(),
        config_added_as: None,
        pre_script: None,
        post_script: None,
        script_timeout_secs: 60,
        min_interval_secs: None,
    }
}

fn point(vm: &VmRecord, name: &str) -> PointRecord {
    PointRecord {
        id: Uuid::new_v4(),
        name: name.into(),
        collection_id: Uuid::new_v4(),
        vm_id: vm.id,
        seq: 1,
        created: String::new(),
        vm_name: vm.name.clone(),
        consistency_mode: ConsistencyMode::CrashConsistent,
        disks: vm
            .disks
            .iter()
            .map(|d| DiskPointRecord {
                drp_id: Uuid::new_v4(),
                disk_id: d.id,
                name: d.name.clone(),
                lun: d.lun,
                size: 4096,
                source: d.path.clone(),
                new_blocks: 1,
                stored_bytes: 1,
                has_pack: true,
                found_pages: 0,
            })
            .collect(),
        excluded: Vec::new(),
        config_len: 0,
        block_size: 4096,
    }
}

#[test]
fn records_the_cli_writes_pass_the_rules() {
    let v = vm(&["os", "data"]);
    let p = point(&v, "p1");
    let mut rules = RecordRules::default();
    assert_eq!(vm_rules(v.id, &v), Vec::<String>::new());
    assert_eq!(rules.point(v.id, p.id, &p), Vec::<String>::new());
    assert_eq!(point_disk_rules("p", &p, Some(&v)), Vec::<String>::new());
    assert_eq!(
        disk_point_ids_unique("vm", &[p.clone(), point(&v, "p2")]),
        Vec::<String>::new()
    );
}

#[test]
fn each_broken_rule_is_one_finding() {
    let mut v = vm(&["os", "data", "latest"]);
    v.disks[1].name = "os".into();
    v.disks[2].id = v.disks[0].id;
    let found = vm_rules(Uuid::new_v4(), &v).join("\n");
    for want in [
        "the record holds id",
        "'latest' is reserved",
        "disk name 'os' is used 2 times",
        "disk id",
    ] {
        assert!(found.contains(want), "{want}: {found}");
    }

    let v = vm(&["os", "data"]);
    let mut p = point(&v, "collection.json");
    p.disks[1].name = "os".into();
    p.disks[1].disk_id = Uuid::new_v4();
    let mut rules = RecordRules::default();
    let found = rules.point(v.id, p.id, &p).join("\n");
    assert!(found.contains("must not end in .json"), "{found}");
    let found = point_disk_rules("restore point c/x", &p, Some(&v)).join("\n");
    assert!(found.contains("disk name 'os' is used 2 times"), "{found}");
    assert!(found.contains("is not a disk of VM 'vm'"), "{found}");
    // The same id met twice in the store.
    let found = rules.point(v.id, p.id, &p).join("\n");
    assert!(found.contains("is already the id of"), "{found}");

    let p1 = point(&v, "p1");
    let mut p2 = point(&v, "p2");
    p2.disks[0].drp_id = p1.disks[0].drp_id;
    let found = disk_point_ids_unique("vm", &[p1, p2]);
    assert!(
        found.len() == 1 && found[0].contains("used by restore points p1, p2"),
        "{found:?}"
    );
}

#[test]
fn block_ranges() {
    assert_eq!(ranges(&[]), "");
    assert_eq!(ranges(&[3]), "3");
    assert_eq!(ranges(&[3, 17, 18, 19, 21]), "3, 17-19, 21");
}
