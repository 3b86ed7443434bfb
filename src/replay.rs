//! `metricast replay`: sends a file of records to a server, one
//! `POST /record` per line, pipelined over one keep-alive connection.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "\
usage: metricast replay FILE|- [--url http://HOST:PORT] [--window N]

Sends FILE (or standard input for -), one POST /record body per line, to
the server at --url [http://127.0.0.1:8080], pipelining up to --window
records [64] over one keep-alive connection. Prints a summary; exits 1 when
any record was refused.";
/// Refusals printed in full before the rest are only counted.
const SHOWN_REFUSALS: u64 = 5;

struct Options {
    file: String,
    addr: SocketAddr,
    host: String,
    window: usize,
}

/// Runs the replay tool with its arguments; prints a summary.
pub fn main(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let options = match parse_args(args) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("metricast replay: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match replay(&options) {
        Ok(summary) => {
            println!("{summary}");
            if summary.refused == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("metricast replay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut file = None;
    let mut url = String::from("http://127.0.0.1:8080");
    let mut window = 64;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--url" => url = rest.next().ok_or("--url needs a value")?.clone(),
            "--window" => {
                window = rest
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or("--window needs a whole number above 0")?;
            }
            _ if file.is_none() => file = Some(arg.clone()),
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    let host = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--url {url:?} must start with http://"))?
        .trim_end_matches('/')
        .to_owned();
    let addr =
        host.to_socket_addrs().ok().and_then(|mut all| all.next()).ok_or_else(
            || format!("cannot resolve {host:?}; give HOST:PORT"),
        )?;
    Ok(Options { file: file.ok_or("FILE is required")?, addr, host, window })
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Records sent.
    pub sent: u64,
    /// Records answered 200.
    pub recorded: u64,
    /// Records answered with an error.
    pub refused: u64,
    /// Seconds taken.
    pub seconds: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = self.sent as f64 / self.seconds.max(1e-9);
        write!(
            f,
            "replayed {} records: {} recorded, {} refused, in {:.2} s ({:.0} records/s)",
            self.sent, self.recorded, self.refused, self.seconds, rate
        )
    }
}

fn replay(options: &Options) -> io::Result<Summary> {
    let input: Box<dyn Read> = if options.file == "-" {
        Box::new(io::stdin())
    } else {
        Box::new(File::open(&options.file).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open {}: {e}", options.file),
            )
        })?)
    };
    let stream = TcpStream::connect(options.addr).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot connect to {}: {e}", options.addr),
        )
    })?;
    stream.set_nodelay(true)?;
    let mut client = Client::new(stream);
    let mut summary = Summary::default();
    let started = Instant::now();
    let mut in_flight: VecDeque<u64> = VecDeque::new();
    let mut batch = Vec::new();
    for (index, line) in BufReader::new(input).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let _ = write!(
            batch,
            "POST /record HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{line}",
            options.host,
            line.len()
        );
        in_flight.push_back(index as u64 + 1);
        summary.sent += 1;
        if in_flight.len() >= options.window {
            client.stream.write_all(&batch)?;
            batch.clear();
            while in_flight.len() > options.window / 2 {
                client.check_answer(&mut in_flight, &mut summary)?;
            }
        }
    }
    client.stream.write_all(&batch)?;
    while !in_flight.is_empty() {
        client.check_answer(&mut in_flight, &mut summary)?;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn new(stream: TcpStream) -> Client {
        Client { stream, buf: Vec::new() }
    }

    /// Reads one answer and counts it against the oldest line in flight.
    fn check_answer(
        &mut self,
        in_flight: &mut VecDeque<u64>,
        summary: &mut Summary,
    ) -> io::Result<()> {
        let (status, body) = self.read_answer()?;
        let line = in_flight.pop_front().unwrap_or(0);
        if status == 200 {
            summary.recorded += 1;
        } else {
            summary.refused += 1;
            if summary.refused <= SHOWN_REFUSALS {
                eprintln!(
                    "line {line}: {status} {}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
        Ok(())
    }

    fn read_answer(&mut self) -> io::Result<(u16, Vec<u8>)> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut answer = httparse::Response::new(&mut headers);
            let parsed = answer.parse(&self.buf).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad answer: {e}"),
                )
            })?;
            if let httparse::Status::Complete(head_len) = parsed {
                let length = answer
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| {
                        std::str::from_utf8(h.value).ok()?.trim().parse().ok()
                    })
                    .unwrap_or(0usize);
                let status = answer.code.unwrap_or(0);
                if self.buf.len() >= head_len + length {
                    let body = self.buf[head_len..head_len + length].to_vec();
                    self.buf.drain(..head_len + length);
                    return Ok((status, body));
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection before answering every record",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}
