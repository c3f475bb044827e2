//! The handshake over a TCP stream: frames as `wire` defines them, read header first so that no
//! more than [`wire::MAX_FRAME`] bytes are ever buffered, with a timeout on every read and write.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use trustfab_device::Device;

use crate::handshake::{Initiator, Responder, Session, Trust};
use crate::identity::Identity;
use crate::wire::{self, HEADER_LEN};
use crate::Error;

/// How long a side waits for the peer's next frame, or to connect.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Reads one frame: the header, its checks, then exactly the body it announces.
///
/// # Errors
/// A transport error or timeout, or a header that `wire::body_len` refuses.
pub fn read_frame(stream: &mut impl Read) -> Result<Vec<u8>, Error> {
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header).map_err(read_error)?;
    let len = wire::body_len(&header)?;
    let mut frame = vec![0u8; HEADER_LEN + len];
    frame[..HEADER_LEN].copy_from_slice(&header);
    stream
        .read_exact(&mut frame[HEADER_LEN..])
        .map_err(read_error)?;
    Ok(frame)
}

/// A read that hit the socket's timeout (`WouldBlock` on Unix, `TimedOut` elsewhere) says so,
/// instead of "Resource temporarily unavailable".
fn read_error(e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Error::Timeout {
            secs: TIMEOUT.as_secs(),
        },
        _ => Error::Io(e),
    }
}

fn prepare(stream: &TcpStream) -> Result<(), Error> {
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(())
}

/// Connects to `addr` and authenticates as the initiator.
///
/// # Errors
/// A transport error, or any refusal of the handshake.
pub fn connect<D: Device>(
    addr: impl ToSocketAddrs,
    id: &mut Identity<D>,
    trust: &Trust<'_>,
) -> Result<Session, Error> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, TIMEOUT) {
            Ok(mut stream) => return initiate(&mut stream, id, trust),
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Io(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no address to connect to")
    })))
}

/// Authenticates as the initiator over an open stream.
///
/// # Errors
/// A transport error, or any refusal of the handshake.
pub fn initiate<D: Device>(
    stream: &mut TcpStream,
    id: &mut Identity<D>,
    trust: &Trust<'_>,
) -> Result<Session, Error> {
    prepare(stream)?;
    let (init, hello) = Initiator::start(id)?;
    stream.write_all(&hello)?;
    let hello_r = read_frame(stream)?;
    let answer_r = read_frame(stream)?;
    let (session, answer) = init.finish(id, trust, &hello_r, &answer_r)?;
    stream.write_all(&answer)?;
    stream.flush()?;
    Ok(session)
}

/// Authenticates as the responder over an accepted stream.
///
/// # Errors
/// A transport error, or any refusal of the handshake.
pub fn respond<D: Device>(
    stream: &mut TcpStream,
    id: &mut Identity<D>,
    trust: &Trust<'_>,
) -> Result<Session, Error> {
    prepare(stream)?;
    let hello_i = read_frame(stream)?;
    let (resp, [hello, answer]) = Responder::respond(id, trust, &hello_i)?;
    let mut both = hello;
    both.extend_from_slice(&answer);
    stream.write_all(&both)?;
    stream.flush()?;
    let answer_i = read_frame(stream)?;
    resp.finish(&answer_i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket whose read timeout passed: the error names the timeout, not the OS's EAGAIN.
    struct Silent;

    impl Read for Silent {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from(std::io::ErrorKind::WouldBlock))
        }
    }

    #[test]
    fn a_silent_peer_is_a_timeout_in_plain_words() {
        let e = read_frame(&mut Silent).unwrap_err();
        assert!(matches!(e, Error::Timeout { secs: 10 }), "{e:?}");
        assert_eq!(e.to_string(), "the peer sent nothing for 10 s (timed out)");
    }
}
