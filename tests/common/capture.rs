//! A `tracing` layer that captures the events of the thread it runs on (cargo feature
//! `tracing`): `SINK` holds them while it is `Some`. tests/observe.rs installs it as
//! the global default; tests/cluster.rs scopes it to a current-thread runtime that runs
//! the cluster's tasks on the test thread.

use std::collections::BTreeMap;
use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{span, Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// One event as the subscriber saw it.
#[derive(Debug, Clone)]
pub struct Captured {
    pub level: Level,
    pub target: String,
    pub message: String,
    pub fields: BTreeMap<String, String>,
    /// The spans it happened in, innermost first: name and fields.
    pub spans: Vec<(String, BTreeMap<String, String>)>,
}

impl Captured {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// Reads fields as strings (`&str` fields without quotes).
struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
}

/// A span's fields, kept in its extensions.
struct SpanFields(BTreeMap<String, String>);

thread_local! {
    /// This thread's captured events, while `capture` runs on it.
    pub static SINK: std::cell::RefCell<Option<Vec<Captured>>> =
        const { std::cell::RefCell::new(None) };
}

/// A layer that records every event with the spans around it, into the capturing
/// thread's sink.
pub struct Capture;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let span = ctx.span(id).expect("a new span is registered");
        span.extensions_mut().insert(SpanFields(fields));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let message = fields.remove("message").unwrap_or_default();
        let spans = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .map(|span| {
                        let fields = span.extensions().get::<SpanFields>().map(|f| f.0.clone());
                        (span.name().to_string(), fields.unwrap_or_default())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let captured = Captured {
            level: *event.metadata().level(),
            target: event.metadata().target().to_string(),
            message,
            fields,
            spans,
        };
        SINK.with(|sink| {
            if let Some(events) = sink.borrow_mut().as_mut() {
                events.push(captured);
            }
        });
    }
}
