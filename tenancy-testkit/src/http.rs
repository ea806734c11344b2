//! A raw HTTP/1.1 client for adapter tests: it sends exactly the bytes it
//! is given — duplicate headers, non-UTF-8 values, oversized headers — which
//! well-behaved clients refuse to produce.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A parsed response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Builds a GET request for `path` with `headers` (raw bytes allowed) and
/// `Connection: close`.
pub fn get(path: &str, headers: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = format!("GET {path} HTTP/1.1\r\n").into_bytes();
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        out.extend_from_slice(b"Host: localhost\r\n");
    }
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out
}

/// Builds a `method` request for `path` with `Connection: close`, a bearer
/// token when given, and a JSON body when given.
///
/// ```
/// let r = tenancy_testkit::http::request("POST", "/customers", Some("t0k"), Some(&serde_json::json!({"a": 1})));
/// let text = String::from_utf8(r).unwrap();
/// assert!(text.starts_with("POST /customers HTTP/1.1\r\n"));
/// assert!(text.contains("Authorization: Bearer t0k\r\n"));
/// assert!(text.ends_with("Content-Length: 7\r\n\r\n{\"a\":1}"));
/// ```
pub fn request(
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(t) = bearer {
        out.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.map(serde_json::Value::to_string).unwrap_or_default();
    if !body.is_empty() {
        out.push_str("Content-Type: application/json\r\n");
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    out.into_bytes()
}

/// Adds header lines to a request built by [`request`] or [`get`].
///
/// ```
/// let r = tenancy_testkit::http::request("GET", "/me", None, None);
/// let r = tenancy_testkit::http::with_headers(r, &[("x-forwarded-for", "203.0.113.9")]);
/// assert!(String::from_utf8(r).unwrap().contains("\r\nx-forwarded-for: 203.0.113.9\r\n"));
/// ```
pub fn with_headers(request: Vec<u8>, headers: &[(&str, &str)]) -> Vec<u8> {
    let Some(end) = request.windows(2).position(|w| w == b"\r\n") else {
        return request;
    };
    let mut out = request[..end + 2].to_vec();
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(&request[end + 2..]);
    out
}

/// Sends `request` to `addr` and reads the whole response (10 s timeout).
pub async fn send(addr: SocketAddr, request: &[u8]) -> std::io::Result<RawResponse> {
    let io = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no response in 10 s"))??;
    parse(&raw)
}

/// [`get`] with `Connection: keep-alive`, for [`send_all`].
pub fn get_keep_alive(path: &str, headers: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = get(path, headers);
    let close = b"Connection: close\r\n\r\n";
    out.truncate(out.len() - close.len());
    out.extend_from_slice(b"Connection: keep-alive\r\n\r\n");
    out
}

/// Sends `requests` one after another on **one** connection (HTTP/1.1
/// keep-alive), reading each response before the next request (10 s
/// timeout in all). Bodies must be sized by `Content-Length` or chunked.
pub async fn send_all(addr: SocketAddr, requests: &[Vec<u8>]) -> std::io::Result<Vec<RawResponse>> {
    let io = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut buffered: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        for request in requests {
            stream.write_all(request).await?;
            loop {
                if let Some(len) = complete_response(&buffered)? {
                    let rest = buffered.split_off(len);
                    out.push(parse(&buffered)?);
                    buffered = rest;
                    break;
                }
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(bad("connection closed before the response was complete"));
                }
                buffered.extend_from_slice(&chunk[..n]);
            }
        }
        Ok::<_, std::io::Error>(out)
    };
    tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no response in 10 s"))?
}

/// The length of the first complete response in `raw`, if there is one.
fn complete_response(raw: &[u8]) -> std::io::Result<Option<usize>> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let body = end + 4;
    if head.contains("transfer-encoding: chunked") {
        let Some(last) = raw[body..].windows(5).position(|w| w == b"0\r\n\r\n") else {
            return Ok(None);
        };
        return Ok(Some(body + last + 5));
    }
    let length = head
        .split("\r\n")
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| bad("bad content-length"))
        })
        .transpose()?
        .unwrap_or(0);
    Ok((raw.len() >= body + length).then_some(body + length))
}

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_owned())
}

fn parse(raw: &[u8]) -> std::io::Result<RawResponse> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("bad chunk"))?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad("bad chunk size"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(bad("short chunk"));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
