//! Ports, for the few programs that cannot choose their own and for addresses that must refuse.
//!
//! Most harnesses start their process on port 0 and read back the address it bound. A program
//! that cannot report a port it chose (redis-server does not listen at all with `--port 0`;
//! fake-gcs-server logs `:0` instead of the port it got) is started by [`on_free_port`]: the test
//! kit picks a free port, the program binds it, and when someone else took the port in between,
//! the program says so and exits, and the next attempt gets a fresh port. This is the only place
//! a port is picked for another process.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use socket2::{Domain, Socket, Type};

use crate::error::{Error, Result};

/// How many ports [`on_free_port`] tries before giving up.
const ATTEMPTS: usize = 8;

/// Runs `start` with a port that was free a moment ago, again with a fresh one while the attempt
/// fails because the port was taken (the process exited saying "address already in use").
pub fn on_free_port<T>(name: &str, mut start: impl FnMut(u16) -> Result<T>) -> Result<T> {
    let mut log = String::new();
    for _ in 0..ATTEMPTS {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        match start(port) {
            Err(Error::Exited { log: output, .. })
                if output.to_lowercase().contains("address already in use") =>
            {
                log = output;
            }
            other => return other,
        }
    }
    Err(Error::PortsTaken {
        name: name.to_owned(),
        attempts: ATTEMPTS,
        log,
    })
}

/// A loopback port held bound but not listening: connecting to it is refused, and no other
/// process can bind it, for as long as this value lives. For endpoints that must not answer (a
/// cloud a test must never reach, an absent hub or API server).
#[derive(Debug)]
pub struct ClosedPort {
    _socket: Socket,
    address: SocketAddr,
}

impl ClosedPort {
    /// Binds a fresh loopback port without listening on it.
    pub fn reserve() -> Result<Self> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        // No SO_REUSEADDR: on Linux a second socket may share the port only if both set it.
        socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
        let address = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("a loopback socket without an inet address"))?;
        Ok(Self {
            _socket: socket,
            address,
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://127.0.0.1:PORT`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.address)
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;

    use super::*;

    #[test]
    fn a_closed_port_refuses_connections_and_cannot_be_bound() {
        let closed = ClosedPort::reserve().unwrap();
        let error = TcpStream::connect(closed.address()).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
        // std sets SO_REUSEADDR on its listeners, as servers do; the port is still not theirs.
        assert!(TcpListener::bind(closed.address()).is_err());
    }

    #[test]
    fn a_taken_port_is_retried_with_another() {
        let mut seen = Vec::new();
        let port = on_free_port("probe", |port| {
            seen.push(port);
            if seen.len() < 3 {
                return Err(Error::Exited {
                    name: "probe".into(),
                    status: std::process::Command::new("false").status()?,
                    log: "bind: Address already in use".into(),
                });
            }
            Ok(port)
        })
        .unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen.last(), Some(&port));
    }

    #[test]
    fn other_failures_are_not_retried() {
        let mut attempts = 0;
        let result: Result<()> = on_free_port("probe", |_| {
            attempts += 1;
            Err(Error::Unexpected {
                name: "probe".into(),
                line: String::new(),
                reason: "broken".into(),
            })
        });
        assert!(matches!(result, Err(Error::Unexpected { .. })));
        assert_eq!(attempts, 1);
    }
}
