//! The library's logs for C hosts: a level filter, and the lines on stderr or through a callback.
//!
//! Nothing is logged until the host calls `kwaai_set_log_level` or `kwaai_set_log_callback`; the
//! first call installs the library's log collector for the whole process.

use std::ffi::CString;
use std::fmt::Write as _;
use std::os::raw::{c_char, c_void};
use std::sync::OnceLock;

use kwaai_core::{Error, ErrorKind};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::callbacks::{CallbackGate, UserData};
use crate::error::{ffi_call, kwaai_status};
use crate::strings::str_arg;

/// Severity of a log line. The numeric values are stable.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum kwaai_log_level {
    /// Something failed.
    Error = 1,
    /// Something unexpected that the node survives.
    Warn = 2,
    /// Milestones: started, listening, serving.
    Info = 3,
    /// Details for diagnosis.
    Debug = 4,
    /// Every step.
    Trace = 5,
}

/// Receives one log line. Runs on whichever library thread logged it, possibly several at once;
/// it must return quickly and must not call kwaai functions. `target` (the module that logged)
/// and `message` are valid during the call only.
pub type kwaai_log_callback = Option<
    unsafe extern "C" fn(user_data: *mut c_void, level: kwaai_log_level, target: *const c_char, message: *const c_char),
>;

/// A non-NULL `kwaai_log_callback`.
type LogCallback =
    unsafe extern "C" fn(user_data: *mut c_void, level: kwaai_log_level, target: *const c_char, message: *const c_char);

static CALLBACK: CallbackGate<LogCallback> = CallbackGate::new();
static FILTER: OnceLock<Result<reload::Handle<EnvFilter, Registry>, String>> = OnceLock::new();

/// The installed filter's handle, installing the collector (at level `warn`) on first use.
fn log_filter() -> Result<&'static reload::Handle<EnvFilter, Registry>, Error> {
    FILTER
        .get_or_init(|| {
            let (layer, handle) = reload::Layer::new(EnvFilter::new("warn"));
            let subscriber = Registry::default().with(layer).with(HostLines);
            tracing::subscriber::set_global_default(subscriber)
                .map(|()| handle)
                .map_err(|e| format!("another log collector is installed in this process: {e}"))
        })
        .as_ref()
        .map_err(|e| Error::new(ErrorKind::Internal, e.clone()))
}

/// Sets which lines are logged: a level (`error`, `warn`, `info`, `debug`, `trace`, `off`) or
/// per-module directives such as `warn,kwaai_core::dht=debug`. Lines go to stderr unless a log
/// callback is set.
///
/// # Safety
/// `filter` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn kwaai_set_log_level(filter: *const c_char) -> kwaai_status {
    ffi_call(|| {
        let text = str_arg(filter, "filter")?;
        let new =
            EnvFilter::try_new(text).map_err(|e| Error::invalid_argument(format!("bad log filter {text:?}: {e}")))?;
        log_filter()?.reload(new).map_err(|e| Error::new(ErrorKind::Internal, format!("setting the log filter: {e}")))
    })
}

/// Sends log lines to `callback(user_data, ...)` instead of stderr; NULL sends them to stderr
/// again. Once it returns, an earlier callback is not running and is never called again.
#[no_mangle]
pub extern "C" fn kwaai_set_log_callback(callback: kwaai_log_callback, user_data: *mut c_void) -> kwaai_status {
    ffi_call(|| {
        log_filter()?;
        CALLBACK.set(callback.map(|c| (c, UserData(user_data))));
        Ok(())
    })
}

/// Writes each event as one line to the host's callback, or to stderr.
struct HostLines;

impl<S: Subscriber> Layer<S> for HostLines {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut line = Line::default();
        event.record(&mut line);
        let level = match *event.metadata().level() {
            Level::ERROR => kwaai_log_level::Error,
            Level::WARN => kwaai_log_level::Warn,
            Level::INFO => kwaai_log_level::Info,
            Level::DEBUG => kwaai_log_level::Debug,
            Level::TRACE => kwaai_log_level::Trace,
        };
        let target = event.metadata().target();
        let called = CALLBACK.call(|callback, user_data| {
            let target = CString::new(target).unwrap_or_default();
            let message = CString::new(line.text.replace('\0', "\\0")).unwrap_or_default();
            // SAFETY: the host gave this callback for these arguments; the strings outlive the call.
            unsafe { callback(user_data.0, level, target.as_ptr(), message.as_ptr()) }
        });
        if called.is_none() {
            eprintln!("{} {target}: {}", event.metadata().level(), line.text);
        }
    }
}

/// The message of an event followed by its other fields as ` key=value`.
#[derive(Default)]
struct Line {
    text: String,
}

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let fields = std::mem::take(&mut self.text);
            let _ = write!(self.text, "{value:?}{fields}");
        } else {
            let _ = write!(self.text, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.text.insert_str(0, value);
        } else {
            let _ = write!(self.text, " {}={value}", field.name());
        }
    }
}
