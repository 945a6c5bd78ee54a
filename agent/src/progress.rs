//! The live display of `murmur run`: on a terminal, a compact table redrawn in place once
//! a second; elsewhere (CI logs, pipes), one plain line every few seconds.

use std::io::Write as _;
use std::time::{Duration, Instant};

use crate::report::summary::{count, ms};
use crate::report::Report;

/// Where progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressTarget {
    /// A terminal: redraw in place.
    Terminal,
    /// Anything else: a line every `every`.
    Plain {
        /// Time between two lines.
        every: Duration,
    },
}

/// The live display.
pub struct Progress {
    target: ProgressTarget,
    term: console::Term,
    drawn: usize,
    last_line: Option<Instant>,
}

impl Progress {
    /// A display writing to stderr.
    pub fn new(target: ProgressTarget) -> Progress {
        Progress {
            target,
            term: console::Term::stderr(),
            drawn: 0,
            last_line: None,
        }
    }

    /// Shows the report so far.
    pub fn update(&mut self, r: &Report) {
        match self.target {
            ProgressTarget::Plain { every } => {
                if self
                    .last_line
                    .is_some_and(|t| t.elapsed() + Duration::from_millis(200) < every)
                {
                    return;
                }
                self.last_line = Some(Instant::now());
                let _ = writeln!(std::io::stderr(), "{}", line(r));
            }
            ProgressTarget::Terminal => {
                let text = table(r);
                let _ = self.term.clear_last_lines(self.drawn);
                let _ = self.term.write_str(&text);
                self.drawn = text.lines().count();
            }
        }
    }

    /// Leaves the last display on screen.
    pub fn finish(&mut self) {
        self.drawn = 0;
    }
}

fn current(r: &Report) -> (u64, f64, u64) {
    r.series
        .last()
        .map(|p| (p.users, p.rps, p.errors))
        .unwrap_or((0, 0.0, 0))
}

/// The latency part of a line: the merged p50 and p99 when the steps are alike, else each
/// step's p99 (merged, unlike steps say nothing).
fn latency(r: &Report) -> String {
    if r.steps_alike() {
        format!(
            "p50 {} · p99 {}",
            ms(r.total.latency_ms.p50),
            ms(r.total.latency_ms.p99)
        )
    } else {
        let steps: Vec<String> = r
            .steps
            .iter()
            .map(|s| format!("{} {}", s.name, ms(s.latency_ms.p99)))
            .collect();
        format!("p99 {}", steps.join(", "))
    }
}

/// One plain progress line.
pub fn line(r: &Report) -> String {
    let (users, rps, errors) = current(r);
    let failing = r.thresholds.iter().filter(|t| !t.passed).count();
    format!(
        "[{:>6.1}s] users {}/{} · {:.0} req/s · {} requests · {} errors ({} in the last second) · {}{}",
        r.duration_s,
        users,
        r.users.desired,
        rps,
        count(r.total.requests),
        count(r.total.errors),
        errors,
        latency(r),
        if r.thresholds.is_empty() {
            String::new()
        } else if failing == 0 {
            " · thresholds ok".to_owned()
        } else {
            format!(" · {failing} threshold(s) failing")
        }
    )
}

fn table(r: &Report) -> String {
    let (users, rps, _) = current(r);
    let mut s = format!(
        "{} · {:.0}s · users {}/{} · {:.0} req/s now\n  {:<20} {:>9} {:>9} {:>9} {:>9}\n",
        r.name,
        r.duration_s,
        users,
        r.users.desired,
        rps,
        "step",
        "requests",
        "errors",
        "p50",
        "p99"
    );
    // A cluster test's status has no steps: its figures are the whole test's.
    let rows = if r.steps.is_empty() {
        std::slice::from_ref(&r.total)
    } else {
        &r.steps[..]
    };
    for st in rows {
        s.push_str(&format!(
            "  {:<20} {:>9} {:>9} {:>9} {:>9}\n",
            st.name.chars().take(20).collect::<String>(),
            count(st.requests),
            count(st.errors),
            ms(st.latency_ms.p50),
            ms(st.latency_ms.p99)
        ));
    }
    for t in &r.thresholds {
        s.push_str(&format!(
            "  {} {}{} {} (now {})\n",
            if t.passed { "✓" } else { "✗" },
            t.metric,
            t.step
                .as_deref()
                .map(|x| format!(" of {x}"))
                .unwrap_or_default(),
            t.bound,
            t.observed
        ));
    }
    s
}
