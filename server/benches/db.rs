//! Figures for the replicated database (issue 3), printed, not asserted:
//! - applied SetContents per second (100-byte files),
//! - Acquire+Release pairs per second,
//! - for 100k files of 1 KiB: the freeze (the only part of a snapshot on the apply path),
//!   the encode (on another thread), snapshot size, restore, digest, and the apply latency
//!   while a snapshot is being encoded next to it.
//!
//! Run with `cargo bench -p chubby-server --bench db`. The machine is shared and noisy:
//! read medians and orders of magnitude.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chubby_protocol::{
    Ballot, Creation, HandleId, Instant as Stamp, LockMode, NodeId, NodeKind, OpenMode, SessionId,
    Slot,
};
use chubby_server::db::{Command, Db, DbConfig, Op, OpenArgs, Outcome};

const EPOCH: Ballot = Ballot {
    round: 1,
    node: NodeId(1),
};

/// A database fed like a master feeds it: one command per slot, time moving on.
struct Feed {
    db: Db,
    slot: Slot,
    now: u64,
}

impl Feed {
    fn new() -> Feed {
        let mut f = Feed {
            db: Db::new(DbConfig::new("admin")).expect("valid config"),
            slot: Slot::ZERO,
            now: 0,
        };
        f.ok(Op::NewEpoch);
        f
    }

    fn ok(&mut self, op: Op) -> Outcome {
        self.slot = self.slot.next();
        self.now += 1;
        let cmd = Command::new(EPOCH, Stamp(self.now), op);
        let applied = self.db.apply(self.slot, &cmd);
        applied.result.expect("bench commands succeed")
    }

    fn session(&mut self) -> SessionId {
        match self.ok(Op::CreateSession {
            principal: "admin".into(),
        }) {
            Outcome::SessionCreated { session } => session,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn open(&mut self, session: SessionId, path: &str, contents: Vec<u8>) -> HandleId {
        let args = OpenArgs {
            session,
            path: path.into(),
            mode: OpenMode::READ_WRITE,
            creation: Creation::IfMissing,
            kind: NodeKind::File,
            ephemeral: false,
            contents,
            acl: None,
            lock_delay_ms: None,
            events: chubby_protocol::EventMask::NONE,
            create_mode: None,
            create_owner: None,
        };
        match self.ok(Op::Open(Box::new(args))) {
            Outcome::Opened { handle, .. } => handle,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// SetContents of 100-byte files, round-robin over 1000 open files.
fn set_contents_rate() {
    let mut f = Feed::new();
    let s = f.session();
    let handles: Vec<HandleId> = (0..1000)
        .map(|i| f.open(s, &format!("/f{i}"), Vec::new()))
        .collect();
    let payload = vec![b'x'; 100];
    let mut rates = Vec::new();
    for _ in 0..5 {
        let n = 200_000;
        let start = Instant::now();
        for i in 0..n {
            let handle = handles[i % handles.len()];
            f.ok(Op::SetContents {
                session: s,
                handle,
                contents: payload.clone(),
                expected: None,
            });
        }
        rates.push(n as f64 / start.elapsed().as_secs_f64());
    }
    println!(
        "SetContents (100 B, 1000 files): median {:.0} applied/s over 5 runs of 200k",
        median(rates)
    );
}

/// TryAcquire + Release on one file, and Acquire + Release with a second session waiting
/// (every release hands the lock over).
fn lock_rate() {
    let mut f = Feed::new();
    let s = f.session();
    let h = f.open(s, "/lock", Vec::new());
    let mut rates = Vec::new();
    for _ in 0..5 {
        let n = 200_000;
        let start = Instant::now();
        for _ in 0..n {
            f.ok(Op::Acquire {
                session: s,
                handle: h,
                mode: LockMode::Exclusive,
            });
            f.ok(Op::Release {
                session: s,
                handle: h,
            });
        }
        rates.push(n as f64 / start.elapsed().as_secs_f64());
    }
    println!(
        "Acquire+Release (uncontended): median {:.0} pairs/s",
        median(rates)
    );

    let t = f.session();
    let g = f.open(t, "/lock", Vec::new());
    f.ok(Op::Acquire {
        session: s,
        handle: h,
        mode: LockMode::Exclusive,
    });
    let n = 200_000;
    let start = Instant::now();
    for i in 0..n {
        let (holder, waiter) = if i % 2 == 0 {
            ((s, h), (t, g))
        } else {
            ((t, g), (s, h))
        };
        f.ok(Op::Acquire {
            session: waiter.0,
            handle: waiter.1,
            mode: LockMode::Exclusive,
        });
        f.ok(Op::Release {
            session: holder.0,
            handle: holder.1,
        });
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    println!("Acquire(queued)+Release(hand-off): {rate:.0} pairs/s");
}

/// 100k files of 1 KiB (in 100 directories), 5000 sessions holding 50k handles and 1000
/// locks: freeze, encode, restore, digest, and the apply latency while a snapshot is
/// encoded on another thread.
/// 100k files of 1 KiB in 100 directories, then 5000 sessions holding 10 handles each
/// and 1000 locks; returns the feed, a session and 1000 handles of it to write through.
fn build_cell() -> (Feed, SessionId, Vec<HandleId>) {
    let mut f = Feed::new();
    let s = f.session();
    let build = Instant::now();
    for d in 0..100 {
        let dir = OpenArgs {
            session: s,
            path: format!("/d{d}"),
            mode: OpenMode::READ,
            creation: Creation::Must,
            kind: NodeKind::Directory,
            ephemeral: false,
            contents: Vec::new(),
            acl: None,
            lock_delay_ms: None,
            events: chubby_protocol::EventMask::NONE,
            create_mode: None,
            create_owner: None,
        };
        let Outcome::Opened { handle, .. } = f.ok(Op::Open(Box::new(dir))) else {
            unreachable!()
        };
        f.ok(Op::Close { session: s, handle });
        for i in 0..1000 {
            let handle = f.open(s, &format!("/d{d}/file{i:04}"), vec![b'k'; 1024]);
            f.ok(Op::Close { session: s, handle });
        }
    }
    println!(
        "built 100k files of 1 KiB in {:.1} s (Open+Close each)",
        build.elapsed().as_secs_f64()
    );
    add_clients(&mut f);
    let writers = (0..1000)
        .map(|i| f.open(s, &format!("/d{}/file{:04}", i % 100, i), Vec::new()))
        .collect();
    (f, s, writers)
}

fn add_clients(f: &mut Feed) {
    let build = Instant::now();
    for c in 0..5_000u64 {
        let client = f.session();
        for k in 0..10u64 {
            let i = (c * 10 + k) % 100_000;
            let path = format!("/d{}/file{:04}", i / 1000, i % 1000);
            let handle = f.open(client, &path, Vec::new());
            if k == 0 && c % 5 == 0 {
                f.ok(Op::Acquire {
                    session: client,
                    handle,
                    mode: LockMode::Exclusive,
                });
            }
        }
    }
    println!(
        "added 5000 sessions, 50k handles, 1000 held locks in {:.1} s",
        build.elapsed().as_secs_f64()
    );
}

/// Freeze (the apply stall), encode, size, restore and digest of a snapshot.
fn snapshot_figures() {
    let (mut f, s, writers) = build_cell();

    let freezes: Vec<f64> = (0..9)
        .map(|_| {
            let start = Instant::now();
            let frozen = f.db.freeze();
            let t = ms(start.elapsed());
            drop(frozen);
            t
        })
        .collect();
    println!(
        "freeze (the apply stall of a snapshot): median {:.2} ms, max {:.2} ms over 9",
        median(freezes.clone()),
        freezes.iter().copied().fold(0.0, f64::max)
    );

    let frozen = f.db.freeze();
    let start = Instant::now();
    let bytes = frozen.encode(
        &[NodeId(1), NodeId(2), NodeId(3)],
        &chubby_protocol::MemberSets::default(),
    );
    println!(
        "encode (off the apply path): {:.0} ms, snapshot {:.1} MiB",
        ms(start.elapsed()),
        bytes.len() as f64 / (1 << 20) as f64
    );
    let start = Instant::now();
    let (restored, info) = Db::restore(&bytes).expect("own snapshot restores");
    println!(
        "restore (checksum + decode + validate): {:.0} ms, slot {}",
        ms(start.elapsed()),
        info.slot
    );
    let start = Instant::now();
    let digest = f.db.digest();
    println!(
        "digest (also the Checksum command's apply time): {:.3} ms",
        ms(start.elapsed())
    );
    assert_eq!(restored.digest(), digest, "restored snapshot differs");
    drop((restored, frozen));

    latency_figures(&mut f, s, &writers);
}

/// Write latency with no snapshot, with a frozen copy held, next to a CPU-burning thread
/// (control) and next to a thread encoding and dropping a snapshot.
fn latency_figures(f: &mut Feed, s: SessionId, writers: &[HandleId]) {
    let payload = vec![b'y'; 1024];
    // Latencies of 1 KiB SetContents spread over 1000 files in 100 directories, so the
    // writes after a freeze touch many leaves (each first touch copies one leaf).
    let apply_latency = |f: &mut Feed, n: usize| -> Latency {
        let mut lat = Vec::with_capacity(n);
        for i in 0..n {
            let start = Instant::now();
            let handle = writers[i % writers.len()];
            let contents = payload.clone();
            f.ok(Op::SetContents {
                session: s,
                handle,
                contents,
                expected: None,
            });
            lat.push(start.elapsed().as_secs_f64() * 1e6);
        }
        Latency::of(lat)
    };
    println!(
        "SetContents 1 KiB latency, no snapshot: {}",
        apply_latency(f, 20_000)
    );

    let frozen = f.db.freeze();
    println!(
        "SetContents 1 KiB latency, frozen copy held (copy-on-write only): {}",
        apply_latency(f, 20_000)
    );
    let start = Instant::now();
    drop(frozen);
    println!(
        "dropping that frozen copy after 20k writes: {:.1} ms (so drop it off the apply thread)",
        ms(start.elapsed())
    );

    // Control: the same writes while another thread only burns CPU for as long as an
    // encode takes, to tell CPU contention (2 shared cores) from snapshot effects.
    let done = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&done);
    let burner = std::thread::spawn(move || {
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(800) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        flag.store(true, Ordering::Release);
    });
    let control = apply_until(f, &done, &apply_latency);
    burner.join().expect("burner thread");
    println!("SetContents 1 KiB latency, control (another thread burns CPU 0.8 s): {control}");

    let start = Instant::now();
    let frozen = f.db.freeze();
    let stall = ms(start.elapsed());
    let done = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&done);
    let encoder = std::thread::spawn(move || {
        let start = Instant::now();
        let bytes = frozen.encode(&[NodeId(1)], &chubby_protocol::MemberSets::default());
        let encode_ms = ms(start.elapsed());
        let start = Instant::now();
        drop(frozen);
        let drop_ms = ms(start.elapsed());
        flag.store(true, Ordering::Release);
        (encode_ms, drop_ms, bytes.len())
    });
    let during = apply_until(f, &done, &apply_latency);
    let (encode_ms, drop_ms, len) = encoder.join().expect("encoder thread");
    println!(
        "SetContents 1 KiB latency while another thread encodes and drops a snapshot: \
         {during} (freeze {stall:.3} ms, encode {encode_ms:.0} ms, drop {drop_ms:.1} ms, \
         {len} bytes)"
    );
}

/// Applies batches of 1000 writes until `done`, then 20 batches more; all latencies.
fn apply_until(
    f: &mut Feed,
    done: &AtomicBool,
    batch: &dyn Fn(&mut Feed, usize) -> Latency,
) -> Latency {
    let mut all = Vec::new();
    let mut after = 0;
    while after < 20 {
        if done.load(Ordering::Acquire) {
            after += 1;
        }
        all.extend(batch(f, 1000).samples);
    }
    Latency::of(all)
}

/// A latency sample in µs, shown as p50, p99, p99.9, max and how many took over 1 ms
/// (on a shared 2-core machine at `nice 15`, preemption alone produces some).
struct Latency {
    samples: Vec<f64>,
}

impl Latency {
    fn of(samples: Vec<f64>) -> Latency {
        Latency { samples }
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut xs = self.samples.clone();
        xs.sort_by(f64::total_cmp);
        let at = |q: f64| xs[((xs.len() - 1) as f64 * q) as usize];
        let slow = xs.iter().filter(|&&x| x > 1_000.0).count();
        let (p50, p99, p999, max) = (at(0.5), at(0.99), at(0.999), at(1.0));
        write!(
            f,
            "p50 {p50:.1} µs, p99 {p99:.1} µs, p99.9 {p999:.0} µs, max {max:.0} µs"
        )?;
        write!(f, ", {slow} of {} over 1 ms", xs.len())
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs us without it: stay quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("db bench: run with `cargo bench -p chubby-server --bench db`");
        return;
    }
    set_contents_rate();
    lock_rate();
    snapshot_figures();
}
