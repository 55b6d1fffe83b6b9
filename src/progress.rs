//! Progress on long work: an indicatif bar on a terminal; where stderr is not one (a log file,
//! `nohup`, CI), indicatif draws nothing, so a plain line is written every so often instead:
//!
//! ```text
//! progress: linear heads 31250/75000 (42%), 1m 52s elapsed, eta 2m 35s
//! ```
//!
//! Every [`LOG_EVERY_S`] seconds by default; `DINOV2_PROGRESS_EVERY=SECONDS` sets it (0 turns
//! the lines off).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Seconds between two progress lines where stderr is not a terminal.
pub const LOG_EVERY_S: f64 = 60.0;

/// A bar of `len` steps drawn with `template` (an indicatif template), `what` as its message
/// and the name in its log lines. Hidden when `quiet`.
pub fn bar(len: u64, template: &str, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template(template).expect("static template").progress_chars("=> "));
    bar.set_message(what.to_string());
    log_when_not_a_terminal(&bar, what);
    bar
}

/// The seconds between log lines: `DINOV2_PROGRESS_EVERY`, else [`LOG_EVERY_S`]; `None` when
/// turned off or stderr is a terminal (the bar draws itself there).
fn log_interval() -> Option<Duration> {
    if std::io::stderr().is_terminal() {
        return None;
    }
    let seconds = match std::env::var("DINOV2_PROGRESS_EVERY") {
        Ok(v) => v.trim().parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0).unwrap_or(LOG_EVERY_S),
        Err(_) => LOG_EVERY_S,
    };
    (seconds > 0.0).then(|| Duration::from_secs_f64(seconds))
}

/// Where stderr is not a terminal, a thread that writes `bar`'s position every log interval
/// until the bar is finished or dropped.
pub fn log_when_not_a_terminal(bar: &ProgressBar, what: &str) {
    let Some(every) = log_interval() else { return };
    let weak = bar.downgrade();
    let what = what.to_string();
    std::thread::spawn(move || {
        let mut last = Instant::now();
        loop {
            std::thread::sleep(every.min(Duration::from_millis(200)));
            let Some(bar) = weak.upgrade() else { return };
            if bar.is_finished() {
                return;
            }
            if last.elapsed() >= every {
                last = Instant::now();
                eprintln!("{}", line(&bar, &what));
            }
        }
    });
}

/// `progress: WHAT POS/LEN (P%), ELAPSED elapsed, eta ETA[, MESSAGE]`.
fn line(bar: &ProgressBar, what: &str) -> String {
    let (pos, len) = (bar.position(), bar.length().unwrap_or(0));
    let share = if len > 0 { format!(" ({:.0}%)", 100.0 * pos as f64 / len as f64) } else { String::new() };
    let message = bar.message();
    let message = if message.is_empty() || message == what { String::new() } else { format!(", {message}") };
    format!(
        "progress: {what} {pos}/{len}{share}, {} elapsed, eta {}{message}",
        human(bar.elapsed()),
        if pos == 0 { "?".to_string() } else { human(bar.eta()) }
    )
}

/// `1h 02m`, `3m 05s`, `42s`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}
