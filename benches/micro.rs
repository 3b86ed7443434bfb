//! Micro benchmarks of the hot paths, with hand-written timing loops (no
//! criterion, to keep build time low) and a counting global allocator.
//!
//! Run with `cargo bench --bench micro` (optionally followed by `-- NAME`
//! to run only the benchmarks whose name contains NAME). Each line gives
//! the median (and the fastest) time per operation over several samples,
//! and the heap allocations (and bytes asked for) per operation counted by
//! the allocator below.
//! The counter adds a few nanoseconds to every allocation it counts; that
//! cost is part of the timings, as it would be for any allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use metricast::app::App;
use metricast::config::Config;
use metricast::http::{self, Persistence};
use metricast::hub::Subscriber;
use metricast::output::Output;
use metricast::record;
use metricast::router::{self, Routed};
use metricast::security::Security;
use metricast::store::Store;
use metricast::wire;

/// Counts every allocation (and reallocation) and the bytes asked for.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on unchanged to `System`.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(
        &self,
        ptr: *mut u8,
        layout: Layout,
        new_size: usize,
    ) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(new_size as u64, Relaxed);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Samples taken per benchmark; the median is reported.
const SAMPLES: usize = 7;
/// Rough wall time of one sample.
const SAMPLE_TIME: Duration = Duration::from_millis(60);

struct Bench {
    filter: Option<String>,
}

impl Bench {
    /// Times `f`, counts its allocations and prints one line.
    fn run(&self, name: &str, note: &str, mut f: impl FnMut()) {
        if self.filter.as_ref().is_some_and(|want| !name.contains(want)) {
            return;
        }
        // Warm up and find an iteration count that fills a sample.
        let mut iters: u64 = 1;
        loop {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            let took = start.elapsed();
            if took >= SAMPLE_TIME / 4 || iters >= 1 << 30 {
                let per = took.as_secs_f64() / iters as f64;
                let want = SAMPLE_TIME.as_secs_f64() / per.max(1e-9);
                iters = (want as u64).clamp(1, 1 << 32);
                break;
            }
            iters *= 2;
        }
        let mut times = Vec::with_capacity(SAMPLES);
        let (mut allocs, mut bytes) = (0u64, 0u64);
        for _ in 0..SAMPLES {
            let (a0, b0) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed));
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            let took = start.elapsed();
            allocs += ALLOCS.load(Relaxed) - a0;
            bytes += BYTES.load(Relaxed) - b0;
            times.push(took.as_secs_f64() * 1e9 / iters as f64);
        }
        times.sort_by(f64::total_cmp);
        let n = (iters * SAMPLES as u64) as f64;
        println!(
            "{name:<44} {:>11.1} ns/op (min {:>9.1}) {:>8.2} allocs/op \
             {:>9.1} B/op  {note}",
            times[SAMPLES / 2],
            times[0],
            allocs as f64 / n,
            bytes as f64 / n,
        );
    }
}

/// The body from the protocol's example.
const RECORD_BODY: &[u8] = br#"{"metric": "revenue", "value": 49.99, "metadata": {"plan": "pro", "currency": "EUR"}}"#;
const BARE_BODY: &[u8] = br#"{"metric":"signup"}"#;
const GET_HEAD: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
User-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";

fn post_head(body_len: usize) -> Vec<u8> {
    format!(
        "POST /record HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
         User-Agent: curl/8.5.0\r\nAccept: */*\r\n\
         Content-Type: application/json\r\nContent-Length: {body_len}\r\n\r\n"
    )
    .into_bytes()
}

/// A store holding `n` metrics, each with one metadata object, shaped like
/// the state the load benchmark seeds.
fn seeded_store(n: usize) -> Store {
    let mut store = Store::new(100, 10_000);
    for i in 0..n {
        let body = format!(
            r#"{{"metric":"api_calls_{i:04}","value":{}.25,"metadata":{{"region":"eu-west","plan":"pro"}}}}"#,
            i % 97
        );
        let mut rec = record::parse(body.as_bytes()).expect("seed record");
        store.apply(&mut rec).expect("seed apply");
    }
    store
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "micro: benchmark only; run `cargo bench --bench micro` \
             (skipped without --bench)"
        );
        return;
    }
    let filter = args.iter().find(|a| !a.starts_with('-')).cloned();
    let bench = Bench { filter };
    println!(
        "metricast micro benchmarks: median of {SAMPLES} samples of ~{} ms; \
         allocations counted by a #[global_allocator] wrapper",
        SAMPLE_TIME.as_millis()
    );

    // --- record parsing -------------------------------------------------
    bench.run(
        "record::parse (spec example, 87 B)",
        "metric+value+metadata",
        || {
            let rec = record::parse(black_box(RECORD_BODY)).unwrap();
            black_box(&rec);
        },
    );
    bench.run("record::parse (bare {\"metric\"})", "", || {
        let rec = record::parse(black_box(BARE_BODY)).unwrap();
        black_box(&rec);
    });

    // --- store ----------------------------------------------------------
    {
        let mut store = seeded_store(20);
        let mut rec = record::parse(RECORD_BODY).unwrap();
        let meta = rec.metadata.clone();
        // Fill the metadata list to its limit so the loop is steady state.
        for _ in 0..200 {
            rec.metadata = meta.clone();
            store.apply(&mut rec).unwrap();
        }
        bench.run(
            "Store::apply (existing metric, metadata)",
            "20 metrics, list at its 100 limit; includes the metadata copy \
             that record::parse would make",
            || {
                rec.metadata = meta.clone();
                store.apply(black_box(&mut rec)).unwrap();
            },
        );
        let mut bare = record::parse(BARE_BODY).unwrap();
        store.apply(&mut bare).unwrap();
        bench.run("Store::apply (existing metric, no metadata)", "", || {
            store.apply(black_box(&mut bare)).unwrap();
        });
    }

    // --- wire -----------------------------------------------------------
    {
        let rec = record::parse(RECORD_BODY).unwrap();
        let mut out = Vec::with_capacity(256);
        bench.run(
            "wire::metric_update (into reused Vec)",
            "value 49.99, metadata",
            || {
                out.clear();
                wire::metric_update(
                    black_box(&rec.metric),
                    black_box(rec.value),
                    black_box(rec.metadata.as_deref()),
                    &mut out,
                );
                black_box(&out);
            },
        );
        let whole = record::parse(br#"{"metric":"signup","value":3}"#).unwrap();
        bench.run("wire::metric_update (whole value, no meta)", "", || {
            out.clear();
            wire::metric_update(
                black_box(&whole.metric),
                black_box(whole.value),
                None,
                &mut out,
            );
            black_box(&out);
        });
    }

    // --- snapshot of 1,000 metrics --------------------------------------
    {
        let mut store = seeded_store(1000);
        let mut rec = record::parse(br#"{"metric":"api_calls_0500"}"#).unwrap();
        let size = store.snapshot_frame().len();
        bench.run(
            "Store::apply + snapshot_frame (1,000 metrics)",
            &format!("frame {size} B, re-encoded after each change"),
            || {
                store.apply(black_box(&mut rec)).unwrap();
                black_box(store.snapshot_frame());
            },
        );
        bench.run("Store::snapshot_frame (cached, no change)", "", || {
            black_box(store.snapshot_frame());
        });
    }

    // --- HTTP heads -----------------------------------------------------
    bench.run("http::parse_head (GET /metrics, curl)", "", || {
        let parsed = http::parse_head(black_box(GET_HEAD), 16 * 1024).unwrap();
        black_box(&parsed);
    });
    let post = post_head(RECORD_BODY.len());
    bench.run("http::parse_head (POST /record, curl)", "", || {
        let parsed = http::parse_head(black_box(&post), 16 * 1024).unwrap();
        black_box(&parsed);
    });

    // --- routing --------------------------------------------------------
    {
        // The security rules and headers of a server started with defaults.
        let security = Security::from_config(&Config::default());
        let mut app = App::new(seeded_store(20), security);
        let (get, _) = http::parse_head(GET_HEAD, 16 * 1024).unwrap().unwrap();
        let mut out = Output::default();
        let body_len = app.store.json().len();
        bench.run(
            "router::route GET /metrics",
            &format!("20 metrics, body {body_len} B, cached"),
            || {
                out.clear();
                let routed = router::route(
                    &mut app,
                    black_box(&get),
                    b"",
                    Persistence::KeepAlive,
                    &mut out,
                );
                debug_assert_eq!(routed, Routed::Answered);
                black_box(&out);
            },
        );
        bench.run("parse_head + route GET /metrics", "", || {
            out.clear();
            let (head, _) = http::parse_head(black_box(GET_HEAD), 16 * 1024)
                .unwrap()
                .unwrap();
            router::route(
                &mut app,
                &head,
                b"",
                Persistence::KeepAlive,
                &mut out,
            );
            black_box(&out);
        });

        let (post, _) = http::parse_head(&post, 16 * 1024).unwrap().unwrap();
        for _ in 0..200 {
            out.clear();
            router::route(
                &mut app,
                &post,
                RECORD_BODY,
                Persistence::KeepAlive,
                &mut out,
            );
        }
        bench.run(
            "router::route POST /record (no dashboards)",
            "parse+apply, no publish",
            || {
                out.clear();
                router::route(
                    &mut app,
                    black_box(&post),
                    black_box(RECORD_BODY),
                    Persistence::KeepAlive,
                    &mut out,
                );
                black_box(&out);
            },
        );
        let mut sub = Subscriber::join(&mut app.feed, Vec::new());
        bench.run(
            "router::route POST /record (1 dashboard)",
            "plus metric_update into the feed, trimmed",
            || {
                out.clear();
                router::route(
                    &mut app,
                    black_box(&post),
                    black_box(RECORD_BODY),
                    Persistence::KeepAlive,
                    &mut out,
                );
                let head = app.feed.head();
                app.feed.trim(head);
                black_box(&out);
            },
        );
        sub.leave(&mut app.feed);
        assert!(app.stats.records_accepted > 0, "no record was accepted");
    }
}
