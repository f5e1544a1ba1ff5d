//! The wall clock, as the wire carries it.

/// Milliseconds since the Unix epoch by this machine's clock (0 if it is set before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
