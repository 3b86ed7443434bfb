//! Load benchmark: HTTP throughput (with wrk) and WebSocket fan-out (with
//! a client of its own) against the release server, or against any server
//! already running on loopback.
//!
//! ```text
//! cargo bench --bench load                       # defaults, about 2 minutes
//! cargo bench --bench load -- --scenarios ws --clients 200 --rate 500 --duration 2
//! cargo bench --bench load -- --url http://127.0.0.1:18080 --pid 1234 --label axum
//! cargo bench --bench load -- --scenarios growth   # how cost grows, ~3 minutes
//! cargo bench --bench load -- --help
//! ```
//!
//! Without `--url` it starts `target/release/metricast` (cargo builds it
//! for the benchmark) pinned to CPU 0 with `taskset`, on port 0, a fresh
//! server for every group of scenarios; the load generators run on CPU 1.
//! Everything is aimed at loopback only, every phase has a deadline and
//! every count a cap. One table with every scenario is printed at the end.
//!
//! The `growth` group (not in the default set) measures how cost grows:
//! dashboards (N = 100, 1000, 10000 at 100 records/s for 5 s, a fresh
//! server per N) and distinct metrics (M = 10, 1000, 100000, a fresh server
//! per M started with `METRICAST_MAX_METRICS=200000`: the `GET /metrics`
//! body, its wrk throughput, the time a new dashboard takes to get its
//! whole snapshot, and the RSS after seeding). It needs servers of its own,
//! so it is not run against `--url`.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

const RELAXED: Ordering = Ordering::Relaxed;

/// Most dashboards in one scenario.
const MAX_CLIENTS: usize = 20_000;
/// Longest load phase (and drain), in seconds.
const MAX_SECONDS: f64 = 60.0;
/// Highest record rate asked for.
const MAX_RATE: f64 = 200_000.0;
/// Time allowed for all dashboards to connect and get their snapshot.
const CONNECT_DEADLINE: Duration = Duration::from_secs(60);
/// WebSocket handshakes in flight at once, over all client threads.
const CONNECT_CONCURRENCY: usize = 200;
/// Time allowed for a started server to say where it listens.
const START_DEADLINE: Duration = Duration::from_secs(10);
/// Time allowed for a server to exit after SIGTERM before SIGKILL.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Blocking HTTP client timeouts.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Records/s and seconds of each dashboard-growth step.
const GROWTH_RATE: f64 = 100.0;
const GROWTH_SECONDS: f64 = 5.0;
/// wrk connections and seconds of each metric-growth step.
const GROWTH_WRK_CONNS: usize = 64;
const GROWTH_WRK_SECONDS: f64 = 5.0;
/// `--max-metrics` of the servers started for the metric-growth steps,
/// and so the most metrics one step may seed.
const GROWTH_MAX_METRICS: usize = 200_000;
/// Time allowed for seeding the metrics of one step.
const SEED_DEADLINE: Duration = Duration::from_secs(120);
/// Seeding requests written at once before their answers are read.
const SEED_WINDOW: usize = 256;
/// Time allowed for one dashboard to connect and get its whole snapshot.
const SNAPSHOT_DEADLINE: Duration = Duration::from_secs(30);
/// New dashboards timed, one after another, per metric-growth step.
const SNAPSHOT_TRIES: usize = 5;
/// The key and accept value of RFC 6455's example handshake.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fn usage() -> &'static str {
    "usage: cargo bench --bench load -- [options]

  --url http://127.0.0.1:PORT  measure a server already running (loopback only)
  --pid PID            its process id, for CPU time and RSS (with --url)
  --label NAME         name for the table rows [metricast, or the url]
  --scenarios LIST     any of http,ws,idle,growth [http,ws,idle]; growth
                       starts its own servers, so it is skipped with --url
  --clients LIST       dashboards per ws scenario [1000,5000] (max 20000)
  --rate LIST          records/s per ws scenario, one value or one per
                       --clients entry [1000,200]
  --duration SECS      length of each wrk run and of each ws posting phase
                       [10] (max 60)
  --drain SECS         longest wait for the last updates after posting [10]
                       (max 60)
  --idle-clients N     dashboards for the idle-memory scenario [10000]
  --growth-dashboards LIST  dashboards per growth step, each at 100
                       records/s for 5 s [100,1000,10000] (max 20000)
  --growth-metrics LIST  distinct metrics per growth step
                       [10,1000,100000] (max 200000)
  --http-conns N       wrk connections [64] (max 1000)
  --post-conns N       keep-alive connections posting records [8] (max 64)
  --threads N          dashboard client threads [1] (max 8)
  --server-bin PATH    server binary [the one cargo built for this bench]
  --server-cpu N       CPU the started server is pinned to [0]
  --loadgen-cpu N      CPU this tool and wrk are pinned to [1]; 'none' unpins
  --help               this text"
}

// ---------------------------------------------------------------------
// Options

#[derive(Debug, Clone)]
struct Opts {
    url: Option<SocketAddr>,
    pid: Option<u32>,
    label: String,
    http: bool,
    ws: bool,
    idle: bool,
    growth: bool,
    clients: Vec<usize>,
    rates: Vec<f64>,
    duration: f64,
    drain: f64,
    idle_clients: usize,
    growth_dashboards: Vec<usize>,
    growth_metrics: Vec<usize>,
    http_conns: usize,
    post_conns: usize,
    threads: usize,
    server_bin: PathBuf,
    server_cpu: Option<usize>,
    loadgen_cpu: Option<usize>,
}

fn parse_list<T: std::str::FromStr>(
    name: &str,
    value: &str,
) -> Result<Vec<T>, String> {
    value
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| format!("{name}: cannot read {v:?} as a number"))
        })
        .collect()
}

fn parse_one<T: std::str::FromStr>(
    name: &str,
    value: &str,
) -> Result<T, String> {
    value.trim().parse().map_err(|_| format!("{name}: cannot read {value:?}"))
}

fn bounded(name: &str, v: f64, lo: f64, hi: f64) -> Result<f64, String> {
    if v.is_finite() && (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{name} must be between {lo} and {hi}, not {v}"))
    }
}

/// Parses `http://HOST:PORT[/]` and refuses anything but loopback.
fn parse_url(url: &str) -> Result<SocketAddr, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("--url {url:?}: only http:// URLs are measured")
    })?;
    let authority = rest.split('/').next().unwrap_or("");
    if rest.len() > authority.len() + 1 {
        return Err(format!(
            "--url {url:?}: give the base URL, without a path"
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, port) = v6
            .split_once("]:")
            .ok_or_else(|| format!("--url {url:?}: expected [::1]:PORT"))?;
        (host, port)
    } else {
        authority
            .rsplit_once(':')
            .ok_or_else(|| format!("--url {url:?}: the port is required"))?
    };
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().map_err(|_| {
            format!(
                "--url {url:?}: the host must be an IP address or localhost"
            )
        })?
    };
    if !ip.is_loopback() {
        return Err(format!(
            "--url {url:?}: refusing a non-loopback address; this tool only \
             loads 127.0.0.0/8 and ::1"
        ));
    }
    let port: u16 = parse_one("--url port", port)?;
    if port == 0 {
        return Err(format!("--url {url:?}: port 0 is not a server"));
    }
    Ok(SocketAddr::new(ip, port))
}

fn parse_args(args: &[String]) -> Result<Option<Opts>, String> {
    let mut opts = Opts {
        url: None,
        pid: None,
        label: String::new(),
        http: true,
        ws: true,
        idle: true,
        growth: false,
        clients: vec![1000, 5000],
        rates: vec![1000.0, 200.0],
        duration: 10.0,
        drain: 10.0,
        idle_clients: 10_000,
        growth_dashboards: vec![100, 1000, 10_000],
        growth_metrics: vec![10, 1000, 100_000],
        http_conns: 64,
        post_conns: 8,
        threads: 1,
        server_bin: PathBuf::from(env!("CARGO_BIN_EXE_metricast")),
        server_cpu: Some(0),
        loadgen_cpu: Some(1),
    };
    let mut clients_given = false;
    let mut rates_given = false;
    let mut i = 0;
    while i < args.len() {
        let name = args[i].as_str();
        i += 1;
        match name {
            "--bench" => continue,
            "--help" | "-h" => return Ok(None),
            _ => {}
        }
        let value = match args.get(i) {
            Some(v) if name.starts_with("--") => v.as_str(),
            _ => return Err(format!("unknown argument {name:?} (try --help)")),
        };
        i += 1;
        match name {
            "--url" => opts.url = Some(parse_url(value)?),
            "--pid" => opts.pid = Some(parse_one("--pid", value)?),
            "--label" => opts.label = value.to_owned(),
            "--scenarios" => {
                opts.http = false;
                opts.ws = false;
                opts.idle = false;
                opts.growth = false;
                for s in value.split(',') {
                    match s.trim() {
                        "http" => opts.http = true,
                        "ws" => opts.ws = true,
                        "idle" => opts.idle = true,
                        "growth" => opts.growth = true,
                        other => {
                            return Err(format!(
                                "--scenarios: unknown {other:?}; use http, ws, idle, growth"
                            ))
                        }
                    }
                }
            }
            "--clients" => {
                opts.clients = parse_list("--clients", value)?;
                clients_given = true;
            }
            "--rate" => {
                opts.rates = parse_list("--rate", value)?;
                rates_given = true;
            }
            "--duration" => {
                let v = parse_one("--duration", value)?;
                opts.duration = bounded("--duration", v, 1.0, MAX_SECONDS)?;
            }
            "--drain" => {
                let v = parse_one("--drain", value)?;
                opts.drain = bounded("--drain", v, 0.0, MAX_SECONDS)?;
            }
            "--idle-clients" => {
                opts.idle_clients = parse_one("--idle-clients", value)?
            }
            "--growth-dashboards" => {
                opts.growth_dashboards =
                    parse_list("--growth-dashboards", value)?
            }
            "--growth-metrics" => {
                opts.growth_metrics = parse_list("--growth-metrics", value)?
            }
            "--http-conns" => {
                opts.http_conns = parse_one("--http-conns", value)?
            }
            "--post-conns" => {
                opts.post_conns = parse_one("--post-conns", value)?
            }
            "--threads" => opts.threads = parse_one("--threads", value)?,
            "--server-bin" => opts.server_bin = PathBuf::from(value),
            "--server-cpu" => opts.server_cpu = cpu_arg("--server-cpu", value)?,
            "--loadgen-cpu" => {
                opts.loadgen_cpu = cpu_arg("--loadgen-cpu", value)?
            }
            _ => return Err(format!("unknown option {name:?} (try --help)")),
        }
    }
    if clients_given && !rates_given {
        opts.rates = vec![1000.0];
    }
    if opts.rates.len() == 1 {
        opts.rates = vec![opts.rates[0]; opts.clients.len()];
    }
    if opts.rates.len() != opts.clients.len() {
        return Err(format!(
            "--rate has {} values for {} --clients values; give one rate or one per client count",
            opts.rates.len(),
            opts.clients.len()
        ));
    }
    for &n in opts.clients.iter().chain([&opts.idle_clients]) {
        bounded("--clients", n as f64, 1.0, MAX_CLIENTS as f64)?;
    }
    for &r in &opts.rates {
        bounded("--rate", r, 1.0, MAX_RATE)?;
    }
    for &n in &opts.growth_dashboards {
        bounded("--growth-dashboards", n as f64, 1.0, MAX_CLIENTS as f64)?;
    }
    for &m in &opts.growth_metrics {
        bounded("--growth-metrics", m as f64, 1.0, GROWTH_MAX_METRICS as f64)?;
    }
    bounded("--http-conns", opts.http_conns as f64, 1.0, 1000.0)?;
    bounded("--post-conns", opts.post_conns as f64, 1.0, 64.0)?;
    bounded("--threads", opts.threads as f64, 1.0, 8.0)?;
    if opts.pid.is_some() && opts.url.is_none() {
        return Err(
            "--pid goes with --url (a server started here is known)".into()
        );
    }
    if opts.label.is_empty() {
        opts.label = match opts.url {
            Some(addr) => format!("{addr}"),
            None => "metricast".into(),
        };
    }
    Ok(Some(opts))
}

fn cpu_arg(name: &str, value: &str) -> Result<Option<usize>, String> {
    if value == "none" {
        Ok(None)
    } else {
        parse_one(name, value).map(Some)
    }
}

// ---------------------------------------------------------------------
// The process environment: clock, pinning, file limits, /proc

/// The clock every send and receive time is measured on.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn now_us() -> u64 {
    base().elapsed().as_micros() as u64
}

fn cpu_count() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// Pins the calling thread (and so every thread it starts later) to `cpu`.
fn pin_self(cpu: usize) -> Result<(), String> {
    // SAFETY: cpu_set_t is plain data; the calls only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if libc::sched_setaffinity(0, size, &set) != 0 {
            return Err(io::Error::last_os_error().to_string());
        }
    }
    Ok(())
}

/// Raises RLIMIT_NOFILE to at least `want` if it can; returns the limit.
/// A server started afterwards inherits it.
fn raise_nofile(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit read and write the struct given.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur >= want {
            return lim.rlim_cur;
        }
        // Root may raise the hard limit too, up to fs.nr_open.
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(lim.rlim_max);
        let target = want.min(nr_open.max(lim.rlim_max));
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: lim.rlim_max.max(target),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return target;
        }
        let soft =
            libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) == 0 {
            return lim.rlim_max;
        }
        lim.rlim_cur
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// User plus system CPU seconds of a process, all threads.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// Resident set size in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// A command pinned to `cpu` with taskset when both are available.
fn pinned_command(program: &Path, cpu: Option<usize>) -> (Command, bool) {
    match (cpu, find_in_path("taskset")) {
        (Some(cpu), Some(taskset)) => {
            let mut cmd = Command::new(taskset);
            cmd.arg("-c").arg(cpu.to_string()).arg(program);
            (cmd, true)
        }
        _ => (Command::new(program), false),
    }
}

/// Makes the child receive `signal` should this process die first, so no
/// server or wrk outlives the benchmark. The flag survives taskset's exec.
fn die_with_parent(cmd: &mut Command, signal: libc::c_int) {
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends `signal` to a child this process started.
fn signal_child(child: &Child, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill has no memory effects; the pid is our own child,
        // not yet reaped, so it cannot have been reused.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Waits for a child until `deadline`; `None` if it is still running.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20))
            }
            _ => return None,
        }
    }
}

/// SIGTERM, then SIGKILL after the stop deadline; returns how it ended.
fn stop_child(child: &mut Child) -> String {
    if let Ok(Some(status)) = child.try_wait() {
        return format!("had already exited ({status})");
    }
    signal_child(child, libc::SIGTERM);
    if let Some(status) = wait_until(child, Instant::now() + STOP_DEADLINE) {
        return status.to_string();
    }
    signal_child(child, libc::SIGKILL);
    let _ = child.wait();
    format!("did not stop within {STOP_DEADLINE:?} of SIGTERM; killed")
}

// ---------------------------------------------------------------------
// The server under test

#[derive(Debug, Default)]
struct ServerLog {
    warnings: usize,
    errors: usize,
    first: Vec<String>,
}

struct Server {
    addr: SocketAddr,
    pid: Option<u32>,
    child: Option<Child>,
    log: Arc<Mutex<ServerLog>>,
    pinned: bool,
    /// The `--max-connections` it was started with, when above the default.
    raised: Option<usize>,
}

impl Server {
    /// The server named by `--url`.
    fn external(addr: SocketAddr, pid: Option<u32>) -> Server {
        Server {
            addr,
            pid,
            child: None,
            log: Arc::default(),
            pinned: false,
            raised: None,
        }
    }

    /// Starts the release server on a free loopback port, with `env` added
    /// to the environment it inherits.
    fn start(
        opts: &Opts,
        max_connections: usize,
        env: &[(&str, String)],
    ) -> Result<Server, String> {
        let bin = &opts.server_bin;
        if !bin.is_file() {
            return Err(format!(
                "{} does not exist; run `cargo build --release` first",
                bin.display()
            ));
        }
        let (mut cmd, pinned) = pinned_command(bin, opts.server_cpu);
        cmd.args(["--listen", "127.0.0.1:0", "--log-level", "info"]);
        let raised = max_connections > 10_000;
        if raised {
            cmd.arg("--max-connections").arg(max_connections.to_string());
        }
        for (name, value) in env {
            cmd.env(name, value);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        die_with_parent(&mut cmd, libc::SIGTERM);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let log: Arc<Mutex<ServerLog>> = Arc::default();
        let (tx, rx) = mpsc::channel();
        let log_for_reader = Arc::clone(&log);
        // Reads the log to the end so that the server never blocks on a
        // full pipe, and counts warnings and errors.
        thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find("listening on ") {
                    let addr = line[at + 13..].split_whitespace().next();
                    if let (Some(tx), Some(addr)) = (tx.take(), addr) {
                        let _ = tx.send(addr.to_owned());
                    }
                }
                let mut log = log_for_reader.lock().unwrap();
                let warn = line.contains("[WARN]");
                let error = line.contains("[ERROR]");
                log.warnings += usize::from(warn);
                log.errors += usize::from(error);
                if (warn || error) && log.first.len() < 3 {
                    log.first.push(line.clone());
                }
            }
        });
        let pid = child.id();
        let mut server = Server {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            pid: Some(pid),
            child: Some(child),
            log,
            pinned,
            raised: raised.then_some(max_connections),
        };
        let addr = match rx.recv_timeout(START_DEADLINE) {
            Ok(addr) => addr,
            Err(_) => {
                return Err(format!(
                    "the server did not log 'listening on' within {START_DEADLINE:?}"
                ))
            }
        };
        server.addr = addr
            .parse()
            .map_err(|_| format!("cannot read the listen address {addr:?}"))?;
        if !server.addr.ip().is_loopback() {
            return Err(format!(
                "the server listens on {addr}, not on loopback"
            ));
        }
        // Let it settle before the first RSS sample.
        thread::sleep(Duration::from_millis(200));
        Ok(server)
    }

    fn cpu(&self) -> Option<f64> {
        self.pid.and_then(cpu_seconds)
    }

    fn rss(&self) -> Option<u64> {
        self.pid.and_then(rss_kib)
    }

    fn log_note(&self) -> String {
        let log = self.log.lock().unwrap();
        if log.warnings + log.errors == 0 {
            return String::new();
        }
        let mut note = format!(
            "server log: {} warnings, {} errors",
            log.warnings, log.errors
        );
        if let Some(first) = log.first.first() {
            let _ = write!(
                note,
                " (first: {})",
                first.chars().take(160).collect::<String>()
            );
        }
        note
    }

    /// Stops a server this tool started; returns a note if it misbehaved.
    fn stop(mut self) -> Option<String> {
        let mut child = self.child.take()?;
        let how = stop_child(&mut child);
        (how != "exit status: 0").then(|| format!("server stop: {how}"))
    }

    fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => self
                .pid
                .is_none_or(|pid| Path::new(&format!("/proc/{pid}")).exists()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            stop_child(child);
        }
    }
}

// ---------------------------------------------------------------------
// A small blocking HTTP/1.1 client for seeding and posting

struct HttpClient {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
}

impl HttpClient {
    fn connect(addr: SocketAddr) -> io::Result<HttpClient> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(HttpClient {
            stream,
            host: addr.to_string(),
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one request and reads its answer: status and body.
    fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> io::Result<(u16, Vec<u8>)> {
        let mut req = Vec::with_capacity(256);
        let _ =
            write!(req, "{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        if let Some(body) = body {
            let _ = write!(
                req,
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            req.extend_from_slice(body);
        } else {
            req.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&req)?;
        self.read_answer()
    }

    fn read_answer(&mut self) -> io::Result<(u16, Vec<u8>)> {
        let bad =
            |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let status = resp.code.unwrap_or(0);
                    let mut length = 0usize;
                    for h in resp.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            length = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse().ok())
                                .ok_or_else(|| {
                                    bad("bad Content-Length".into())
                                })?;
                        } else if h
                            .name
                            .eq_ignore_ascii_case("transfer-encoding")
                        {
                            return Err(bad(
                                "chunked answers are not supported".into(),
                            ));
                        }
                    }
                    if length > 64 << 20 {
                        return Err(bad(format!("answer of {length} bytes")));
                    }
                    while self.buf.len() < head_len + length {
                        self.fill()?;
                    }
                    let body = self.buf[head_len..head_len + length].to_vec();
                    self.buf.drain(..head_len + length);
                    return Ok((status, body));
                }
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() > 64 * 1024 {
                        return Err(bad("answer head over 64 KiB".into()));
                    }
                    self.fill()?;
                }
                Err(e) => return Err(bad(format!("malformed answer: {e}"))),
            }
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

// ---------------------------------------------------------------------
// Results

#[derive(Debug, Default, Clone)]
struct Row {
    label: String,
    scenario: String,
    conns: Option<usize>,
    target: Option<f64>,
    achieved: Option<f64>,
    delivered: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    lost: Option<i64>,
    errors: Option<u64>,
    cpu_us: Option<f64>,
    rss_start: Option<u64>,
    kib_per_dash: Option<f64>,
    rss_end: Option<u64>,
    notes: Vec<String>,
}

impl Row {
    fn new(opts: &Opts, scenario: impl Into<String>) -> Row {
        Row {
            label: opts.label.clone(),
            scenario: scenario.into(),
            ..Row::default()
        }
    }

    fn failed(opts: &Opts, scenario: impl Into<String>, why: String) -> Row {
        let mut row = Row::new(opts, scenario);
        row.notes.push(format!("FAILED: {why}"));
        row
    }
}

fn fmt_num(v: Option<f64>, decimals: usize) -> String {
    match v {
        None => "-".into(),
        Some(v) if !v.is_finite() => "-".into(),
        Some(v) => {
            let text = format!("{v:.decimals$}");
            let (int, frac) = text
                .split_once('.')
                .map_or((text.as_str(), ""), |(i, f)| (i, f));
            let (sign, digits) =
                int.strip_prefix('-').map_or(("", int), |d| ("-", d));
            let mut grouped = String::new();
            for (i, c) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i) % 3 == 0 {
                    grouped.push(',');
                }
                grouped.push(c);
            }
            if frac.is_empty() {
                format!("{sign}{grouped}")
            } else {
                format!("{sign}{grouped}.{frac}")
            }
        }
    }
}

fn mib(kib: Option<u64>) -> Option<f64> {
    kib.map(|k| k as f64 / 1024.0)
}

fn print_table(rows: &[Row]) {
    let header = [
        "label",
        "scenario",
        "conns",
        "target/s",
        "achieved/s",
        "delivered/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "lost",
        "errors",
        "server CPU µs/op",
        "RSS start MiB",
        "KiB/dashboard",
        "RSS end MiB",
        "notes",
    ];
    println!();
    println!("| {} |", header.join(" | "));
    println!("|{}", "---|".repeat(header.len()));
    for r in rows {
        let cells = [
            r.label.clone(),
            r.scenario.clone(),
            fmt_num(r.conns.map(|c| c as f64), 0),
            fmt_num(r.target, 0),
            fmt_num(r.achieved, 0),
            fmt_num(r.delivered, 0),
            fmt_num(r.p50_ms, 2),
            fmt_num(r.p99_ms, 2),
            fmt_num(r.max_ms, 2),
            fmt_num(r.lost.map(|l| l as f64), 0),
            fmt_num(r.errors.map(|e| e as f64), 0),
            fmt_num(r.cpu_us, 2),
            fmt_num(mib(r.rss_start), 1),
            fmt_num(r.kib_per_dash, 1),
            fmt_num(mib(r.rss_end), 1),
            r.notes.join("; ").replace('|', "/"),
        ];
        println!("| {} |", cells.join(" | "));
    }
    println!();
    println!(
        "Columns: http rows: conns = wrk connections, achieved = req/s, p50/p99 \
         from wrk (none when pipelined), errors = non-2xx + socket errors, CPU = \
         server CPU time per request. ws rows: target/achieved = records/s \
         asked/accepted, delivered = metric_update messages received by all \
         dashboards per second (first POST to last message), latency = POST \
         sent to update received, lost = dashboards x accepted - received after \
         the drain, CPU = server CPU time per delivered update, KiB/dashboard = \
         RSS growth from connecting the dashboards / N. RSS start = before the \
         scenario's first connection. growth dashboards rows are ws rows. \
         growth metrics rows: GET /metrics is an http row whose RSS start is \
         before seeding and RSS end after seeding (before wrk); in a \
         dashboard snapshot row p50/max = time from connecting a dashboard \
         to having its whole snapshot (median and slowest of the tries)."
    );
}

// ---------------------------------------------------------------------
// HTTP scenarios (wrk)

const POST_BODY: &str = r#"{"metric": "revenue", "value": 49.99, "metadata": {"plan": "pro", "currency": "EUR"}}"#;

fn lua_post() -> String {
    format!(
        "-- POST /record with the protocol's example body\n\
         wrk.method = \"POST\"\n\
         wrk.body = '{POST_BODY}'\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n"
    )
}

const LUA_PIPELINE: &str = "\
-- GET /metrics, 16 requests written at once per round trip
local depth = 16
local batch = nil

function init(args)
  local parts = {}
  for i = 1, depth do
    parts[i] = wrk.format(\"GET\", \"/metrics\")
  end
  batch = table.concat(parts)
end

function request()
  return batch
end
";

/// Records 20 metrics (two records each) so that GET /metrics has a body
/// of realistic size; returns that body's length.
fn seed(addr: SocketAddr) -> Result<usize, String> {
    let mut client =
        HttpClient::connect(addr).map_err(|e| format!("seed: {e}"))?;
    let names = [
        "api_calls",
        "signup",
        "login",
        "logout",
        "revenue",
        "refund",
        "page_view",
        "search",
        "checkout",
        "cart_add",
        "cart_remove",
        "error_4xx",
        "error_5xx",
        "latency_ms",
        "upload_bytes",
        "download_bytes",
        "queue_depth",
        "cache_hit",
        "cache_miss",
        "email_sent",
    ];
    for (i, name) in names.iter().enumerate() {
        let bodies = [
            format!(
                r#"{{"metric":"{name}","value":{}.5,"metadata":{{"region":"eu-west-{}","plan":"pro"}}}}"#,
                i + 1,
                i % 3
            ),
            format!(r#"{{"metric":"{name}","value":1}}"#),
        ];
        for body in bodies {
            let (status, answer) = client
                .request("POST", "/record", Some(body.as_bytes()))
                .map_err(|e| format!("seed: {e}"))?;
            if status != 200 {
                return Err(format!(
                    "seed: POST /record got {status}: {}",
                    String::from_utf8_lossy(&answer)
                ));
            }
        }
    }
    let (status, body) = client
        .request("GET", "/metrics", None)
        .map_err(|e| format!("seed: {e}"))?;
    if status != 200 {
        return Err(format!("seed: GET /metrics got {status}"));
    }
    Ok(body.len())
}

#[derive(Debug, Default)]
struct WrkResult {
    requests: u64,
    rps: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    non2xx: u64,
    socket_errors: u64,
}

fn parse_duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = text.split_at(split);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        _ => return None,
    })
}

fn parse_wrk(output: &str) -> Result<WrkResult, String> {
    let mut r = WrkResult::default();
    let mut saw_rps = false;
    for line in output.lines() {
        let t = line.trim();
        let words: Vec<&str> = t.split_whitespace().collect();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps =
                v.trim().parse().map_err(|_| format!("wrk: bad line {t:?}"))?;
            saw_rps = true;
        } else if t.starts_with("50%") {
            r.p50_ms = words.get(1).and_then(|w| parse_duration_ms(w));
        } else if t.starts_with("99%") {
            r.p99_ms = words.get(1).and_then(|w| parse_duration_ms(w));
        } else if words.len() >= 3 && words[1] == "requests" && words[2] == "in"
        {
            r.requests = words[0].parse().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.non2xx = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            // connect 0, read 0, write 0, timeout 0
            r.socket_errors = v
                .split(',')
                .filter_map(|part| {
                    part.split_whitespace().nth(1)?.parse::<u64>().ok()
                })
                .sum();
        }
    }
    if !saw_rps {
        return Err("wrk printed no Requests/sec line".into());
    }
    Ok(r)
}

fn run_wrk(
    opts: &Opts,
    wrk: &Path,
    url: &str,
    script: Option<&Path>,
) -> Result<WrkResult, String> {
    let (mut cmd, _) = pinned_command(wrk, opts.loadgen_cpu);
    let seconds = opts.duration.round().max(1.0) as u64;
    cmd.arg("-t1")
        .arg(format!("-c{}", opts.http_conns))
        .arg(format!("-d{seconds}s"))
        .arg("--latency");
    if let Some(script) = script {
        cmd.arg("-s").arg(script);
    }
    cmd.arg(url);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    die_with_parent(&mut cmd, libc::SIGKILL);
    let mut child = cmd.spawn().map_err(|e| format!("cannot run wrk: {e}"))?;
    // Read its output on threads so a full pipe cannot stall it.
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(seconds + 30);
    let status = match wait_until(&mut child, deadline) {
        Some(status) => status,
        None => {
            signal_child(&child, libc::SIGKILL);
            let _ = child.wait();
            return Err("wrk did not finish in time; killed".into());
        }
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if !status.success() {
        return Err(format!("wrk failed ({status}): {}", err.trim()));
    }
    parse_wrk(&out)
}

fn run_http(opts: &Opts, server: &Server, tmp: &Path, rows: &mut Vec<Row>) {
    let Some(wrk) = find_in_path("wrk") else {
        eprintln!("load: wrk is not installed; skipping the HTTP scenarios (apt-get install wrk)");
        let mut row = Row::new(opts, "http");
        row.notes.push("skipped: wrk is not installed".into());
        rows.push(row);
        return;
    };
    let body_len = match seed(server.addr) {
        Ok(n) => n,
        Err(e) => {
            rows.push(Row::failed(opts, "http", e));
            return;
        }
    };
    eprintln!("load: seeded 20 metrics; GET /metrics body is {body_len} bytes");
    let post_script = tmp.join("post.lua");
    let pipe_script = tmp.join("pipeline.lua");
    if let Err(e) = std::fs::write(&post_script, lua_post())
        .and_then(|()| std::fs::write(&pipe_script, LUA_PIPELINE))
    {
        rows.push(Row::failed(
            opts,
            "http",
            format!("cannot write Lua scripts: {e}"),
        ));
        return;
    }
    let base_url = format!("http://{}", server.addr);
    // GET before POST: every POST adds a metadata object, which would
    // change what GET returns.
    let tests: [(&str, String, Option<&Path>, bool); 3] = [
        ("http GET /metrics", format!("{base_url}/metrics"), None, false),
        (
            "http GET /metrics x16 pipelined",
            format!("{base_url}/metrics"),
            Some(&pipe_script),
            true,
        ),
        (
            "http POST /record",
            format!("{base_url}/record"),
            Some(&post_script),
            false,
        ),
    ];
    for (name, url, script, pipelined) in tests {
        eprintln!(
            "load: {name}: wrk -c{} for {} s",
            opts.http_conns,
            opts.duration.round()
        );
        let mut row = Row::new(opts, name);
        row.conns = Some(opts.http_conns);
        row.rss_start = server.rss();
        let cpu0 = server.cpu();
        match run_wrk(opts, &wrk, &url, script) {
            Ok(r) => {
                row.achieved = Some(r.rps);
                if !pipelined {
                    row.p50_ms = r.p50_ms;
                    row.p99_ms = r.p99_ms;
                }
                row.errors = Some(r.non2xx + r.socket_errors);
                if let (Some(a), Some(b)) = (cpu0, server.cpu()) {
                    if r.requests > 0 {
                        row.cpu_us = Some((b - a) * 1e6 / r.requests as f64);
                    }
                }
                if name.contains("GET") {
                    row.notes.push(format!("body {body_len} B"));
                }
            }
            Err(e) => row.notes.push(format!("FAILED: {e}")),
        }
        row.rss_end = server.rss();
        eprintln!(
            "load:   {} req/s, p99 {} ms",
            fmt_num(row.achieved, 0),
            fmt_num(row.p99_ms, 2)
        );
        rows.push(row);
    }
}

// ---------------------------------------------------------------------
// WebSocket dashboards

/// Counters the client threads share with the main thread.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Upgrades answered with 101.
    upgraded: AtomicUsize,
    /// Dashboards that got their first snapshot.
    snapshots: AtomicUsize,
    /// Connections that failed before their first snapshot.
    failed: AtomicUsize,
    /// Dashboards closed (by the server or by an error) after the snapshot.
    closed: AtomicUsize,
    /// Our metric_update messages received, by all dashboards.
    received: AtomicU64,
    /// Receive time (µs) of the newest update.
    last_recv_us: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn note_error(&self, what: String) {
        let mut first = self.first_error.lock().unwrap();
        first.get_or_insert(what);
    }
}

/// Log-linear latency histogram in µs: exact below 128, then 64 buckets
/// per power of two, so a reported value is within 1 % of the truth.
#[derive(Clone)]
struct Hist {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Hist {
    fn new() -> Hist {
        Hist { counts: vec![0; 59 * 64 + 64], total: 0, max: 0 }
    }

    fn index(v: u64) -> usize {
        if v < 128 {
            v as usize
        } else {
            let msb = 63 - v.leading_zeros();
            let shift = msb - 6;
            (shift as usize + 1) * 64 + ((v >> shift) as usize - 64)
        }
    }

    fn value(i: usize) -> f64 {
        if i < 128 {
            i as f64
        } else {
            let shift = i / 64 - 1;
            let low = ((i % 64 + 64) as u64) << shift;
            low as f64 + (1u64 << shift) as f64 / 2.0
        }
    }

    fn record(&mut self, v: u64) {
        self.counts[Hist::index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    fn merge(&mut self, other: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    fn quantile_us(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Hist::value(i).min(self.max as f64));
            }
        }
        Some(self.max as f64)
    }
}

/// What one client thread saw.
struct ThreadStats {
    hist: Hist,
    resyncs: u64,
    keepalives: u64,
    pings: u64,
    other_updates: u64,
    unexpected: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    Upgrading,
    Open,
    Dead,
}

struct Dash {
    stream: mio::net::TcpStream,
    phase: Phase,
    /// Bytes received but not yet parsed (a partial frame).
    inbuf: Vec<u8>,
    /// Bytes to send (the handshake, pongs).
    out: Vec<u8>,
    snapshot: bool,
}

/// Extracts the `t` of our metadata (`"t":<µs>`) from an update.
fn find_send_time(payload: &[u8]) -> Option<u64> {
    // The metadata sits at the end of the message, so search from there.
    let at = payload.windows(4).rposition(|w| w == b"\"t\":")?;
    let digits = payload[at + 4..]
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| b.is_ascii_digit());
    let mut v: u64 = 0;
    let mut any = false;
    for d in digits {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        any = true;
    }
    any.then_some(v)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

enum FrameResult {
    /// Bytes consumed.
    More(usize),
    /// The server sent a close frame.
    Closed,
}

struct ThreadCtx<'a> {
    shared: &'a Shared,
    stats: ThreadStats,
    now_us: u64,
    received: u64,
}

impl ThreadCtx<'_> {
    fn on_text(&mut self, payload: &[u8], snapshot: &mut bool) {
        let head = &payload[..payload.len().min(48)];
        if payload.starts_with(b"{\"event\":\"metric_update\"")
            || contains(head, b"metric_update")
        {
            match find_send_time(payload) {
                Some(t) => {
                    self.stats.hist.record(self.now_us.saturating_sub(t));
                    self.received += 1;
                }
                None => self.stats.other_updates += 1,
            }
        } else if contains(head, b"snapshot") {
            if *snapshot {
                self.stats.resyncs += 1;
            } else {
                *snapshot = true;
                self.shared.snapshots.fetch_add(1, RELAXED);
            }
        } else if contains(head, b"keepalive") {
            self.stats.keepalives += 1;
        } else {
            self.stats.unexpected += 1;
        }
    }

    /// Parses the complete frames at the front of `buf`.
    fn frames(
        &mut self,
        buf: &[u8],
        snapshot: &mut bool,
        out: &mut Vec<u8>,
    ) -> Result<FrameResult, String> {
        let mut pos = 0;
        loop {
            let b = &buf[pos..];
            if b.len() < 2 {
                break;
            }
            let fin = b[0] & 0x80 != 0;
            let opcode = b[0] & 0x0f;
            if b[1] & 0x80 != 0 {
                return Err("the server sent a masked frame".into());
            }
            let (header, len) = match b[1] & 0x7f {
                126 if b.len() >= 4 => {
                    (4, usize::from(u16::from_be_bytes([b[2], b[3]])))
                }
                127 if b.len() >= 10 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&b[2..10]);
                    (
                        10,
                        usize::try_from(u64::from_be_bytes(n))
                            .unwrap_or(usize::MAX),
                    )
                }
                126 | 127 => break,
                n => (2, usize::from(n)),
            };
            if len > 64 << 20 {
                return Err(format!("a frame of {len} bytes"));
            }
            if b.len() < header + len {
                break;
            }
            let payload = &b[header..header + len];
            match (opcode, fin) {
                (1, true) => self.on_text(payload, snapshot),
                (8, _) => return Ok(FrameResult::Closed),
                (9, _) => {
                    self.stats.pings += 1;
                    // A pong with the same payload, masked as a client must.
                    if payload.len() <= 125 {
                        let mask = [0x12, 0x34, 0x56, 0x78];
                        out.push(0x8a);
                        out.push(0x80 | payload.len() as u8);
                        out.extend_from_slice(&mask);
                        out.extend(
                            payload
                                .iter()
                                .enumerate()
                                .map(|(i, b)| b ^ mask[i % 4]),
                        );
                    }
                }
                (10, _) => {}
                _ => self.stats.unexpected += 1,
            }
            pos += header + len;
        }
        Ok(FrameResult::More(pos))
    }
}

fn handshake(addr: SocketAddr) -> Vec<u8> {
    format!(
        "GET /dashboard HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Writes what is queued; false when the connection broke.
fn flush(dash: &mut Dash) -> bool {
    while !dash.out.is_empty() {
        match dash.stream.write(&dash.out) {
            Ok(0) => return false,
            Ok(n) => {
                dash.out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    if dash.out.capacity() > 4096 {
        dash.out = Vec::new();
    }
    true
}

/// One client thread: opens `count` dashboards at most `inflight` at a
/// time and reads them until told to stop.
fn client_thread(
    addr: SocketAddr,
    count: usize,
    inflight: usize,
    shared: Arc<Shared>,
) -> ThreadStats {
    let stats = ThreadStats {
        hist: Hist::new(),
        resyncs: 0,
        keepalives: 0,
        pings: 0,
        other_updates: 0,
        unexpected: 0,
    };
    let mut ctx = ThreadCtx { shared: &shared, stats, now_us: 0, received: 0 };
    let mut poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            shared.note_error(format!("mio: {e}"));
            shared.failed.fetch_add(count, RELAXED);
            return ctx.stats;
        }
    };
    let mut events = Events::with_capacity(1024);
    let mut dashes: Vec<Dash> = Vec::with_capacity(count);
    let mut attempts = 0usize;
    // Connecting, upgrading or waiting for the first snapshot.
    let mut pending = 0usize;
    let mut scratch = vec![0u8; 256 * 1024];
    let request = handshake(addr);
    while !shared.stop.load(RELAXED) {
        while attempts < count && pending < inflight {
            attempts += 1;
            // Tokens are indexes into `dashes`; a connection that fails at
            // once gets neither.
            let mut stream = match mio::net::TcpStream::connect(addr) {
                Ok(stream) => stream,
                Err(e) => {
                    shared.note_error(format!("connect: {e}"));
                    shared.failed.fetch_add(1, RELAXED);
                    continue;
                }
            };
            let token = Token(dashes.len());
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) =
                poll.registry().register(&mut stream, token, interest)
            {
                shared.note_error(format!("register: {e}"));
                shared.failed.fetch_add(1, RELAXED);
                continue;
            }
            pending += 1;
            dashes.push(Dash {
                stream,
                phase: Phase::Connecting,
                inbuf: Vec::new(),
                out: Vec::new(),
                snapshot: false,
            });
        }
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(20)))
        {
            if e.kind() != io::ErrorKind::Interrupted {
                shared.note_error(format!("poll: {e}"));
                break;
            }
        }
        for event in events.iter() {
            let Some(dash) = dashes.get_mut(event.token().0) else { continue };
            let before = dash.phase == Phase::Open && dash.snapshot;
            let was_pending =
                matches!(dash.phase, Phase::Connecting | Phase::Upgrading)
                    || (dash.phase == Phase::Open && !dash.snapshot);
            if let Err(why) = drive(dash, &mut ctx, &request, &mut scratch) {
                if dash.phase != Phase::Dead {
                    dash.phase = Phase::Dead;
                    if before {
                        shared.closed.fetch_add(1, RELAXED);
                    } else {
                        shared.failed.fetch_add(1, RELAXED);
                    }
                    shared.note_error(why);
                    let _ = poll.registry().deregister(&mut dash.stream);
                    let _ = dash.stream.shutdown(std::net::Shutdown::Both);
                }
            }
            let now_pending =
                matches!(dash.phase, Phase::Connecting | Phase::Upgrading)
                    || (dash.phase == Phase::Open && !dash.snapshot);
            if was_pending && !now_pending {
                pending -= 1;
            }
        }
        if ctx.received > 0 {
            shared.received.fetch_add(ctx.received, RELAXED);
            shared.last_recv_us.fetch_max(ctx.now_us, RELAXED);
            ctx.received = 0;
        }
    }
    ctx.stats
}

/// Handles readiness for one dashboard.
fn drive(
    dash: &mut Dash,
    ctx: &mut ThreadCtx<'_>,
    request: &[u8],
    scratch: &mut [u8],
) -> Result<(), String> {
    if dash.phase == Phase::Dead {
        return Ok(());
    }
    if dash.phase == Phase::Connecting {
        if let Ok(Some(e)) | Err(e) = dash.stream.take_error() {
            return Err(format!("connect: {e}"));
        }
        match dash.stream.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
            Err(e) => return Err(format!("connect: {e}")),
        }
        dash.phase = Phase::Upgrading;
        dash.out.extend_from_slice(request);
    }
    if !flush(dash) {
        return Err("write failed".into());
    }
    loop {
        match dash.stream.read(scratch) {
            Ok(0) => {
                return Err(match dash.phase {
                    Phase::Upgrading => "closed during the upgrade".into(),
                    _ => "closed by the server".into(),
                })
            }
            Ok(n) => {
                ctx.now_us = now_us();
                on_bytes(dash, &scratch[..n], ctx)?;
                // A short read emptied the socket; on Linux a later arrival
                // raises a new edge, so the extra read that would only say
                // WouldBlock is skipped (it halves the client's syscalls).
                if n < scratch.len() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    if !flush(dash) {
        return Err("write failed".into());
    }
    Ok(())
}

fn on_bytes(
    dash: &mut Dash,
    data: &[u8],
    ctx: &mut ThreadCtx<'_>,
) -> Result<(), String> {
    if dash.phase == Phase::Upgrading {
        dash.inbuf.extend_from_slice(data);
        let Some(end) = dash.inbuf.windows(4).position(|w| w == b"\r\n\r\n")
        else {
            if dash.inbuf.len() > 16 * 1024 {
                return Err("upgrade answer head over 16 KiB".into());
            }
            return Ok(());
        };
        let head = String::from_utf8_lossy(&dash.inbuf[..end]).into_owned();
        let status = head.lines().next().unwrap_or("").to_owned();
        if !status.starts_with("HTTP/1.1 101") {
            return Err(format!("upgrade refused: {status}"));
        }
        if !head.contains(WS_ACCEPT) {
            return Err(
                "upgrade answer without the right Sec-WebSocket-Accept".into(),
            );
        }
        ctx.shared.upgraded.fetch_add(1, RELAXED);
        dash.phase = Phase::Open;
        dash.inbuf.drain(..end + 4);
        let rest = std::mem::take(&mut dash.inbuf);
        return parse_into(dash, &rest, ctx);
    }
    if dash.inbuf.is_empty() {
        parse_into(dash, data, ctx)
    } else {
        let mut buf = std::mem::take(&mut dash.inbuf);
        buf.extend_from_slice(data);
        parse_into(dash, &buf, ctx)
    }
}

/// Parses `data` (with nothing left over in `dash.inbuf`) and keeps any
/// partial frame for later.
fn parse_into(
    dash: &mut Dash,
    data: &[u8],
    ctx: &mut ThreadCtx<'_>,
) -> Result<(), String> {
    match ctx.frames(data, &mut dash.snapshot, &mut dash.out)? {
        FrameResult::Closed => Err("close frame from the server".into()),
        FrameResult::More(used) => {
            let rest = &data[used..];
            if rest.is_empty() {
                dash.inbuf = Vec::new();
            } else {
                dash.inbuf.clear();
                dash.inbuf.extend_from_slice(rest);
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------
// Posting records

#[derive(Debug, Default)]
struct PostStats {
    accepted: u64,
    refused: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Posts the records `index`, `index + step`, … on one keep-alive
/// connection, each at its scheduled time `start + i / rate` (or as soon
/// as the previous answer came, when behind), until `end`.
fn poster(
    addr: SocketAddr,
    index: usize,
    step: usize,
    rate: f64,
    start: Instant,
    end: Instant,
) -> PostStats {
    let mut stats = PostStats::default();
    let mut client = match HttpClient::connect(addr) {
        Ok(c) => c,
        Err(e) => {
            stats.errors += 1;
            stats.first_error = Some(format!("connect: {e}"));
            return stats;
        }
    };
    let mut i = index as u64;
    loop {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        if due >= end {
            break;
        }
        let now = Instant::now();
        if now >= end {
            break;
        }
        if due > now {
            thread::sleep(due - now);
        }
        let body = format!(
            r#"{{"metric":"bench","value":1,"metadata":{{"t":{},"seq":{i}}}}}"#,
            now_us()
        );
        match client.request("POST", "/record", Some(body.as_bytes())) {
            Ok((200, _)) => stats.accepted += 1,
            Ok((status, answer)) => {
                stats.refused += 1;
                if stats.first_error.is_none() {
                    stats.first_error = Some(format!(
                        "POST /record: {status} {}",
                        String::from_utf8_lossy(&answer)
                    ));
                }
            }
            Err(e) => {
                stats.errors += 1;
                stats.first_error.get_or_insert(format!("POST /record: {e}"));
                break;
            }
        }
        i += step as u64;
    }
    stats
}

// ---------------------------------------------------------------------
// WebSocket scenarios

struct Clients {
    shared: Arc<Shared>,
    threads: Vec<thread::JoinHandle<ThreadStats>>,
}

impl Clients {
    fn start(addr: SocketAddr, n: usize, threads: usize) -> Clients {
        let shared = Arc::new(Shared::default());
        let threads = threads.min(n).max(1);
        let per = n / threads;
        let inflight = (CONNECT_CONCURRENCY / threads).max(1);
        let handles = (0..threads)
            .map(|t| {
                let count = per + usize::from(t < n % threads);
                let shared = Arc::clone(&shared);
                thread::spawn(move || {
                    client_thread(addr, count, inflight, shared)
                })
            })
            .collect();
        Clients { shared, threads: handles }
    }

    /// Waits until every dashboard has its snapshot (or failed).
    fn wait_connected(
        &self,
        n: usize,
        deadline: Instant,
    ) -> Result<(), String> {
        loop {
            let snaps = self.shared.snapshots.load(RELAXED);
            let failed = self.shared.failed.load(RELAXED);
            if snaps >= n {
                return Ok(());
            }
            if failed > 0 && snaps + failed >= n {
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let first = self.shared.first_error.lock().unwrap().clone();
        Err(format!(
            "{} of {n} dashboards got a snapshot ({} upgraded, {} failed){}",
            self.shared.snapshots.load(RELAXED),
            self.shared.upgraded.load(RELAXED),
            self.shared.failed.load(RELAXED),
            first.map(|e| format!("; first error: {e}")).unwrap_or_default()
        ))
    }

    fn stop(self) -> ThreadStats {
        self.shared.stop.store(true, RELAXED);
        let mut total = ThreadStats {
            hist: Hist::new(),
            resyncs: 0,
            keepalives: 0,
            pings: 0,
            other_updates: 0,
            unexpected: 0,
        };
        for handle in self.threads {
            if let Ok(s) = handle.join() {
                total.hist.merge(&s.hist);
                total.resyncs += s.resyncs;
                total.keepalives += s.keepalives;
                total.pings += s.pings;
                total.other_updates += s.other_updates;
                total.unexpected += s.unexpected;
            }
        }
        total
    }
}

fn self_cpu() -> Option<f64> {
    cpu_seconds(std::process::id())
}

/// Connects `n` dashboards; with `rate` > 0 also posts records and
/// measures their delivery.
fn run_ws(
    opts: &Opts,
    server: &mut Server,
    n: usize,
    rate: Option<f64>,
) -> Row {
    let name = match rate {
        Some(r) => format!("ws fan-out {n} x {r} rec/s"),
        None => format!("ws idle {n}"),
    };
    eprintln!("load: {name}: connecting {n} dashboards");
    let mut row = Row::new(opts, &name);
    row.conns = Some(n);
    row.target = rate;
    row.rss_start = server.rss();
    let connect_start = Instant::now();
    let clients = Clients::start(server.addr, n, opts.threads);
    if let Err(e) = clients.wait_connected(n, connect_start + CONNECT_DEADLINE)
    {
        clients.stop();
        row.notes.push(format!("FAILED: {e}"));
        row.rss_end = server.rss();
        return row;
    }
    let connect_s = connect_start.elapsed().as_secs_f64();
    row.notes.push(format!("connect {connect_s:.2} s"));
    // Let allocations settle, then measure the idle cost of a dashboard.
    thread::sleep(Duration::from_secs(1));
    let rss_idle = server.rss();
    if let (Some(a), Some(b)) = (row.rss_start, rss_idle) {
        row.kib_per_dash = Some((b as f64 - a as f64) / n as f64);
    }
    row.notes
        .push(format!("RSS with dashboards {} MiB", fmt_num(mib(rss_idle), 1)));
    let Some(rate) = rate else {
        row.rss_end = rss_idle;
        let stats = clients.stop();
        note_client_stats(&mut row, &stats, 0);
        return row;
    };

    // Post at the fixed rate for the duration.
    let cpu0 = server.cpu();
    let self0 = self_cpu();
    let wall0 = Instant::now();
    let start = Instant::now() + Duration::from_millis(50);
    let start_us = now_us() + 50_000;
    let end = start + Duration::from_secs_f64(opts.duration);
    let conns = opts.post_conns;
    let posters: Vec<_> = (0..conns)
        .map(|i| {
            let addr = server.addr;
            thread::spawn(move || poster(addr, i, conns, rate, start, end))
        })
        .collect();
    let mut post = PostStats::default();
    for p in posters {
        if let Ok(s) = p.join() {
            post.accepted += s.accepted;
            post.refused += s.refused;
            post.errors += s.errors;
            if post.first_error.is_none() {
                post.first_error = s.first_error;
            }
        }
    }
    let posted_s = start.elapsed().as_secs_f64().min(opts.duration).max(1e-3);
    row.achieved = Some(post.accepted as f64 / posted_s);
    row.errors = Some(post.refused + post.errors);
    if let Some(e) = &post.first_error {
        row.notes.push(format!("post error: {e}"));
    }

    // Drain: wait for every dashboard to receive every accepted record.
    let expected = n as u64 * post.accepted;
    let drain_end = Instant::now() + Duration::from_secs_f64(opts.drain);
    let mut samples: VecDeque<(Instant, u64)> = VecDeque::new();
    loop {
        let got = clients.shared.received.load(RELAXED);
        let now = Instant::now();
        samples.push_back((now, got));
        while samples.front().is_some_and(|(t, _)| {
            now.duration_since(*t) > Duration::from_secs(1)
        }) {
            samples.pop_front();
        }
        if got >= expected || now >= drain_end {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let received = clients.shared.received.load(RELAXED);
    let still = match (samples.front(), samples.back()) {
        (Some((t0, a)), Some((t1, b))) if t1 > t0 => {
            (b - a) as f64 / (*t1 - *t0).as_secs_f64()
        }
        _ => 0.0,
    };
    let cpu1 = server.cpu();
    let self1 = self_cpu();
    let wall = wall0.elapsed().as_secs_f64();
    row.rss_end = server.rss();
    let last_us = clients.shared.last_recv_us.load(RELAXED);
    let closed = clients.shared.closed.load(RELAXED);
    let stats = clients.stop();

    row.lost = Some(expected as i64 - received as i64);
    if last_us > start_us && received > 0 {
        row.delivered =
            Some(received as f64 / ((last_us - start_us) as f64 / 1e6));
    }
    row.p50_ms = stats.hist.quantile_us(0.50).map(|v| v / 1000.0);
    row.p99_ms = stats.hist.quantile_us(0.99).map(|v| v / 1000.0);
    row.max_ms = (stats.hist.total > 0).then(|| stats.hist.max as f64 / 1000.0);
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        if received > 0 {
            row.cpu_us = Some((b - a) * 1e6 / received as f64);
        }
        row.notes.push(format!("server CPU {:.0} %", (b - a) * 100.0 / wall));
    }
    if let (Some(a), Some(b)) = (self0, self1) {
        let busy = (b - a) * 100.0 / wall;
        row.notes.push(format!("load generator CPU {busy:.0} %"));
        if busy > 85.0 && opts.loadgen_cpu.is_some() {
            row.notes.push(
                "the load generator was near saturation, so rates and \
                 latencies may be client-bound"
                    .into(),
            );
        }
    }
    if received < expected && still > 0.0 {
        row.notes.push(format!("still arriving at cutoff: {still:.0}/s"));
    }
    if closed > 0 {
        row.notes.push(format!("{closed} dashboards closed early"));
    }
    note_client_stats(&mut row, &stats, post.accepted);
    row
}

fn note_client_stats(row: &mut Row, stats: &ThreadStats, accepted: u64) {
    if accepted > 0 {
        row.notes.push(format!("{accepted} records"));
    }
    if stats.resyncs > 0 {
        row.notes.push(format!("{} resync snapshots", stats.resyncs));
    }
    if stats.other_updates > 0 {
        row.notes.push(format!("{} foreign updates", stats.other_updates));
    }
    if stats.unexpected > 0 {
        row.notes.push(format!("{} unexpected frames", stats.unexpected));
    }
}

// ---------------------------------------------------------------------
// Growth: how cost grows with dashboards and with distinct metrics

fn run_growth(opts: &Opts, external: &mut Option<Server>, rows: &mut Vec<Row>) {
    if external.is_some() {
        let mut row = Row::new(opts, "growth");
        row.notes.push(
            "skipped: growth starts a fresh server per step, so it is not \
             run against --url"
                .into(),
        );
        rows.push(row);
        return;
    }
    let mut dash_opts = opts.clone();
    dash_opts.duration = GROWTH_SECONDS;
    for &n in &opts.growth_dashboards {
        let scenario = format!(
            "growth dashboards {n} x {GROWTH_RATE} rec/s {GROWTH_SECONDS} s"
        );
        let max = n + opts.post_conns + 64;
        with_server(
            &dash_opts,
            external,
            max,
            &[],
            &scenario,
            rows,
            |server, rows| {
                let mut row = run_ws(&dash_opts, server, n, Some(GROWTH_RATE));
                row.scenario = scenario.clone();
                rows.push(row);
            },
        );
    }
    let env = [("METRICAST_MAX_METRICS", GROWTH_MAX_METRICS.to_string())];
    for &m in &opts.growth_metrics {
        let scenario = format!("growth metrics {m}");
        with_server(
            opts,
            external,
            0,
            &env,
            &scenario,
            rows,
            |server, rows| run_growth_metrics(opts, server, m, rows),
        );
    }
}

/// Seeds `m` metrics, then measures `GET /metrics` (its size and wrk
/// throughput) and how long a new dashboard takes to get its snapshot.
fn run_growth_metrics(
    opts: &Opts,
    server: &mut Server,
    m: usize,
    rows: &mut Vec<Row>,
) {
    let name = format!("growth metrics {m}");
    eprintln!("load: {name}: seeding {m} distinct metrics");
    let mut get_row = Row::new(
        opts,
        format!(
            "{name}: GET /metrics wrk c{GROWTH_WRK_CONNS} {GROWTH_WRK_SECONDS} s"
        ),
    );
    get_row.rss_start = server.rss();
    match seed_distinct(server.addr, m) {
        Ok(secs) => get_row.notes.push(format!(
            "seeded {m} records pipelined in {secs:.2} s ({} /s)",
            fmt_num(Some(m as f64 / secs.max(1e-6)), 0)
        )),
        Err(e) => {
            get_row.notes.push(format!("FAILED: {e}"));
            get_row.rss_end = server.rss();
            rows.push(get_row);
            return;
        }
    }
    // Let allocations settle; this is the RSS "after seeding".
    thread::sleep(Duration::from_millis(200));
    get_row.rss_end = server.rss();
    get_row.notes.push(format!(
        "RSS end = after seeding, {} KiB",
        fmt_num(get_row.rss_end.map(|k| k as f64), 0)
    ));

    // The body, with one request's time.
    let t0 = Instant::now();
    let body_len = HttpClient::connect(server.addr)
        .and_then(|mut c| c.request("GET", "/metrics", None))
        .map_err(|e| e.to_string())
        .and_then(|(status, body)| match status {
            200 => Ok(body.len()),
            s => Err(format!("status {s}")),
        });
    let one_get_ms = t0.elapsed().as_secs_f64() * 1000.0;
    match &body_len {
        Ok(len) => {
            eprintln!("load:   GET /metrics body {len} B");
            get_row
                .notes
                .push(format!("body {} B", fmt_num(Some(*len as f64), 0)));
            get_row
                .notes
                .push(format!("one GET with connect {one_get_ms:.2} ms"));
        }
        Err(e) => get_row.notes.push(format!("GET /metrics failed: {e}")),
    }

    // A new dashboard's snapshot, a few times one after another.
    let mut snap_row = Row::new(opts, format!("{name}: dashboard snapshot"));
    snap_row.conns = Some(1);
    snap_row.rss_start = server.rss();
    let mut times = Vec::new();
    let mut frame_len = 0;
    for _ in 0..SNAPSHOT_TRIES {
        match time_snapshot(server.addr) {
            Ok((secs, len)) => {
                times.push(secs * 1000.0);
                frame_len = len;
            }
            Err(e) => {
                snap_row.notes.push(format!("FAILED: {e}"));
                break;
            }
        }
    }
    if !times.is_empty() {
        times.sort_by(f64::total_cmp);
        snap_row.p50_ms = Some(times[times.len() / 2]);
        snap_row.max_ms = times.last().copied();
        snap_row.notes.push(format!(
            "connect to whole snapshot; p50 = median, max of {} dashboards \
             one after another; frame {} B",
            times.len(),
            fmt_num(Some(frame_len as f64), 0)
        ));
        eprintln!(
            "load:   snapshot of {frame_len} B in {:.2} ms (median)",
            times[times.len() / 2]
        );
    }
    snap_row.rss_end = server.rss();

    // wrk against GET /metrics.
    get_row.conns = Some(GROWTH_WRK_CONNS);
    match find_in_path("wrk") {
        None => get_row.notes.push("wrk skipped: not installed".into()),
        Some(wrk) => {
            let mut wrk_opts = opts.clone();
            wrk_opts.http_conns = GROWTH_WRK_CONNS;
            wrk_opts.duration = GROWTH_WRK_SECONDS;
            eprintln!(
                "load:   wrk -c{GROWTH_WRK_CONNS} -d{GROWTH_WRK_SECONDS}s GET /metrics"
            );
            let cpu0 = server.cpu();
            let url = format!("http://{}/metrics", server.addr);
            match run_wrk(&wrk_opts, &wrk, &url, None) {
                Ok(r) => {
                    get_row.achieved = Some(r.rps);
                    get_row.p50_ms = r.p50_ms;
                    get_row.p99_ms = r.p99_ms;
                    get_row.errors = Some(r.non2xx + r.socket_errors);
                    if let (Some(a), Some(b)) = (cpu0, server.cpu()) {
                        if r.requests > 0 {
                            get_row.cpu_us =
                                Some((b - a) * 1e6 / r.requests as f64);
                        }
                    }
                    eprintln!(
                        "load:   {} req/s, p99 {} ms",
                        fmt_num(Some(r.rps), 0),
                        fmt_num(r.p99_ms, 2)
                    );
                }
                Err(e) => get_row.notes.push(format!("wrk FAILED: {e}")),
            }
            get_row.notes.push(format!(
                "RSS after wrk {} MiB",
                fmt_num(mib(server.rss()), 1)
            ));
        }
    }
    rows.push(get_row);
    rows.push(snap_row);
}

/// Records `m` metrics with distinct names and one small metadata object
/// each, pipelined over one keep-alive connection; returns the seconds.
fn seed_distinct(addr: SocketAddr, m: usize) -> Result<f64, String> {
    let start = Instant::now();
    let deadline = start + SEED_DEADLINE;
    let mut client =
        HttpClient::connect(addr).map_err(|e| format!("seed: {e}"))?;
    let host = client.host.clone();
    let mut batch = Vec::with_capacity(SEED_WINDOW * 160);
    let mut sent = 0;
    while sent < m {
        if Instant::now() >= deadline {
            return Err(format!(
                "seed: {sent} of {m} records after {SEED_DEADLINE:?}; gave up"
            ));
        }
        let count = SEED_WINDOW.min(m - sent);
        batch.clear();
        for i in sent..sent + count {
            let body = format!(
                r#"{{"metric":"g{i:07}","value":1,"metadata":{{"i":{i}}}}}"#
            );
            let _ = write!(
                batch,
                "POST /record HTTP/1.1\r\nHost: {host}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
        client.stream.write_all(&batch).map_err(|e| format!("seed: {e}"))?;
        for i in sent..sent + count {
            let (status, answer) =
                client.read_answer().map_err(|e| format!("seed: {e}"))?;
            if status != 200 {
                return Err(format!(
                    "seed: record {i} got {status}: {}",
                    String::from_utf8_lossy(&answer)
                ));
            }
        }
        sent += count;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Opcode, header length and payload length of the frame at the front of
/// `b`, once its header is complete.
fn frame_header(b: &[u8]) -> Option<(u8, usize, usize)> {
    if b.len() < 2 {
        return None;
    }
    let opcode = b[0] & 0x0f;
    match b[1] & 0x7f {
        126 if b.len() >= 4 => {
            Some((opcode, 4, usize::from(u16::from_be_bytes([b[2], b[3]]))))
        }
        127 if b.len() >= 10 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&b[2..10]);
            let len = usize::try_from(u64::from_be_bytes(n)).ok()?;
            Some((opcode, 10, len))
        }
        126 | 127 => None,
        n => Some((opcode, 2, usize::from(n))),
    }
}

/// Connects one dashboard and reads until its whole snapshot frame has
/// arrived; returns the seconds that took and the frame's payload size.
fn time_snapshot(addr: SocketAddr) -> Result<(f64, usize), String> {
    let start = Instant::now();
    let deadline = start + SNAPSHOT_DEADLINE;
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| format!("snapshot: connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .and_then(|()| stream.write_all(&handshake(addr)))
        .map_err(|e| format!("snapshot: {e}"))?;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 256 * 1024];
    let mut read_more = |stream: &mut TcpStream, buf: &mut Vec<u8>| {
        if Instant::now() >= deadline {
            return Err(format!(
                "snapshot: not complete after {SNAPSHOT_DEADLINE:?} ({} bytes)",
                buf.len()
            ));
        }
        match stream.read(&mut chunk) {
            Ok(0) => Err("snapshot: closed by the server".to_string()),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err(format!("snapshot: read: {e}")),
        }
    };
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() > 16 * 1024 {
            return Err("snapshot: upgrade answer head over 16 KiB".into());
        }
        read_more(&mut stream, &mut buf)?;
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        let line = buf.split(|&b| b == b'\r').next().unwrap_or(&[]);
        return Err(format!(
            "snapshot: upgrade refused: {}",
            String::from_utf8_lossy(line)
        ));
    }
    buf.drain(..head_end);
    loop {
        if let Some((opcode, header, len)) = frame_header(&buf) {
            if len > 256 << 20 {
                return Err(format!("snapshot: a frame of {len} bytes"));
            }
            if buf.len() >= header + len {
                let payload = &buf[header..header + len];
                let head = &payload[..len.min(48)];
                if opcode != 1 || !contains(head, b"snapshot") {
                    return Err(format!(
                        "snapshot: the first frame (opcode {opcode}) is not \
                         a snapshot: {}",
                        String::from_utf8_lossy(head)
                    ));
                }
                return Ok((start.elapsed().as_secs_f64(), len));
            }
            buf.reserve(header + len - buf.len());
        }
        read_more(&mut stream, &mut buf)?;
    }
}

// ---------------------------------------------------------------------

/// Runs `f` against a fresh server of our own (with `env` added to its
/// environment), or the external one.
fn with_server(
    opts: &Opts,
    external: &mut Option<Server>,
    max_connections: usize,
    env: &[(&str, String)],
    scenario: &str,
    rows: &mut Vec<Row>,
    f: impl FnOnce(&mut Server, &mut Vec<Row>),
) {
    if let Some(server) = external {
        if !server.alive() {
            rows.push(Row::failed(opts, scenario, "the server is gone".into()));
            return;
        }
        f(server, rows);
        return;
    }
    let mut server = match Server::start(opts, max_connections, env) {
        Ok(s) => s,
        Err(e) => {
            rows.push(Row::failed(opts, scenario, e));
            return;
        }
    };
    let first = rows.len();
    f(&mut server, rows);
    let mut notes: Vec<String> = Vec::new();
    if let Some(max) = server.raised {
        notes.push(format!("server run with --max-connections {max}"));
    }
    if !server.pinned && opts.server_cpu.is_some() {
        notes.push("server not pinned (no taskset)".into());
    }
    if !server.alive() {
        notes.push("the server died during the run".into());
    }
    let log = server.log_note();
    if !log.is_empty() {
        notes.push(log);
    }
    if let Some(stop) = server.stop() {
        notes.push(stop);
    }
    if let Some(last) = rows[first..].last_mut() {
        last.notes.extend(notes);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "load: benchmark only; run `cargo bench --bench load` or \
             scripts/bench.sh (skipped without --bench)"
        );
        return;
    }
    let opts = match parse_args(&args) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            println!("{}", usage());
            return;
        }
        Err(e) => {
            eprintln!("load: {e}");
            std::process::exit(2);
        }
    };
    base();
    let mut rows: Vec<Row> = Vec::new();

    // File descriptors for the dashboards (inherited by our server too).
    let most = opts
        .clients
        .iter()
        .copied()
        .chain(opts.idle.then_some(opts.idle_clients))
        .chain(opts.growth_dashboards.iter().copied().filter(|_| opts.growth))
        .max()
        .unwrap_or(0);
    let want = (most + opts.post_conns + 1024) as u64;
    let limit = raise_nofile(want);
    if limit < want {
        eprintln!(
            "load: RLIMIT_NOFILE is {limit}, below the {want} wanted; large scenarios may fail"
        );
    }
    let cpus = cpu_count();
    let mut opts = opts;
    if cpus < 2 {
        eprintln!("load: only {cpus} CPU; running unpinned");
        opts.server_cpu = None;
        opts.loadgen_cpu = None;
    }
    if let Some(cpu) = opts.loadgen_cpu {
        if let Err(e) = pin_self(cpu) {
            eprintln!("load: cannot pin to CPU {cpu}: {e}; running unpinned");
        }
    }
    if find_in_path("taskset").is_none() {
        eprintln!("load: taskset not found; the server and wrk run unpinned");
    }

    let mut external = opts.url.map(|addr| Server::external(addr, opts.pid));
    if let Some(server) = &mut external {
        if let Some(pid) = opts.pid {
            if !server.alive() {
                eprintln!("load: no process {pid}");
                std::process::exit(2);
            }
        } else {
            eprintln!(
                "load: no --pid given; CPU time and RSS are not measured"
            );
        }
        if let Err(e) = TcpStream::connect_timeout(&server.addr, IO_TIMEOUT) {
            eprintln!("load: cannot connect to {}: {e}", server.addr);
            std::process::exit(2);
        }
    }
    eprintln!(
        "load: {} ({}), {cpus} CPUs, server CPU {}, load generator CPU {}, RLIMIT_NOFILE {limit}",
        opts.label,
        match opts.url {
            Some(addr) => format!("http://{addr}, one server for every scenario"),
            None => format!("{}, a fresh server per scenario group", opts.server_bin.display()),
        },
        opts.server_cpu.map_or("any".into(), |c| c.to_string()),
        opts.loadgen_cpu.map_or("any".into(), |c| c.to_string()),
    );

    // Initial RSS, before any connection.
    {
        let mut row = Row::new(&opts, "start (no connections)");
        match &external {
            Some(server) => row.rss_start = server.rss(),
            None => match Server::start(&opts, 0, &[]) {
                Ok(server) => {
                    row.rss_start = server.rss();
                    if let Some(stop) = server.stop() {
                        row.notes.push(stop);
                    }
                }
                Err(e) => row.notes.push(format!("FAILED: {e}")),
            },
        }
        row.rss_end = row.rss_start;
        rows.push(row);
    }

    let tmp = TempDir(
        std::env::temp_dir()
            .join(format!("metricast-load-{}", std::process::id())),
    );
    if let Err(e) = std::fs::create_dir_all(&tmp.0) {
        eprintln!("load: cannot create {}: {e}", tmp.0.display());
        std::process::exit(1);
    }
    let tmp = &tmp.0;

    if opts.http {
        with_server(
            &opts,
            &mut external,
            0,
            &[],
            "http",
            &mut rows,
            |server, rows| run_http(&opts, server, tmp, rows),
        );
    }
    if opts.ws {
        for (&n, &rate) in opts.clients.iter().zip(&opts.rates) {
            let max = n + opts.post_conns + 64;
            with_server(
                &opts,
                &mut external,
                max,
                &[],
                "ws",
                &mut rows,
                |server, rows| rows.push(run_ws(&opts, server, n, Some(rate))),
            );
        }
    }
    if opts.idle {
        let n = opts.idle_clients;
        with_server(
            &opts,
            &mut external,
            n + 64,
            &[],
            "ws idle",
            &mut rows,
            |server, rows| rows.push(run_ws(&opts, server, n, None)),
        );
    }
    if opts.growth {
        run_growth(&opts, &mut external, &mut rows);
    }
    print_table(&rows);
}

/// The folder for wrk's Lua scripts, removed however `main` ends
/// (a panic included, e.g. when stderr is a closed pipe).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
