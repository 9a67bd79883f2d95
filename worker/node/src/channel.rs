//! The host↔worker connection: a Unix stream that carries the preamble, framed messages, and
//! file descriptors (SCM_RIGHTS) alongside the Attach message.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use modelhost_protocol::wire::{
    check_preamble, encode, preamble, FrameDecoder, Message, WireError, PREAMBLE_LEN,
};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// The most descriptors one message may carry (one per shard file).
pub const MAX_FDS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("protocol violation: {0}")]
    Wire(#[from] WireError),
    #[error("the peer closed the connection")]
    Closed,
    #[error("no message within the timeout")]
    Timeout,
    #[error("the peer sent {got} file descriptors, more than the {MAX_FDS} allowed")]
    TooManyFds { got: usize },
    #[error("expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: String },
}

/// One side of a host↔worker connection.
pub struct Channel {
    stream: UnixStream,
    decoder: FrameDecoder,
    fds: VecDeque<OwnedFd>,
}

impl Channel {
    /// Exchanges preambles: each side sends its own and checks the peer's.
    pub fn handshake(mut stream: UnixStream, timeout: Duration) -> Result<Channel, ChannelError> {
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(&preamble())?;
        let mut theirs = [0u8; PREAMBLE_LEN];
        stream.read_exact(&mut theirs).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => ChannelError::Closed,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ChannelError::Timeout,
            _ => ChannelError::Io(e),
        })?;
        check_preamble(&theirs)?;
        stream.set_read_timeout(None)?;
        Ok(Channel {
            stream,
            decoder: FrameDecoder::new(),
            fds: VecDeque::new(),
        })
    }

    /// A second handle for sending from another thread.
    pub fn sender(&self) -> io::Result<Sender> {
        Ok(Sender(self.stream.try_clone()?))
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }

    pub fn send(&mut self, message: &Message) -> io::Result<()> {
        self.stream.write_all(&encode(message))
    }

    /// Sends a message with file descriptors attached to its first byte.
    pub fn send_with_fds(&mut self, message: &Message, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        send_with_fds(&self.stream, message, fds)
    }

    /// The next message. Descriptors that arrive are queued for [`Channel::take_fds`].
    pub fn recv(&mut self) -> Result<Message, ChannelError> {
        loop {
            if let Some(message) = self.decoder.next_message()? {
                return Ok(message);
            }
            let mut buf = [0u8; 64 * 1024];
            let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
            let (n, received) = {
                let mut iov = [IoSliceMut::new(&mut buf)];
                let msg = match recvmsg::<()>(
                    self.stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                ) {
                    Ok(msg) => msg,
                    Err(nix::errno::Errno::EAGAIN) => return Err(ChannelError::Timeout),
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(ChannelError::Io(e.into())),
                };
                let mut received: Vec<RawFd> = Vec::new();
                for c in msg.cmsgs().map_err(|e| ChannelError::Io(e.into()))? {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        received.extend(fds);
                    }
                }
                (msg.bytes, received)
            };
            for fd in &received {
                // SAFETY: the kernel just installed these descriptors in this process for us
                // (SCM_RIGHTS); nothing else owns them.
                self.fds.push_back(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
            if self.fds.len() > MAX_FDS {
                return Err(ChannelError::TooManyFds {
                    got: self.fds.len(),
                });
            }
            if n == 0 {
                return Err(ChannelError::Closed);
            }
            self.decoder.push(&buf[..n]);
        }
    }

    /// Takes the descriptors received so far, oldest first.
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        self.fds.drain(..).collect()
    }
}

fn send_with_fds(stream: &UnixStream, message: &Message, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let frame = encode(message);
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let control = [ControlMessage::ScmRights(&raw)];
    let iov = [IoSlice::new(&frame)];
    let sent = sendmsg::<()>(
        stream.as_raw_fd(),
        &iov,
        if raw.is_empty() { &[] } else { &control },
        MsgFlags::empty(),
        None,
    )
    .map_err(io::Error::from)?;
    // The descriptors went with the first byte; the rest of a long frame follows as plain data.
    (&*stream).write_all(&frame[sent..])
}

/// A sending handle that another thread can own (heartbeats, progress).
pub struct Sender(UnixStream);

impl Sender {
    /// Frames onto a stream whose handshake is done (or, in a test, not needed).
    pub fn over(stream: UnixStream) -> Sender {
        Sender(stream)
    }

    pub fn send(&mut self, message: &Message) -> io::Result<()> {
        self.0.write_all(&encode(message))
    }

    /// Ends the connection both ways, for every handle on the socket: the peer and this side's
    /// reader both see its end. For a stream that a failed send may have left mid-frame.
    pub fn shutdown(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }

    /// Bounds how long a send may block on a peer that does not read. The option belongs to
    /// the socket, so it holds for every handle on it, the channel's own included.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.0.set_write_timeout(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A channel whose peer is raw bytes: the peer's preamble, then `then`.
    fn against_raw(then: &[u8]) -> Result<Message, ChannelError> {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(&preamble()).unwrap();
        theirs.write_all(then).unwrap();
        let mut channel = Channel::handshake(ours, Duration::from_secs(5))?;
        channel
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        channel.recv()
    }

    #[test]
    fn violations_surface_as_wire_errors() {
        assert!(matches!(
            against_raw(&0xFFFF_FFF0u32.to_le_bytes()),
            Err(ChannelError::Wire(WireError::FrameTooLarge { .. }))
        ));
        assert!(matches!(
            against_raw(b"\x01\x00\x00\x00\x7f"),
            Err(ChannelError::Wire(WireError::UnknownMessage { .. }))
        ));
        assert!(matches!(against_raw(b""), Err(ChannelError::Timeout)));
    }

    #[test]
    fn descriptors_travel_with_a_message() {
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || Channel::handshake(b, Duration::from_secs(5)).unwrap());
        let mut sender = Channel::handshake(a, Duration::from_secs(5)).unwrap();
        let mut receiver = t.join().unwrap();
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        sender
            .send_with_fds(&Message::Heartbeat { seq: 9 }, &[file.as_fd()])
            .unwrap();
        assert_eq!(receiver.recv().unwrap(), Message::Heartbeat { seq: 9 });
        let fds = receiver.take_fds();
        assert_eq!(fds.len(), 1);
        let received = std::fs::File::from(fds.into_iter().next().unwrap());
        assert_eq!(
            received.metadata().unwrap().len(),
            file.metadata().unwrap().len()
        );
    }
}
