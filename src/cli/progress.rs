//! Progress of long copies on stderr: a bar on a terminal, plain periodic lines elsewhere
//! (a backup job's log, cron, systemd), where a bar's redraws would be noise.

use std::io::Write;
use std::time::{Duration, Instant};

/// The progress options of commands that copy guest bytes.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ProgressArgs {
    /// Show progress on stderr: a bar on a terminal, else a line every 5 s or 10 %
    /// with bytes done, rate and ETA (default: a bar when stderr is a terminal).
    #[arg(long, conflicts_with = "no_progress")]
    progress: bool,
    /// Show no progress, even on a terminal.
    #[arg(long)]
    no_progress: bool,
}

/// Reports how many of `total` bytes are done.
pub enum Progress {
    /// Nothing shown.
    Hidden,
    /// A redrawn bar (stderr is a terminal).
    Bar(indicatif::ProgressBar),
    /// Plain lines.
    Lines(Lines<std::io::Stderr>),
}

impl Progress {
    /// The reporter `args` ask for, for a copy of `total` bytes.
    pub fn new(args: ProgressArgs, total: u64) -> Self {
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        match (args.progress, args.no_progress, terminal) {
            (_, true, _) | (false, false, false) => Progress::Hidden,
            (_, false, true) => {
                let bar = indicatif::ProgressBar::new(total);
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "{bytes}/{total_bytes} [{bar:30}] {bytes_per_sec} eta {eta}",
                ) {
                    bar.set_style(style.progress_chars("=> "));
                }
                Progress::Bar(bar)
            }
            (true, false, false) => Progress::Lines(Lines::new(std::io::stderr(), total)),
        }
    }

    /// Counts `bytes` more done.
    pub fn inc(&mut self, bytes: u64) {
        match self {
            Progress::Hidden => {}
            Progress::Bar(bar) => bar.inc(bytes),
            Progress::Lines(lines) => lines.inc(bytes),
        }
    }

    /// Ends the report (clears a bar, prints a last line).
    pub fn finish(self) {
        match self {
            Progress::Hidden => {}
            Progress::Bar(bar) => bar.finish_and_clear(),
            Progress::Lines(mut lines) => lines.finish(),
        }
    }
}

/// Prints a line every [`Lines::PERIOD`] or every tenth of the total, whichever comes
/// first: `copied 1.5 GiB of 10.0 GiB (15%), 120.0 MiB/s, ETA 1m11s`.
pub struct Lines<W: Write> {
    out: W,
    total: u64,
    done: u64,
    started: Instant,
    last_line: Instant,
    last_tenth: u64,
}

impl<W: Write> Lines<W> {
    /// How often a line is printed at the least.
    pub const PERIOD: Duration = Duration::from_secs(5);

    /// A reporter writing to `out` for a copy of `total` bytes.
    pub fn new(out: W, total: u64) -> Self {
        let now = Instant::now();
        Lines {
            out,
            total,
            done: 0,
            started: now,
            last_line: now,
            last_tenth: 0,
        }
    }

    /// Counts `bytes` more done, printing a line when one is due.
    pub fn inc(&mut self, bytes: u64) {
        self.done = self.done.saturating_add(bytes).min(self.total);
        let tenth = self.tenths();
        if tenth > self.last_tenth || self.last_line.elapsed() >= Self::PERIOD {
            self.last_tenth = tenth;
            self.last_line = Instant::now();
            if self.done < self.total {
                self.line();
            }
        }
    }

    /// Prints the last line: how much was copied, in how long.
    pub fn finish(&mut self) {
        let elapsed = self.started.elapsed();
        let _ = writeln!(
            self.out,
            "imgblk: copied {} in {}, {}/s",
            super::human_size(self.done),
            duration(elapsed),
            super::human_size(rate(self.done, elapsed)),
        );
    }

    fn tenths(&self) -> u64 {
        if self.total == 0 {
            10
        } else {
            (self.done as u128 * 10 / self.total as u128) as u64
        }
    }

    fn line(&mut self) {
        let elapsed = self.started.elapsed();
        let per_sec = rate(self.done, elapsed);
        let eta = match per_sec {
            0 => "unknown".to_string(),
            r => duration(Duration::from_secs((self.total - self.done) / r)),
        };
        let percent = (self.done as u128 * 100 / self.total.max(1) as u128) as u64;
        let _ = writeln!(
            self.out,
            "imgblk: copied {} of {} ({percent}%), {}/s, ETA {eta}",
            super::human_size(self.done),
            super::human_size(self.total),
            super::human_size(per_sec),
        );
    }
}

/// Bytes per second.
fn rate(bytes: u64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        0
    } else {
        (bytes as f64 / secs) as u64
    }
}

/// `1h02m03s`, `2m03s` or `3s`.
fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, sec) => format!("{min}m{sec:02}s"),
        (h, min, sec) => format!("{h}h{min:02}m{sec:02}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_come_every_tenth_with_rate_and_eta_then_a_summary() {
        let mut lines = Lines::new(Vec::new(), 100 << 20);
        for _ in 0..100 {
            lines.inc(1 << 20);
        }
        lines.finish();
        let text = String::from_utf8(lines.out).unwrap();
        let all: Vec<&str> = text.lines().collect();
        assert_eq!(all.len(), 10, "{text}");
        assert!(
            all[0].starts_with("imgblk: copied 10.0 MiB of 100.0 MiB (10%), "),
            "{text}"
        );
        assert!(all[0].contains("/s, ETA "), "{text}");
        assert!(all[9].starts_with("imgblk: copied 100.0 MiB in "), "{text}");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(Duration::from_secs(3)), "3s");
        assert_eq!(duration(Duration::from_secs(123)), "2m03s");
        assert_eq!(duration(Duration::from_secs(3723)), "1h02m03s");
    }
}
