//! The acceptor store's persist rate (syncs/s and records/s) next to a raw write+fdatasync
//! loop on the same disk (the floor), and next to sled 0.34.7 made durable the way our
//! store used to (apply_batch + flush + fdatasync: `storage/wal.rs` says why it was
//! replaced; this row keeps the measurement that backs that). STACK.md §4 measured the same
//! pairs. Run: `cargo bench -p chubby-server --bench storage`; set CHUBBY_BENCH_DIR to
//! measure another disk (default: the system temporary directory).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use chubby_protocol::{Ballot, NodeId, Slot, Value};
use chubby_server::paxos::{LogEntry, PersistBatch};
use chubby_server::storage::{record, Storage, WalStorage};

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
            let value = Value::commands(vec![vec![(s % 251) as u8; VALUE_BYTES]]);
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
fn wal(records_per_batch: u64, batches: u64) -> (f64, f64, f64, f64) {
    let dir = dir("wal");
    let mut store = WalStorage::open(&dir).expect("open the write-ahead log");
    let (latencies, seconds) = timed(batches, |b| {
        store
            .persist(&batch(1 + b * records_per_batch, records_per_batch))
            .expect("persist");
    });
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    summary(latencies, batches, records_per_batch, seconds)
}

/// sled with the same records, made durable as our old sled store did.
fn sled(records_per_batch: u64, batches: u64) -> (f64, f64, f64, f64) {
    let dir = dir("sled");
    let db = sled::Config::new()
        .path(&dir)
        .segment_size(8 << 20)
        .flush_every_ms(None)
        .open()
        .expect("open sled");
    let db_file = std::fs::File::open(dir.join("db")).expect("sled's db file");
    let (latencies, seconds) = timed(batches, |b| {
        let mut sled_batch = sled::Batch::default();
        let persist = batch(1 + b * records_per_batch, records_per_batch);
        for (key, value) in record::encode_batch(&persist, b == 0) {
            sled_batch.insert(key, value);
        }
        db.apply_batch(sled_batch).expect("apply_batch");
        db.flush().expect("flush");
        db_file.sync_data().expect("fdatasync");
    });
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
    summary(latencies, batches, records_per_batch, seconds)
}

/// Runs `persist(b)` for each batch; returns the latencies (µs) and the total seconds.
fn timed(batches: u64, mut persist: impl FnMut(u64)) -> (Vec<f64>, f64) {
    let mut latencies = Vec::new();
    let started = Instant::now();
    for b in 0..batches {
        let t = Instant::now();
        persist(b);
        latencies.push(t.elapsed().as_secs_f64() * 1e6);
    }
    (latencies, started.elapsed().as_secs_f64())
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
    let (latencies, seconds) = timed(batches, |_| {
        for _ in 0..records_per_batch {
            file.write_all(&record).expect("write");
        }
        file.sync_data().expect("fdatasync");
    });
    let _ = std::fs::remove_dir_all(&dir);
    summary(latencies, batches, records_per_batch, seconds)
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
    let rows: [(&str, Measure, u64, u64); 6] = [
        ("write-ahead log, 1 record per batch", wal, 1, 2_000),
        ("sled 0.34.7, 1 record per batch", sled, 1, 2_000),
        ("raw append + fdatasync, 1 per sync", raw, 1, 2_000),
        ("write-ahead log, 100 records per batch", wal, 100, 300),
        ("sled 0.34.7, 100 records per batch", sled, 100, 300),
        ("raw 100 appends + 1 fdatasync", raw, 100, 300),
    ];
    for (name, f, per_batch, batches) in rows {
        let (syncs, records, p50, p99) = f(per_batch, batches);
        println!("{name:<40} {syncs:>10.0} {records:>12.0} {p50:>10.0} {p99:>10.0}");
    }
}

/// (syncs/s, records/s, p50 µs, p99 µs) of one run.
fn summary(
    mut latencies: Vec<f64>,
    batches: u64,
    records_per_batch: u64,
    seconds: f64,
) -> (f64, f64, f64, f64) {
    (
        batches as f64 / seconds,
        (batches * records_per_batch) as f64 / seconds,
        percentile(&mut latencies, 0.5),
        percentile(&mut latencies, 0.99),
    )
}
