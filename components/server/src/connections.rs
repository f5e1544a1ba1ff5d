//! How many TCP connections are open to a port of this store, from the kernel's socket
//! tables (`/proc/net/tcp` and `tcp6` of this network namespace): what `kvctl cluster
//! stats` and the shell's STATS report as open connections.

/// ESTABLISHED in the kernel's tables.
const ESTABLISHED: &str = "01";

/// Established connections whose local port is `port`; `None` where the tables cannot
/// be read (not Linux).
pub fn established_on(port: u16) -> Option<u64> {
    let mut found = None;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            *found.get_or_insert(0) += count(&text, port);
        }
    }
    found
}

/// Rows of one table (after its header line) in state ESTABLISHED on local `port`.
fn count(table: &str, port: u16) -> u64 {
    table
        .lines()
        .skip(1)
        .filter(|row| {
            let mut fields = row.split_whitespace();
            let local = fields.nth(1).unwrap_or("");
            let state = fields.nth(1).unwrap_or("");
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            state == ESTABLISHED && local_port == Some(port)
        })
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_established_rows_on_the_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
            0: 0100007F:4EE0 00000000:0000 0A 00000000:00000000\n\
            1: 0100007F:4EE0 0100007F:C350 01 00000000:00000000\n\
            2: 0100007F:4EE0 0100007F:C351 01 00000000:00000000\n\
            3: 0100007F:C350 0100007F:4EE0 01 00000000:00000000\n";
        assert_eq!(
            count(table, 0x4EE0),
            2,
            "the listener and the far ends do not count"
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _server = listener.accept().unwrap();
        assert_eq!(established_on(port), Some(1));
    }
}
