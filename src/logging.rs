//! Logging: structlog-style JSON lines (or plain text for a terminal).
//!
//! Each JSON line starts with `event`, `level` (lowercase; WARN is
//! `warning`), `logger` (the module path with dots: `gitreload.deploy`) and
//! `timestamp` (ISO 8601 UTC, milliseconds), followed by every field of the
//! event at the top level, numbers and booleans kept typed.
//!
//! Every line passes through [`redact::scrub`] on its way to stdout: a
//! secret that some code path formatted by mistake still leaves as `***`.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::redact;
use crate::settings::LogFormat;

/// Installs the global subscriber. `level` is a tracing level name;
/// dependencies log only warnings and worse.
pub fn init(level: &str, format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let level: tracing::Level = level.parse().unwrap_or(tracing::Level::INFO);
    let filter = Targets::new()
        .with_default(tracing::Level::WARN)
        .with_target("gitreload", level);
    let layer = tracing_subscriber::fmt::layer().with_writer(|| ScrubbedStdout);
    let registry = tracing_subscriber::registry().with(filter);
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => registry.with(layer.event_format(StructlogJson)).try_init(),
        LogFormat::Text => {
            use std::io::IsTerminal;
            let ansi = std::io::stdout().is_terminal();
            registry
                .with(layer.with_target(true).with_ansi(ansi))
                .try_init()
        }
    };
}

/// The structlog JSON event format.
pub struct StructlogJson;

impl<S, N> FormatEvent<S, N> for StructlogJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut line = Map::new();
        line.insert(
            "event".into(),
            Value::String(fields.message.take().unwrap_or_default()),
        );
        line.insert(
            "level".into(),
            Value::String(level_name(meta.level()).into()),
        );
        line.insert("logger".into(), Value::String(logger_name(meta.target())));
        line.insert(
            "timestamp".into(),
            Value::String(
                humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            ),
        );
        for (key, value) in fields.values {
            // Keys of the envelope cannot be overwritten by a field.
            if !line.contains_key(&key) {
                line.insert(key, value);
            }
        }
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// structlog's level names.
pub fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::TRACE | Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warning",
        Level::ERROR => "error",
    }
}

/// `gitreload::deploy` becomes `gitreload.deploy`; explicit dotted targets
/// (`gitreload.access`) stay as they are.
pub fn logger_name(target: &str) -> String {
    target.replace("::", ".")
}

#[derive(Default)]
struct Fields {
    message: Option<String>,
    values: Vec<(String, Value)>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.values.push((field.name().to_string(), value));
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(crate::git::describe(value)));
    }
}

/// Stdout, with every remembered secret replaced by `***`. The fmt layer
/// formats an event into one buffer and writes it with one `write_all`, so a
/// secret is never split across two writes.
pub struct ScrubbedStdout;

impl std::io::Write for ScrubbedStdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        if redact::nothing_known() {
            out.write_all(buf)?;
        } else {
            out.write_all(redact::scrub(&String::from_utf8_lossy(buf)).as_bytes())?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

/// A panic is logged as one error event, its message scrubbed of every
/// remembered secret (the default hook would print it raw to stderr).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        tracing::error!(
            error = %crate::redact::scrub(&message),
            location = %location,
            thread = %thread,
            "panic"
        );
    }));
}
