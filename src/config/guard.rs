//! Keeps a config that slipped past validation from taking the process down.
//!
//! Loading runs at startup, on every reload (SIGHUP, file watch, `POST /reload`) and in
//! `portico validate`. Validation is meant to catch every value a library would panic on, but a
//! reload must not bet the running gateway on that: [`contained`] catches a panic of the work
//! and turns it into an error, so the caller reports a failed load and the old config keeps
//! serving. (The release profile unwinds; `panic = "abort"` would defeat this.)

use std::any::Any;
use std::cell::Cell;
use std::panic::AssertUnwindSafe;

thread_local! {
    /// Whether this thread is inside [`contained`].
    static CONTAINING: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread is running work under [`contained`]: the binary's panic hook
/// stays quiet then, because the panic is reported as a config error instead.
pub fn containing() -> bool {
    CONTAINING.with(Cell::get)
}

/// Runs `work` where a panic cannot end the process; `Err` holds the panic's message.
///
/// On the calling thread, not a new one: a new thread per load may get a malloc arena of its
/// own each time, and what a large rejected config leaves in an arena stays with the process.
/// The stack needs no headroom of its own: the document's nesting is bounded before any
/// recursive code sees it (`limits::MAX_DEPTH`).
pub fn contained<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    let outer = CONTAINING.with(|c| c.replace(true));
    // Whatever `work` touched is dropped or reported as failed; nothing half-built is used.
    let result = std::panic::catch_unwind(AssertUnwindSafe(work));
    CONTAINING.with(|c| c.set(outer));
    result.map_err(panic_message)
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
    fn the_work_may_borrow_from_the_caller_and_the_flag_is_reset() {
        let text = String::from("borrowed");
        assert!(!containing());
        assert_eq!(contained(|| (text.len(), containing())), Ok((8, true)));
        let _ = contained::<()>(|| panic!("boom"));
        assert!(!containing());
    }
}
