//! The cheapest HTTP/1.1 client there is: one keep-alive connection over a
//! tokio `TcpStream`, requests written by hand, responses read with a
//! `Content-Length` or chunked body. Just enough for the load generators.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Any error of a tool: printed, never matched on.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A result with an [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One keep-alive connection with its read buffer.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One response: its status, the two headers a long-poll cursor may live
/// in, and its body.
pub struct Response {
    /// The status code.
    pub status: u16,
    /// `Last-Modified`, if any (Nchan's message time).
    pub last_modified: Option<String>,
    /// `ETag`, if any (the shopping cart's cursor; Nchan's message tag).
    pub etag: Option<String>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Conn {
    /// Connects to `addr`, with `TCP_NODELAY`.
    pub async fn connect(addr: SocketAddr) -> Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(1024),
        })
    }

    async fn fill(&mut self) -> Result<()> {
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err("server closed the connection".into());
        }
        Ok(())
    }

    /// Reads one response (`Content-Length` or chunked body).
    pub async fn read_response(&mut self) -> Result<Response> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if self.buf.len() > 64 * 1024 {
                return Err("response head too large".into());
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])?;
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or("malformed status line")?;
        let mut length = None;
        let mut chunked = false;
        let (mut last_modified, mut etag) = (None, None);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>()?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("last-modified") {
                last_modified = Some(value.to_owned());
            } else if name.eq_ignore_ascii_case("etag") {
                etag = Some(value.to_owned());
            }
        }
        let start = head_end + 4;
        let body = if chunked {
            self.read_chunked(start).await?
        } else {
            let length = match (length, status) {
                (Some(n), _) => n,
                (None, 204 | 304) => 0,
                (None, _) => return Err("response without a length".into()),
            };
            while self.buf.len() < start + length {
                self.fill().await?;
            }
            let body = self.buf[start..start + length].to_vec();
            self.buf.drain(..start + length);
            body
        };
        Ok(Response {
            status,
            last_modified,
            etag,
            body,
        })
    }

    async fn read_chunked(&mut self, start: usize) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        let mut pos = start;
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf[pos..], b"\r\n") {
                    break pos + i;
                }
                self.fill().await?;
            };
            let size_text = std::str::from_utf8(&self.buf[pos..line_end])?;
            let size_text = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)?;
            pos = line_end + 2;
            if size == 0 {
                // Trailers (none expected), then the blank line.
                loop {
                    if let Some(i) = find(&self.buf[pos..], b"\r\n") {
                        let blank = i == 0;
                        pos += i + 2;
                        if blank {
                            break;
                        }
                    } else {
                        self.fill().await?;
                    }
                }
                self.buf.drain(..pos);
                return Ok(body);
            }
            while self.buf.len() < pos + size + 2 {
                self.fill().await?;
            }
            body.extend_from_slice(&self.buf[pos..pos + size]);
            pos += size + 2;
        }
    }

    /// Writes `request` (a whole HTTP/1.1 request) and reads its response.
    pub async fn request(&mut self, request: &[u8]) -> Result<Response> {
        self.stream.write_all(request).await?;
        self.read_response().await
    }
}

/// Where `needle` first occurs in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The unsigned integer after `"name":` in a flat JSON object.
pub fn json_u64(body: &[u8], name: &str) -> Option<u64> {
    let key = format!("\"{name}\"");
    let rest = &body[find(body, key.as_bytes())? + key.len()..];
    let rest = &rest[rest.iter().position(|&b| b == b':')? + 1..];
    let rest = &rest[rest.iter().position(|b| !b.is_ascii_whitespace())?..];
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// The string after `"name":` in a flat JSON object (no escapes).
pub fn json_str(body: &[u8], name: &str) -> Option<String> {
    let key = format!("\"{name}\"");
    let rest = &body[find(body, key.as_bytes())? + key.len()..];
    let open = rest.iter().position(|&b| b == b'"')? + 1;
    let len = rest[open..].iter().position(|&b| b == b'"')?;
    String::from_utf8(rest[open..open + len].to_vec()).ok()
}
