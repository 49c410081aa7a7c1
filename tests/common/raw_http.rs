//! Raw HTTP/1.1 exchanges with `serve`, for requests no agent would send (`tests/serve.rs`,
//! `tests/serve_input.rs`, each through `#[path]`).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One exchange on a fresh connection: the status code and body (0 and "" if the server
/// closed the connection without an answer).
pub fn raw_request(url: &str, request: &[u8]) -> (u16, String) {
    let mut stream = connect(url);
    let _ = stream.write_all(request);
    read_answer(&mut stream)
}

/// A connection to `url` (`http://ADDR`) with a read timeout, so that a test never hangs.
pub fn connect(url: &str) -> TcpStream {
    let stream = TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

/// Reads until the server closes: the status code and body.
pub fn read_answer(stream: &mut TcpStream) -> (u16, String) {
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let code = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

/// The head of a POST that closes its connection after the answer.
pub fn post_head(path: &str, content_type: &str, content_length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: \
         {content_type}\r\nContent-Length: {content_length}\r\n\r\n"
    )
}

pub fn post(url: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let mut request = post_head(path, content_type, body.len()).into_bytes();
    request.extend_from_slice(body);
    raw_request(url, &request)
}
