//! Telling the service manager how a server is doing: systemd's notification protocol
//! (`sd_notify(3)`), a datagram of `KEY=VALUE` lines to the socket `$NOTIFY_SOCKET` names.
//! `remap serve` sends `READY=1` once it listens (so a `Type=notify` unit such as
//! `remap-serve@.service` starts what needs the export only then) and `STOPPING=1` when a
//! signal starts the drain. Without `$NOTIFY_SOCKET` (not run by systemd) nothing is sent.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET={socket}: cannot notify the service manager: {source}")]
    Send {
        socket: String,
        #[source]
        source: std::io::Error,
    },
}

/// Send `state` (`READY=1`, `STOPPING=1`, `STATUS=...`) to `$NOTIFY_SOCKET`. Returns whether
/// there was a socket to send to.
pub fn notify(state: &str) -> Result<bool, NotifyError> {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let text = socket.to_string_lossy().into_owned();
    send(&text, state).map_err(|source| NotifyError::Send {
        socket: text,
        source,
    })?;
    Ok(true)
}

fn send(socket: &str, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let addr = match socket.strip_prefix('@') {
        // An abstract socket: '@' stands for the leading NUL.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        }
        None => SocketAddr::from_pathname(PathBuf::from(socket))?,
    };
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reaches_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn a_datagram_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("remap-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
            .unwrap();
        send(&format!("@{name}"), "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
