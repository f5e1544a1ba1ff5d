//! A panic anywhere ends the process. A storage process whose Raft or apply thread died
//! would otherwise keep serving from state nobody maintains; stopping lets a restart
//! recover from what is on disk.

/// Makes every panic print its message and location, then abort the process.
pub fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        std::process::abort();
    }));
}
