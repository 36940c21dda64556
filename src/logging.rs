//! The daemon's log: `tracing` to stderr (journald adds the time and unit), as text or as one JSON
//! object a line (`log_format = "json"`), with a filter SIGHUP can change.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!("log_format {s:?}: expected \"text\" or \"json\"")),
        }
    }
}

/// Changes the filter of the installed subscriber.
pub type FilterHandle = reload::Handle<EnvFilter, Registry>;

/// Installs the global subscriber; returns the handle that reloads its filter.
pub fn init(filter: EnvFilter, format: Format) -> FilterHandle {
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        Format::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
        Format::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .fmt_fields(JsonFields)
                    .event_format(JsonFormat),
            )
            .init(),
    }
    handle
}

/// Collects fields as JSON values.
struct Visitor<'a>(&'a mut Map<String, Value>);

impl Visit for Visitor<'_> {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_error(&mut self, f: &Field, v: &(dyn std::error::Error + 'static)) {
        self.0.insert(f.name().into(), v.to_string().into());
    }
    fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
        self.0.insert(f.name().into(), format!("{v:?}").into());
    }
}

/// Span fields kept as a JSON object text (so events can nest them as objects).
pub struct JsonFields;

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        let mut map = Map::new();
        fields.record(&mut Visitor(&mut map));
        write!(writer, "{}", Value::Object(map))
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut map = match serde_json::from_str(&current.fields) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        fields.record(&mut Visitor(&mut map));
        current.fields = Value::Object(map).to_string();
        Ok(())
    }
}

/// One JSON object a line: `ts`, `level`, `target`, `message`, the event's fields, and `spans`
/// (outermost first, each `{"name", …fields}`).
pub struct JsonFormat;

impl<S, N> FormatEvent<S, N> for JsonFormat
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
        let meta = event.metadata();
        let mut out = Map::new();
        out.insert(
            "ts".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                .into(),
        );
        out.insert("level".into(), meta.level().as_str().into());
        out.insert("target".into(), meta.target().into());
        let mut fields = Map::new();
        event.record(&mut Visitor(&mut fields));
        if let Some(m) = fields.remove("message") {
            out.insert("message".into(), m);
        }
        out.extend(fields);
        let mut spans = Vec::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let mut s = Map::new();
                s.insert("name".into(), span.name().into());
                if let Some(f) = span.extensions().get::<FormattedFields<N>>() {
                    if let Ok(Value::Object(m)) = serde_json::from_str(&f.fields) {
                        s.extend(m);
                    }
                }
                spans.push(Value::Object(s));
            }
        }
        if !spans.is_empty() {
            out.insert("spans".into(), spans.into());
        }
        writeln!(writer, "{}", Value::Object(out))
    }
}
