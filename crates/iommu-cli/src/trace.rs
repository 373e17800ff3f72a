//! `--trace`: every core and driver operation as an indented call tree.
//!
//! A `tracing` layer that prints a span when it is entered, indented by its
//! depth, with its fields; events print as `· message` under their span.

use std::fmt::Write as _;
use std::io::Write;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            if !self.rest.is_empty() {
                self.rest.push_str(", ");
            }
            let _ = write!(self.rest, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.record_debug(field, &format_args!("{value}"));
        }
    }
}

/// Span fields rendered once, at creation.
struct Rendered(String);

/// The call-tree printer; each finished line goes to `sink`.
pub struct TreeLayer<F> {
    sink: F,
}

impl<F: Fn(&str) + Send + Sync + 'static> TreeLayer<F> {
    /// A printer handing every line to `sink`.
    pub fn new(sink: F) -> Self {
        Self { sink }
    }
}

fn indent(depth: usize) -> String {
    "│ ".repeat(depth)
}

impl<S, F> Layer<S> for TreeLayer<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    F: Fn(&str) + Send + Sync + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        attrs.record(&mut f);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Rendered(f.rest));
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let depth = span.scope().count() - 1;
        let ext = span.extensions();
        let fields = ext.get::<Rendered>().map_or("", |r| r.0.as_str());
        (self.sink)(&format!("{}├─ {}({fields})", indent(depth), span.name()));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let depth = ctx.event_scope(event).map_or(0, |s| s.count());
        let mut f = Fields::default();
        event.record(&mut f);
        let sep = if f.message.is_empty() || f.rest.is_empty() {
            ""
        } else {
            " "
        };
        (self.sink)(&format!("{}· {}{sep}{}", indent(depth), f.message, f.rest));
    }
}

/// Installs the call-tree printer as the process's subscriber, writing
/// to standard error, or to `file` (created or truncated) when given, so
/// that standard output stays the command's own.
///
/// # Errors
/// The file cannot be created.
pub fn install(file: Option<&std::path::Path>) -> Result<(), String> {
    use std::sync::Mutex;
    use tracing_subscriber::layer::SubscriberExt;
    let sink: Box<dyn Write + Send> = match file {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?,
        )),
        None => Box::new(std::io::stderr()),
    };
    let sink = Mutex::new(sink);
    let layer = TreeLayer::new(move |line: &str| {
        let mut w = sink.lock().unwrap_or_else(|e| e.into_inner());
        // A trace that cannot be written is dropped; the command goes on.
        let _ = writeln!(w, "{line}");
        let _ = w.flush();
    });
    let subscriber = tracing_subscriber::registry().with(layer);
    // Only fails if a subscriber is already set, in which case that one stays.
    let _ = tracing::subscriber::set_global_default(subscriber);
    Ok(())
}
