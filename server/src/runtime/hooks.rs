//! The panic guard around user hooks: an error or a panic — in the hook's
//! synchronous part or while its future runs — becomes a [`HookError`],
//! never an unwinding actor.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};

use futures_util::FutureExt;

use crate::error::{BoxError, HookError};

/// Runs an async hook: `call` makes its future (which may panic too), then
/// the future runs to completion.
pub(crate) async fn guarded<T, F>(
    hook: &'static str,
    call: impl FnOnce() -> F,
) -> Result<T, HookError>
where
    F: Future<Output = Result<T, BoxError>>,
{
    let fut = match catch_unwind(AssertUnwindSafe(call)) {
        Ok(fut) => fut,
        Err(payload) => return Err(HookError::from_panic(hook, payload)),
    };
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(HookError::Failed { hook, source }),
        Err(payload) => Err(HookError::from_panic(hook, payload)),
    }
}

/// Runs a synchronous hook.
pub(crate) fn guarded_sync<T>(
    hook: &'static str,
    f: impl FnOnce() -> Result<T, BoxError>,
) -> Result<T, HookError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(HookError::Failed { hook, source }),
        Err(payload) => Err(HookError::from_panic(hook, payload)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::manual_async_fn)]
    fn sync_part_panics() -> impl Future<Output = Result<(), BoxError>> {
        panic!("before the future");
        #[allow(unreachable_code)]
        async {
            Ok(())
        }
    }

    #[tokio::test]
    async fn panics_in_either_part_are_caught() {
        let err = guarded("on_message", sync_part_panics).await.unwrap_err();
        assert_eq!(err.to_string(), "on_message panicked: before the future");
        let err = guarded("on_close", || async {
            panic!("inside");
            #[allow(unreachable_code)]
            Ok::<(), BoxError>(())
        })
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "on_close panicked: inside");
        let err = guarded::<(), _>("on_start", || async { Err("nope".into()) })
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "on_start failed: nope");
        assert!(guarded_sync("x", || -> Result<(), BoxError> { panic!("sync") }).is_err());
    }
}
