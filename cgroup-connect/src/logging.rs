//! Where warnings and errors go: [`init`] sends `tracing` events to stderr as
//! `blocker: LEVEL: message`. When stderr is systemd's journal stream (`JOURNAL_STREAM` names
//! it), each line starts with the syslog priority in the sd-daemon form (`<4>` for a warning),
//! so journald files it at that level (`journalctl -p warning` finds it) and `systemctl
//! status` shows it; the text after the prefix is the same. Command output (the `attached`
//! line, tables, JSON) is printed to stdout, not logged.
use std::{
    fmt,
    io::{self, IsTerminal as _},
    os::unix::fs::MetadataExt as _,
};

use tracing::{Event, Level, Subscriber, level_filters::LevelFilter};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// Installs the stderr logger, at level info. Call once, first thing in `main`.
pub fn init() {
    let format = Line { journal: stderr_is_journal() };
    let _ = tracing_subscriber::fmt()
        .with_max_level(LevelFilter::INFO)
        .with_writer(io::stderr)
        .with_ansi(false)
        .event_format(format)
        .try_init();
}

/// Whether stderr is the journal stream systemd connected (`JOURNAL_STREAM=DEV:INODE`, compared
/// with stderr's own device and inode, as `sd_journal_stream_fd(3)` says to).
fn stderr_is_journal() -> bool {
    if io::stderr().is_terminal() {
        return false;
    }
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else { return false };
    journal_stream_is(&stream.to_string_lossy(), meta.dev(), meta.ino())
}

fn journal_stream_is(value: &str, dev: u64, ino: u64) -> bool {
    value.split_once(':').is_some_and(|(d, i)| d.parse() == Ok(dev) && i.parse() == Ok(ino))
}

/// One line an event: `[<N>]blocker: LEVEL: message fields`.
struct Line {
    journal: bool,
}

/// The syslog priority journald files a level under, and the word printed.
fn priority(level: Level) -> (u8, &'static str) {
    match level {
        Level::ERROR => (3, "error"),
        Level::WARN => (4, "warning"),
        Level::INFO => (6, "info"),
        Level::DEBUG | Level::TRACE => (7, "debug"),
    }
}

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let (prio, word) = priority(*event.metadata().level());
        if self.journal {
            write!(writer, "<{prio}>")?;
        }
        write!(writer, "blocker: {word}: ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_stream_is_matched_by_device_and_inode() {
        assert!(journal_stream_is("8:1234", 8, 1234));
        assert!(!journal_stream_is("8:1234", 8, 1235));
        assert!(!journal_stream_is("8", 8, 1234));
        assert!(!journal_stream_is("x:y", 8, 1234));
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(Level::ERROR), (3, "error"));
        assert_eq!(priority(Level::WARN), (4, "warning"));
        assert_eq!(priority(Level::INFO).0, 6);
    }
}
