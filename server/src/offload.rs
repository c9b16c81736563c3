//! JSON work too large for an async worker: parsing or serializing more
//! than [`LARGE_JSON`] bytes runs in `block_in_place`, so the worker's other
//! tasks (other instances, other sockets) move on meanwhile.

/// JSON past this many bytes is handled outside the async workers.
pub const LARGE_JSON: usize = 64 * 1024;

/// Runs `f` (JSON work on about `len` bytes), off the worker when large.
pub(crate) fn json<R>(len: usize, f: impl FnOnce() -> R) -> R {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if len > LARGE_JSON && multi_thread {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}
