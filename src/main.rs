fn main() -> std::process::ExitCode {
    // Behave like other command-line tools when the reader of our output
    // goes away (`lamina graph big.lam | head`): end quietly instead of
    // panicking on a failed write. Rust ignores SIGPIPE by default.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of a signal before any
    // thread is started has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    lamina::cli::main()
}
