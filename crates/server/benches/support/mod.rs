//! What the server's benches share: failing with one line instead of a panic.

/// Prints why the benchmark cannot go on and exits non-zero.
pub fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("benchmark failed: {e}");
    std::process::exit(1)
}

/// [`fail`] on an error.
pub trait OrFail<T> {
    /// The value, or [`fail`] with the error.
    fn or_fail(self) -> T;
}

impl<T, E: std::fmt::Display> OrFail<T> for Result<T, E> {
    fn or_fail(self) -> T {
        self.unwrap_or_else(|e| fail(&e))
    }
}
