//! `imgblk list`: the devices imgblk serves, and ublk devices left without a daemon.

use super::{human_size, print_json, Escaped, EXIT_OK};
use crate::error::Result;
use crate::ublk::device;
use crate::ublk::registry::{self, DeviceRecord};
use serde::Serialize;

/// List ublk devices: imgblk's own, with their image, and orphaned ones.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  imgblk list\n  imgblk list --json | jq '.[].device'")]
pub struct ListArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// One row of the listing.
#[derive(Debug, Serialize)]
struct Row {
    #[serde(flatten)]
    record: DeviceRecord,
    /// live: served by its daemon; orphaned: the daemon is gone; stale: the device is gone;
    /// foreign: a ublk device imgblk did not create.
    state: &'static str,
    /// Where the device or its partitions are mounted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    mounts: Vec<device::DeviceMount>,
    /// The systemd unit that runs the daemon, if one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<String>,
}

/// Runs `imgblk list`.
pub fn run(args: ListArgs) -> Result<i32> {
    let rows = rows();
    if args.json {
        print_json(&rows)?;
        return Ok(EXIT_OK);
    }
    if rows.is_empty() {
        println!("no devices");
        return Ok(EXIT_OK);
    }
    println!(
        "{:<14} {:<8} {:>10} {:>6} {:>3} {:>8}  {:<9} IMAGE",
        "DEVICE", "FORMAT", "SIZE", "QUEUES", "RW", "PID", "STATE"
    );
    for row in rows {
        let r = &row.record;
        println!(
            "{:<14} {:<8} {:>10} {:>6} {:>3} {:>8}  {:<9} {}",
            r.device.display(),
            r.format,
            human_size(r.size),
            r.queues,
            match (r.writable, &r.overlay) {
                (true, Some(_)) => "ram",
                (true, None) => "rw",
                (false, _) => "ro",
            },
            r.pid,
            row.state,
            Escaped(r.image.display())
        );
        if let Some(unit) = &row.unit {
            println!("{:<14} (run by {unit})", "");
        }
        for m in &row.mounts {
            println!(
                "{:<14} {} mounted on {}",
                "",
                Escaped(&m.source),
                Escaped(m.target.display())
            );
        }
    }
    Ok(EXIT_OK)
}

fn rows() -> Vec<Row> {
    let records = registry::all();
    let mounts = device::ublk_mounts();
    let mut rows: Vec<Row> = records
        .iter()
        .map(|record| {
            let present = device::kernel_has_device(record.id);
            let state = match (present, record.daemon_alive()) {
                (true, true) => "live",
                (true, false) => "orphaned",
                (false, _) => "stale",
            };
            let mut record = record.clone();
            if present {
                record.queues = device::kernel_queue_count(record.id) as u16;
            }
            let unit = registry::systemd_unit(record.pid);
            let mounts = mounts
                .iter()
                .filter(|m| m.id == record.id)
                .cloned()
                .collect();
            Row {
                record,
                state,
                mounts,
                unit,
            }
        })
        .collect();
    for id in device::kernel_device_ids() {
        if records.iter().all(|r| r.id != id) {
            let mut record = DeviceRecord::new(
                id,
                format!("/dev/ublkb{id}").into(),
                "".as_ref(),
                crate::image::Format::Raw,
                0,
            );
            record.format = "?".into();
            record.pid = 0;
            record.queues = device::kernel_queue_count(id) as u16;
            rows.push(Row {
                record,
                state: "foreign",
                mounts: mounts.iter().filter(|m| m.id == id).cloned().collect(),
                unit: None,
            });
        }
    }
    rows.sort_by_key(|r| r.record.id);
    rows
}
