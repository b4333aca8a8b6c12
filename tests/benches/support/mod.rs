//! Shared by the bench binaries: a small timing helper (warm-up, samples,
//! median and percentiles), the results table, and a deterministic generator
//! of realistic create documents.
//!
//! Deliberately without criterion: the benches compare our figures with a
//! baseline measured in the same run on the same machine, which is what a
//! noisy shared machine allows; statistics beyond median and p99 would not
//! add much.

#![allow(dead_code)] // Each bench binary uses a different part of this module.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod cpu;
pub mod service;

/// The allocator the shipped binary uses (see `crates/callledger/src/main.rs`), so that the
/// benches measure what runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The ledger size the generated calls are drawn for.
pub const LEDGER_CALLS: u64 = 1_000_000;

/// Prints the bench's first line: its name, the mode, the CPUs and the load average.
pub fn banner(bench: &str, quick: bool) {
    println!(
        "call-ledger bench `{bench}` ({} mode); {} CPUs, load average at the start: {}",
        if quick {
            "quick, BENCH_QUICK=1"
        } else {
            "full"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
}

/// The sections named on the command line (`cargo bench --bench B -- a b`), each checked to be
/// one of `known`; empty means all.
pub fn sections(known: &[&str]) -> Vec<String> {
    let sections: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    for section in &sections {
        assert!(
            known.contains(&section.as_str()),
            "unknown section {section:?}; the sections are {known:?}"
        );
    }
    sections
}

/// The concurrency levels the issues ask about: requests in flight, or writers.
pub const LEVELS: [usize; 3] = [1, 16, 64];

/// Sizes of one run: operations per sample at each of [`LEVELS`], and recorded samples per
/// figure (after one warm-up); `BENCH_QUICK=1` picks the quick ones.
pub struct Sizes {
    pub per_level: [usize; 3],
    pub samples: usize,
}

impl Sizes {
    /// One recorded sample of `quick` operations in quick mode, three of `full` otherwise.
    pub fn pick(quick: bool, quick_sizes: [usize; 3], full_sizes: [usize; 3]) -> Sizes {
        if quick {
            Sizes {
                per_level: quick_sizes,
                samples: 1,
            }
        } else {
            Sizes {
                per_level: full_sizes,
                samples: 3,
            }
        }
    }
}

/// Whether `BENCH_QUICK=1` asks for a smoke run with small sizes.
pub fn quick() -> bool {
    std::env::var("BENCH_QUICK").is_ok_and(|value| !value.is_empty() && value != "0")
}

/// The 1, 5 and 15 minute load averages, to print beside the figures: the
/// machine is shared, and a run under load says so.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

/// Times one run of `work`, in seconds.
pub fn seconds(work: impl FnOnce()) -> f64 {
    let started = Instant::now();
    work();
    started.elapsed().as_secs_f64()
}

/// Sorted sample values with their order statistics.
#[derive(Clone, Debug)]
pub struct Stats {
    sorted: Vec<f64>,
}

impl Stats {
    /// Sorts the values; NaNs sort last.
    pub fn new(mut values: Vec<f64>) -> Stats {
        values.sort_by(|a, b| a.total_cmp(b));
        Stats { sorted: values }
    }

    /// From durations, in microseconds.
    pub fn from_durations_us(durations: &[Duration]) -> Stats {
        Stats::new(durations.iter().map(|d| d.as_secs_f64() * 1e6).collect())
    }

    /// The median (the mean of the middle two for an even count).
    pub fn median(&self) -> f64 {
        let n = self.sorted.len();
        if n == 0 {
            return f64::NAN;
        }
        if n % 2 == 1 {
            self.sorted[n / 2]
        } else {
            (self.sorted[n / 2 - 1] + self.sorted[n / 2]) / 2.0
        }
    }

    /// The `p`-th percentile (0..=100), nearest rank.
    pub fn percentile(&self, p: f64) -> f64 {
        let n = self.sorted.len();
        if n == 0 {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        self.sorted[rank.clamp(1, n) - 1]
    }

    /// The smallest and largest values.
    pub fn range(&self) -> (f64, f64) {
        match (self.sorted.first(), self.sorted.last()) {
            (Some(low), Some(high)) => (*low, *high),
            _ => (f64::NAN, f64::NAN),
        }
    }

    /// How many values there are.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// "median (min..max, n=N)", for the log lines printed while running.
    pub fn spread(&self, unit: &str) -> String {
        let (low, high) = self.range();
        format!(
            "{} {unit} (min {} .. max {}, n={})",
            human(self.median()),
            human(low),
            human(high),
            self.len()
        )
    }
}

/// What a target compares.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// The ratio ours/baseline must be at least this.
    RatioAtLeast(f64),
    /// The ratio ours/baseline must be at most this.
    RatioAtMost(f64),
    /// Our figure must be at least this.
    OursAtLeast(f64),
    /// Our figure must be at most this.
    OursAtMost(f64),
    /// Informational, no target.
    None,
}

/// One line of the results table.
#[derive(Clone, Debug)]
pub struct Row {
    /// What is measured, with its unit.
    pub metric: String,
    /// Our figure.
    pub ours: f64,
    /// The baseline from the same run, if there is one.
    pub baseline: Option<f64>,
    /// What counts as good.
    pub target: Target,
}

impl Row {
    /// ours / baseline.
    pub fn ratio(&self) -> Option<f64> {
        self.baseline.map(|baseline| self.ours / baseline)
    }

    /// Whether the target is met; `None` when there is none.
    pub fn met(&self) -> Option<bool> {
        match self.target {
            Target::RatioAtLeast(min) => self.ratio().map(|ratio| ratio >= min),
            Target::RatioAtMost(max) => self.ratio().map(|ratio| ratio <= max),
            Target::OursAtLeast(min) => Some(self.ours >= min),
            Target::OursAtMost(max) => Some(self.ours <= max),
            Target::None => None,
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::RatioAtLeast(min) => format!("ratio >= {min}"),
            Target::RatioAtMost(max) => format!("ratio <= {max}"),
            Target::OursAtLeast(min) => format!("ours >= {}", human(min)),
            Target::OursAtMost(max) => format!("ours <= {}", human(max)),
            Target::None => "-".into(),
        }
    }
}

/// Prints the rows as a Markdown table, ready to be copied into
/// docs/benchmarks.md, under the title and the load average at the end.
pub fn print_table(title: &str, rows: &[Row]) {
    println!();
    println!("### {title}");
    println!();
    println!(
        "Load average (1, 5, 15 min) at the end: {}.",
        load_average()
    );
    println!();
    println!("| metric | ours | baseline | ratio | target | met? |");
    println!("|---|---:|---:|---:|---|---|");
    for row in rows {
        let baseline = row.baseline.map(human).unwrap_or_else(|| "-".into());
        let ratio = row
            .ratio()
            .map(|ratio| format!("{ratio:.2}"))
            .unwrap_or_else(|| "-".into());
        let met = match row.met() {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            row.metric,
            human(row.ours),
            baseline,
            ratio,
            row.target_text(),
            met
        );
    }
    println!();
}

/// A number with a precision that suits its size (no SI suffixes, so the
/// table can be read without a legend).
pub fn human(value: f64) -> String {
    if !value.is_finite() {
        return format!("{value}");
    }
    let magnitude = value.abs();
    if magnitude >= 100.0 {
        let whole = value.round() as i64;
        group_thousands(whole)
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn group_thousands(value: i64) -> String {
    let digits = value.unsigned_abs().to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    if value < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A tiny deterministic PRNG (SplitMix64), so every run writes the same
/// calls without a `rand` dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Milliseconds since the epoch of 2024-01-01T00:00:00Z: the generated calls
/// are dialed during the year that follows.
pub const YEAR_START_MILLIS: i64 = 1_704_067_200_000;
/// One year of milliseconds.
pub const YEAR_MILLIS: i64 = 365 * 24 * 3600 * 1000;

/// How many calls one generated prospect has on average: prospect ids are
/// drawn from `1..=calls / CALLS_PER_PROSPECT`, so a filter on a few
/// prospects selects about as many rows in a small ledger as in a large one.
pub const CALLS_PER_PROSPECT: u64 = 20;

/// The number of prospects in a generated ledger of `calls` calls.
pub fn prospects_for(calls: u64) -> u64 {
    (calls / CALLS_PER_PROSPECT).max(1)
}

/// RFC 3339 with milliseconds, as Outreach writes timestamps.
pub fn rfc3339(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .expect("a timestamp within chrono's range")
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

const NOTES: &[&str] = &[
    "Voicemail; send renewal pricing.",
    "Wants a demo for ops next week.",
    "Call back after 3pm local time.",
    "Budget opens next quarter.",
    "Wrong number, flagged the owner.",
];
const TAGS: &[&str] = &[
    "Interested",
    "Meeting Booked",
    "Callback",
    "Voicemail",
    "Not Interested",
    "Pricing",
];

/// A realistic create document (`{"data":{"type":"call",...}}`) of about
/// 400 bytes for call number `index` of a ledger of `calls` calls; the same
/// index always gives the same document.
pub fn create_document(index: u64, calls: u64) -> Value {
    let mut rng = Rng::new(index.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5EED);
    let inbound = rng.below(2) == 0;
    let answered = rng.below(3) != 0;
    let dialed = YEAR_START_MILLIS + rng.below(YEAR_MILLIS as u64) as i64;
    let answered_at = dialed + 5_000 + rng.below(20_000) as i64;
    let completed = answered_at + 30_000 + rng.below(900_000) as i64;
    let ours = format!("+1415555{:04}", rng.below(10_000));
    let theirs = format!("+1{:03}555{:04}", 200 + rng.below(700), rng.below(10_000));
    let (from, to) = if inbound {
        (theirs, ours)
    } else {
        (ours, theirs)
    };
    let tag_count = rng.below(3) as usize;
    let tags: Vec<&str> = (0..tag_count).map(|_| *rng.pick(TAGS)).collect();
    let prospect = 1 + rng.below(prospects_for(calls));
    let mut attributes = json!({
        "direction": if inbound { "inbound" } else { "outbound" },
        "outcome": if answered { "Answered" } else { "Not Answered" },
        "from": from,
        "to": to,
        "note": rng.pick(NOTES),
        "dialedAt": rfc3339(dialed),
        "completedAt": rfc3339(completed),
        "userCallType": if rng.below(2) == 0 { "bridge" } else { "voip" },
        "recordingUrl": format!("https://rec.example.com/{index}.mp3"),
        "tags": tags,
    });
    if answered {
        attributes["answeredAt"] = json!(rfc3339(answered_at));
    }
    json!({
        "data": {
            "type": "call",
            "attributes": attributes,
            "relationships": {
                "prospect": {"data": {"type": "prospect", "id": prospect}},
            },
        }
    })
}
