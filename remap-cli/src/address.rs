//! TCP addresses on the command line: `127.0.0.1:10809`, `[::1]:10809`, or a host name
//! such as `localhost:10809`, resolved once at start (IPv4 first, as `127.0.0.1` is the
//! default everywhere else).

use std::net::{SocketAddr, ToSocketAddrs};

/// Where `remap serve --metrics` listens when no address is given: beside the NBD default
/// 10809, outside 9100-9999 where Prometheus exporters have their registered ports (9100
/// is node_exporter's).
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:10810";

/// Parse `HOST:PORT`, resolving a host name.
pub fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !text.contains(':') {
        return Err(format!(
            "{text:?} has no port: give HOST:PORT, such as 127.0.0.1:10809"
        ));
    }
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("{text:?} is not an address HOST:PORT: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_localhost_parse_and_nonsense_does_not() {
        assert_eq!(
            parse_socket_addr("127.0.0.1:10809").unwrap(),
            "127.0.0.1:10809".parse().unwrap()
        );
        assert_eq!(
            parse_socket_addr("[::1]:1").unwrap(),
            "[::1]:1".parse().unwrap()
        );
        let local = parse_socket_addr("localhost:10809").unwrap();
        assert!(local.ip().is_loopback() && local.port() == 10809, "{local}");
        assert!(parse_socket_addr(DEFAULT_METRICS_ADDR).is_ok());
        for bad in [
            "localhost",
            "127.0.0.1:99999",
            ":",
            "no such host.invalid:1",
        ] {
            assert!(parse_socket_addr(bad).is_err(), "{bad}");
        }
    }
}
