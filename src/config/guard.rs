//! Keeps a config that slipped past validation from taking the process down.
//!
//! Loading runs at startup, on every reload (SIGHUP, file watch, `POST /reload`) and in
//! `portico validate`. Validation is meant to catch every value a library would panic on, but a
//! reload must not bet the running gateway on that: [`contained`] runs the work on a thread of
//! its own, with a stack of known size (the admin thread's is small), and turns a panic into an
//! error, so the caller reports a failed load and the old config keeps serving.

use std::any::Any;

/// The name of the thread that [`contained`] starts; the binary's panic hook stays quiet for it
/// because the panic is reported as a config error instead.
pub const THREAD_NAME: &str = "portico-config";

/// Stack of the loading thread: ample for the nesting [`super::limits::MAX_DEPTH`] allows.
const STACK_BYTES: usize = 16 * 1024 * 1024;

/// Runs `work` where a panic cannot end the process; `Err` holds the panic's message.
pub fn contained<T: Send>(work: impl FnOnce() -> T + Send) -> Result<T, String> {
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .stack_size(STACK_BYTES)
            .spawn_scoped(scope, work);
        match spawned {
            Ok(handle) => handle.join().map_err(panic_message),
            // No thread to be had (out of memory or threads): refuse rather than run unguarded.
            Err(e) => Err(format!("cannot start the config loading thread: {e}")),
        }
    })
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_with_its_message() {
        let err =
            contained(|| -> u32 { panic!("time_to_live is longer than 1000 years") }).unwrap_err();
        assert_eq!(err, "time_to_live is longer than 1000 years");
        assert_eq!(contained(|| 7), Ok(7));
    }

    #[test]
    fn the_work_may_borrow_from_the_caller() {
        let text = String::from("borrowed");
        assert_eq!(contained(|| text.len()), Ok(8));
    }
}
