//! Small helpers the real-component tests share.

use std::time::Duration;

/// How long a real cell may take to elect a master.
pub const ELECTION: Duration = Duration::from_secs(20);
/// How long replicas of a real cell may take to converge after writes or a restart.
pub const CONVERGE: Duration = Duration::from_secs(30);

/// The runtime every real-process test drives its client with: two workers, like CI's two
/// cores.
///
/// # Panics
/// If the runtime cannot be built.
#[must_use]
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Whether `strace` can run here. A test that needs it skips when it cannot, unless
/// `CHUBBY_REQUIRE_STRACE` is set (CI sets it), in which case the test fails.
///
/// # Panics
/// When strace is missing but required.
#[must_use]
pub fn strace_available() -> bool {
    if std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_ok()
    {
        return true;
    }
    assert!(
        std::env::var_os("CHUBBY_REQUIRE_STRACE").is_none(),
        "strace required but missing"
    );
    eprintln!("skipping: strace is not installed");
    false
}

/// Polls `f` every 20 ms until it holds (for a state another process reaches, which gives
/// no event to wait on here).
///
/// # Panics
/// If `timeout` passes first, naming `what`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The sessions in the master's database (`None` if no replica says it is master).
#[must_use]
pub fn master_sessions(cell: &crate::real_cell::RealCell) -> Option<u64> {
    use chubby_protocol::client_msg::ReplicaRole;
    let rt = runtime();
    let _in_rt = rt.enter();
    let conn = cell.connect();
    rt.block_on(cell.statuses(&conn))
        .into_iter()
        .flatten()
        .find_map(|s| (s.role == ReplicaRole::Master).then_some(s.sessions))
}
