//! The sled store's persist rate (syncs/s and records/s) next to a raw write+fdatasync loop
//! on the same disk, so the cost of sled plus our checksums is visible (STACK.md §4 measured
//! the same pairs). Run: `cargo bench -p chubby-server --bench storage`; set CHUBBY_BENCH_DIR
//! to measure another disk (default: the system temporary directory).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use chubby_protocol::{Ballot, NodeId, Slot, Value};
use chubby_server::paxos::{LogEntry, PersistBatch};
use chubby_server::storage::{SledStorage, Storage};

const VALUE_BYTES: usize = 128;

fn dir(name: &str) -> PathBuf {
    let base = std::env::var_os("CHUBBY_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = base.join(format!("chubby-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn batch(first: u64, records: u64) -> PersistBatch {
    let entries = (first..first + records)
        .map(|s| {
            let value = Value {
                commands: vec![vec![(s % 251) as u8; VALUE_BYTES]],
            };
            (
                Slot(s),
                LogEntry {
                    ballot: Ballot {
                        round: 1,
                        node: NodeId(1),
                    },
                    value,
                },
            )
        })
        .collect();
    PersistBatch {
        promised: Some(Ballot {
            round: first,
            node: NodeId(1),
        }),
        entries,
        ..PersistBatch::default()
    }
}

/// One measurement: (records per batch, batches) -> (syncs/s, records/s, p50 µs, p99 µs).
type Measure = fn(u64, u64) -> (f64, f64, f64, f64);

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() - 1) as f64 * p) as usize]
}

/// (syncs/s, records/s, p50 µs, p99 µs)
fn sled(records_per_batch: u64, batches: u64) -> (f64, f64, f64, f64) {
    let dir = dir("sled");
    let mut store = SledStorage::open(&dir).expect("open sled");
    let mut latencies = Vec::new();
    let started = Instant::now();
    for b in 0..batches {
        let t = Instant::now();
        store
            .persist(&batch(1 + b * records_per_batch, records_per_batch))
            .expect("persist");
        latencies.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    summary(&mut latencies, batches, records_per_batch, seconds)
}

fn raw(records_per_batch: u64, batches: u64) -> (f64, f64, f64, f64) {
    let dir = dir("raw");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))
        .expect("open");
    let record = [0x5au8; VALUE_BYTES];
    let mut latencies = Vec::new();
    let started = Instant::now();
    for _ in 0..batches {
        let t = Instant::now();
        for _ in 0..records_per_batch {
            file.write_all(&record).expect("write");
        }
        file.sync_data().expect("fdatasync");
        latencies.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    summary(&mut latencies, batches, records_per_batch, seconds)
}

fn main() {
    println!(
        "persist rate, {VALUE_BYTES}-byte values, one sync per batch, dir {:?}",
        dir("x").parent().expect("has parent")
    );
    println!(
        "{:<40} {:>10} {:>12} {:>10} {:>10}",
        "what", "syncs/s", "records/s", "p50 µs", "p99 µs"
    );
    let rows: [(&str, Measure, u64, u64); 4] = [
        ("sled store, 1 record per batch", sled, 1, 2_000),
        ("raw append + fdatasync, 1 per sync", raw, 1, 2_000),
        ("sled store, 100 records per batch", sled, 100, 300),
        ("raw 100 appends + 1 fdatasync", raw, 100, 300),
    ];
    for (name, f, per_batch, batches) in rows {
        let (syncs, records, p50, p99) = f(per_batch, batches);
        println!("{name:<40} {syncs:>10.0} {records:>12.0} {p50:>10.0} {p99:>10.0}");
    }
}

/// (syncs/s, records/s, p50 µs, p99 µs) of one run.
fn summary(
    latencies: &mut [f64],
    batches: u64,
    records_per_batch: u64,
    seconds: f64,
) -> (f64, f64, f64, f64) {
    (
        batches as f64 / seconds,
        (batches * records_per_batch) as f64 / seconds,
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
    )
}
