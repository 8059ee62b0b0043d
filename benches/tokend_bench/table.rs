//! The one table the benchmark prints: a heading with the machine, a Markdown table (so it can
//! be pasted into an issue or the README), and notes on how each part was measured.

use std::fmt;

use crate::herd::Herd;
use crate::load::Side;
use crate::proxy::Sides;
use crate::scale::Scale;

/// GetToken throughput must reach this fraction of the ceiling at every concurrency.
const MIN_RATIO: f64 = 0.97;
/// 10,000 clients must fit in this much resident memory.
const MAX_RSS_MIB: f64 = 32.0;

pub struct Table {
    heading: String,
    rows: Vec<[String; 6]>,
    notes: Vec<String>,
    missed: Vec<String>,
    /// Rows held against a target.
    targets: usize,
    /// A `--tiny` run: too short and too small for its figures to be held against targets.
    tiny: bool,
}

impl Table {
    pub fn new(heading: String, tiny: bool) -> Table {
        Table {
            heading,
            rows: Vec::new(),
            notes: Vec::new(),
            missed: Vec::new(),
            targets: 0,
            tiny,
        }
    }

    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    fn row(&mut self, cells: [&str; 5], met: Option<bool>) {
        self.targets += usize::from(met.is_some());
        let verdict = match met {
            Some(true) => "yes",
            Some(false) => {
                self.missed.push(cells[0].to_string());
                "**no**"
            }
            None => "",
        };
        let [a, b, c, d, e] = cells.map(str::to_string);
        self.rows.push([a, b, c, d, e, verdict.into()]);
    }

    pub fn get_token(&mut self, streams: usize, tokend: &mut Side, ceiling: &mut Side) {
        let ratio = tokend.rate() / ceiling.rate();
        let label = format!(
            "GetToken, {streams} stream{}",
            if streams == 1 { "" } else { "s" }
        );
        self.row(
            [
                &format!("{label}: calls/s"),
                &thousands(tokend.rate()),
                &thousands(ceiling.rate()),
                &format!("{ratio:.2}"),
                &format!(">= {MIN_RATIO:.2}"),
            ],
            Some(ratio >= MIN_RATIO),
        );
        let latency =
            |s: &mut Side| format!("{:.0} / {:.0} µs", s.latency_us(0.5), s.latency_us(0.99));
        self.row(
            [
                &format!("{label}: p50 / p99 latency"),
                &latency(tokend),
                &latency(ceiling),
                "",
                "",
            ],
            None,
        );
        // CPU per call tells the servers' costs apart even where the load generator, not
        // the server, sets the pace.
        let cpu = |s: &Side| {
            format!(
                "{:.2} cores, {:.1} µs/call",
                s.cpu(),
                s.cpu() / s.rate() * 1e6
            )
        };
        self.row(
            [
                &format!("{label}: server CPU"),
                &cpu(tokend),
                &cpu(ceiling),
                &format!(
                    "{:.2}",
                    ceiling.cpu() / ceiling.rate() / (tokend.cpu() / tokend.rate())
                ),
                "",
            ],
            None,
        );
    }

    /// Through the proxy (the tokend column) and straight to the upstream (the ceiling
    /// column). No target: what the proxy costs is reported, not judged.
    pub fn proxy(&mut self, streams: usize, sides: &mut Sides) {
        let (proxy, direct) = (&mut sides.proxy, &mut sides.direct);
        let label = format!(
            "proxy, {streams} stream{}",
            if streams == 1 { "" } else { "s" }
        );
        self.row(
            [
                &format!("{label}: requests/s"),
                &thousands(proxy.rate()),
                &thousands(direct.rate()),
                &format!("{:.2}", proxy.rate() / direct.rate()),
                "",
            ],
            None,
        );
        let latency =
            |s: &mut Side| format!("{:.0} / {:.0} µs", s.latency_us(0.5), s.latency_us(0.99));
        self.row(
            [
                &format!("{label}: p50 / p99 latency"),
                &latency(proxy),
                &latency(direct),
                "",
                "",
            ],
            None,
        );
        let per_request = |cores: f64, rate: f64| cores / rate * 1e6;
        let upstream = crate::load::median(&sides.upstream_in_proxy);
        self.row(
            [
                &format!("{label}: CPU"),
                &format!(
                    "tokend {:.2} cores, {:.1} µs/request (upstream {:.1})",
                    proxy.cpu(),
                    per_request(proxy.cpu(), proxy.rate()),
                    per_request(upstream, proxy.rate()),
                ),
                &format!(
                    "upstream {:.2} cores, {:.1} µs/request",
                    direct.cpu(),
                    per_request(direct.cpu(), direct.rate()),
                ),
                "",
                "",
            ],
            None,
        );
    }

    pub fn scale(&mut self, s: &Scale, cap: usize, ticks_per_sec: u64) {
        let label = format!("{} clients", thousands(s.clients as f64));
        let rss = s.rss_kib as f64 / 1024.0;
        self.row(
            [
                &format!("{label}: resident memory (peak)"),
                &format!("{rss:.1} MiB ({:.1} MiB)", s.hwm_kib as f64 / 1024.0),
                "",
                "",
                &format!("<= {MAX_RSS_MIB:.0} MiB"),
            ],
            Some(rss <= MAX_RSS_MIB),
        );
        let idle_rss = s.idle_rss_kib as f64 / 1024.0;
        self.row(
            [
                &format!("{label}: resident memory after {} s idle", s.idle.as_secs()),
                &format!("{idle_rss:.1} MiB"),
                "",
                "",
                &format!("<= {MAX_RSS_MIB:.0} MiB"),
            ],
            Some(idle_rss <= MAX_RSS_MIB),
        );
        self.row(
            [
                &format!("{label}: time until all fresh"),
                &format!("{:.2} s", s.all_fresh.as_secs_f64()),
                "",
                "",
                "",
            ],
            None,
        );
        self.row(
            [
                &format!("{label}: peak concurrent token requests"),
                &s.peak_requests.to_string(),
                "",
                "",
                &format!("<= {cap}"),
            ],
            Some(s.peak_requests <= cap),
        );
        // One clock tick is what /proc can resolve.
        let tick_ms = 1000 / ticks_per_sec.max(1);
        let cpu_ms = s.idle_cpu.as_millis() as u64;
        self.row(
            [
                &format!("{label}: CPU over {} s idle", s.idle.as_secs()),
                &format!(
                    "{cpu_ms} ms, {} wake-ups, {} token requests",
                    s.idle_switches, s.idle_requests
                ),
                "",
                "",
                &format!("<= {tick_ms} ms"),
            ],
            Some(cpu_ms <= tick_ms && s.idle_requests == 0),
        );
    }

    pub fn herd(&mut self, h: &Herd) {
        let calls = thousands(h.calls as f64);
        self.row(
            [
                &format!("herd: {calls} cold GetToken calls: token requests"),
                &h.cold_requests.to_string(),
                "",
                "",
                "1",
            ],
            Some(h.cold_requests == 1),
        );
        self.row(
            [
                &format!("herd: {calls} RefreshToken calls, one rejected token: token requests"),
                &h.refresh_requests.to_string(),
                "",
                "",
                "1",
            ],
            Some(h.refresh_requests == 1),
        );
        self.note(format!(
            "Herd: the endpoint held the daemon's token request until all {calls} calls had been \
             sent (over {} connections); every caller had the token {:.0} ms after it was \
             released.",
            crate::load::MAX_CONNECTIONS.min(h.calls),
            h.cold_release.as_secs_f64() * 1000.0
        ));
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}\n", self.heading)?;
        let header = ["measure", "tokend", "ceiling", "ratio", "target", "met"];
        let mut widths = header.map(|h| h.chars().count());
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect();
            writeln!(f, "| {} |", padded.join(" | "))
        };
        line(f, &header.map(str::to_string))?;
        line(f, &widths.map(|w| "-".repeat(w)))?;
        for row in &self.rows {
            line(f, row)?;
        }
        writeln!(f)?;
        for note in &self.notes {
            writeln!(f, "- {note}")?;
        }
        if self.tiny {
            write!(
                f,
                "\nA --tiny run: it shows that everything works; its figures mean nothing."
            )
        } else if self.targets == 0 {
            write!(f, "\nNo target applies to these parts.")
        } else if self.missed.is_empty() {
            write!(f, "\nEvery target met.")
        } else {
            write!(f, "\nTargets missed: {}.", self.missed.join("; "))
        }
    }
}

/// 12345.6 as "12,346".
fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let digits = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
