//! A hand-written HTTP/1.1 client over a plain `TcpStream`, for tests that
//! need what a full client hides: a half-sent request, a connection held
//! idle, requests pipelined without reading the answers, a connection
//! closed by the server.
//!
//! Also used by `tools/src/bin/soak.rs` (through `#[path]`): it depends on tokio
//! alone.
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One response: status, headers (names lower-cased) and body.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (lower case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The unsigned integer after `"name":` in the (flat JSON) body.
    pub(crate) fn json_u64(&self, name: &str) -> Option<u64> {
        json_u64(&self.body, name)
    }

    /// The string after `"name":` in the (flat JSON) body.
    pub(crate) fn json_str(&self, name: &str) -> Option<String> {
        json_str(&self.body, name)
    }
}

/// How a read of a connection the server may have closed ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The server closed it (end of stream or reset).
    Closed,
    /// Still open when the time ran out.
    StillOpen,
}

/// One connection with its read buffer (a response may arrive in pieces,
/// and pipelined responses back to back).
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub(crate) async fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(1024),
        })
    }

    /// A connection already open.
    pub(crate) fn from_stream(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: Vec::with_capacity(1024),
        }
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        Ok(())
    }

    /// Reads one response with a `Content-Length` body (or none, for
    /// `204`/`304` and answers to `HEAD`, which the caller does not send).
    pub(crate) async fn response(&mut self) -> io::Result<Response> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if self.buf.len() > 64 * 1024 {
                return Err(invalid("response head over 64 KiB"));
            }
            self.fill().await?;
        };
        let head =
            std::str::from_utf8(&self.buf[..head_end]).map_err(|_| invalid("head not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| invalid("malformed status line"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length = match headers.iter().find(|(n, _)| n == "content-length") {
            Some((_, v)) => v
                .parse::<usize>()
                .map_err(|_| invalid("bad content-length"))?,
            None if matches!(status, 204 | 304) => 0,
            None => return Err(invalid("response without a content-length")),
        };
        let start = head_end + 4;
        while self.buf.len() < start + length {
            self.fill().await?;
        }
        let body = self.buf[start..start + length].to_vec();
        self.buf.drain(..start + length);
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// Sends `request` and reads its response.
    pub(crate) async fn request(&mut self, request: &[u8]) -> io::Result<Response> {
        self.send(request).await?;
        self.response().await
    }

    /// `GET path` on this connection.
    pub(crate) async fn get(&mut self, path: &str) -> io::Result<Response> {
        self.request(get(path).as_bytes()).await
    }

    /// Reads (and discards) until the server closes the connection, for at
    /// most `limit`.
    pub(crate) async fn ending(&mut self, limit: Duration) -> Ending {
        let drain = async {
            let mut sink = [0u8; 16 * 1024];
            loop {
                match self.stream.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        match tokio::time::timeout(limit, drain).await {
            Ok(()) => Ending::Closed,
            Err(_) => Ending::StillOpen,
        }
    }
}

/// `GET path` as a request.
pub(crate) fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
}

/// `POST /cart` with a form body.
pub(crate) fn post_cart(session: &str, action: &str) -> String {
    let body = format!("session={session}&action={action}");
    format!(
        "POST /cart HTTP/1.1\r\nhost: 127.0.0.1\r\n\
         content-type: application/x-www-form-urlencoded; charset=UTF-8\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The unsigned integer after `"name":` in a flat JSON object.
pub(crate) fn json_u64(body: &[u8], name: &str) -> Option<u64> {
    let key = format!("\"{name}\"");
    let rest = &body[find(body, key.as_bytes())? + key.len()..];
    let rest = &rest[rest.iter().position(|&b| b == b':')? + 1..];
    let rest = &rest[rest.iter().position(|b| !b.is_ascii_whitespace())?..];
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// The string after `"name":` in a flat JSON object (no escapes).
pub(crate) fn json_str(body: &[u8], name: &str) -> Option<String> {
    let key = format!("\"{name}\"");
    let rest = &body[find(body, key.as_bytes())? + key.len()..];
    let rest = &rest[rest.iter().position(|&b| b == b':')? + 1..];
    let open = rest.iter().position(|&b| b == b'"')? + 1;
    let len = rest[open..].iter().position(|&b| b == b'"')?;
    String::from_utf8(rest[open..open + len].to_vec()).ok()
}
