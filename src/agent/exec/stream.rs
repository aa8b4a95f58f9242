//! The host side of one stream as the agent's request handlers hold it: the framed
//! reader and the shared writer over the stream's TCP connection, and the socket itself
//! (to shut it down when the command ends).

use std::net::TcpStream;

use crate::broker::stream::blocking::{Prefixed, Reader, Shared};

/// The host side of one stream, as the request handlers use it.
pub(crate) struct Stream {
    pub(crate) reader: Reader<Prefixed<TcpStream>>,
    pub(crate) writer: Shared<TcpStream>,
    pub(crate) socket: TcpStream,
}
