//! JSON work too large to run between two awaits on an async worker:
//! parsing or serializing more than [`LARGE_JSON`] bytes (a large state).
//!
//! Where it runs is chosen so that the worker's other tasks (other
//! instances, other sockets) wait for it as little as possible. Measured
//! with the `neighbour` benchmark (echo p99 on one instance while two
//! others take 1 MiB states back to back, server on one core):
//!
//! - With one worker (a runtime with one core), it runs on the worker
//!   between two yields: the tasks that are ready run before it and after
//!   it, so they wait for one piece of work, never for a batch of them.
//!   Another thread would not add a core; it would take turns with the
//!   worker in the OS's time slices, which are longer than the work. There,
//!   `spawn_blocking` gave twice the echo p99 of this, a dedicated thread
//!   1.6 times, the same work without the yields 4–5 times. The price: on
//!   a saturated core the median echo waits for one piece (~0.8 ms per MiB
//!   where `spawn_blocking` kept it at ~0.08 ms); at a load the core can
//!   take, both medians are the same.
//! - With more workers, it runs on the blocking pool, at most one job per
//!   core but one at a time, so that the workers keep a core.

use std::sync::OnceLock;

use tokio::sync::Semaphore;

/// JSON past this many bytes is handled outside the async workers.
pub const LARGE_JSON: usize = 64 * 1024;

/// Whether JSON work on `len` bytes is large enough to be run elsewhere.
pub(crate) fn is_large(len: usize) -> bool {
    len > LARGE_JSON
}

/// Runs `f` (JSON work on about `len` bytes), in `block_in_place` when
/// large: for work that borrows and cannot await (a hook's `set_state`).
pub(crate) fn json<R>(len: usize, f: impl FnOnce() -> R) -> R {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if is_large(len) && multi_thread {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// Runs `f` (JSON work on about `len` bytes) where it holds up other tasks
/// least (see the module docs). A panic in `f` resumes in the caller.
pub(crate) async fn json_owned<R: Send + 'static>(
    len: usize,
    f: impl FnOnce() -> R + Send + 'static,
) -> R {
    if !is_large(len) {
        return f();
    }
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    if workers <= 1 {
        tokio::task::yield_now().await;
        let out = f();
        tokio::task::yield_now().await;
        return out;
    }
    let _turn = jobs().acquire().await;
    match tokio::task::spawn_blocking(f).await {
        Ok(out) => out,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        // Cancelled: the runtime is shutting down, and this task with it.
        Err(_) => std::future::pending().await,
    }
}

/// Large JSON jobs running at once on the blocking pool: one per core but
/// one (at least one).
fn jobs() -> &'static Semaphore {
    static JOBS: OnceLock<Semaphore> = OnceLock::new();
    JOBS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Semaphore::new(cores.saturating_sub(1).max(1))
    })
}
