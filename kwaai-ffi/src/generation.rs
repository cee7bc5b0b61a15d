//! Generation through the C ABI: `kwaai_generation_config`, and `kwaai_generation`, a running
//! generation whose tokens reach a host callback on a thread of its own.

use std::ffi::CString;
use std::os::raw::{c_char, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{JoinHandle, ThreadId};

use futures::channel::oneshot;
use futures::future::{select, Either};
use futures::StreamExt;
use kwaai_core::client::{GeneratedToken, TokenStream};
use kwaai_core::model::GenerationConfig;
use kwaai_core::{Error, ErrorKind};

use crate::callbacks::{CallbackGate, UserData};
use crate::error::{ffi_call, kwaai_status};
use crate::handles::Registry;
use crate::strings::out_arg;
use crate::tensor::slice_arg;

static GENERATION_CONFIGS: Registry = Registry::new("generation config");
static GENERATIONS: Registry = Registry::new("generation");

/// The `token` of the last callback of a generation, which carries no token (`finished` is true).
pub const KWAAI_NO_TOKEN: u32 = u32::MAX;

/// How tokens are generated, built with `kwaai_generation_config_*` calls. The defaults:
/// 32 new tokens, greedy decoding, no stop tokens.
pub struct kwaai_generation_config {
    inner: GenerationConfig,
}

/// Creates a generation configuration with the defaults. Free it with `kwaai_generation_config_free`.
#[no_mangle]
pub extern "C" fn kwaai_generation_config_new(out: *mut *mut kwaai_generation_config) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        *out = GENERATION_CONFIGS.insert(kwaai_generation_config { inner: GenerationConfig::default() });
        Ok(())
    })
}

fn with_config(config: *mut kwaai_generation_config, f: impl FnOnce(&mut GenerationConfig)) -> Result<(), Error> {
    GENERATION_CONFIGS.with(config, |c| f(&mut c.inner))
}

/// The configuration behind a handle; NULL means the defaults.
pub(crate) fn generation_config_of(config: *mut kwaai_generation_config) -> Result<GenerationConfig, Error> {
    if config.is_null() {
        return Ok(GenerationConfig::default());
    }
    GENERATION_CONFIGS.with(config, |c| c.inner.clone())
}

/// Sets how many tokens are generated at most; positive.
#[no_mangle]
pub extern "C" fn kwaai_generation_config_set_max_new_tokens(
    config: *mut kwaai_generation_config,
    max_new_tokens: usize,
) -> kwaai_status {
    ffi_call(|| {
        if max_new_tokens == 0 {
            return Err(Error::invalid_argument("max_new_tokens must be positive"));
        }
        with_config(config, |c| c.max_new_tokens = max_new_tokens)
    })
}

/// Suppresses stop tokens until this many tokens were generated (transformers' `min_new_tokens`).
#[no_mangle]
pub extern "C" fn kwaai_generation_config_set_min_new_tokens(
    config: *mut kwaai_generation_config,
    min_new_tokens: usize,
) -> kwaai_status {
    ffi_call(|| with_config(config, |c| c.min_new_tokens = min_new_tokens))
}

/// Samples from the distribution when true; takes the most likely token when false (greedy).
#[no_mangle]
pub extern "C" fn kwaai_generation_config_set_do_sample(
    config: *mut kwaai_generation_config,
    do_sample: bool,
) -> kwaai_status {
    ffi_call(|| with_config(config, |c| c.sampling.do_sample = do_sample))
}

/// Divides logits by `temperature` before sampling; positive and finite.
#[no_mangle]
pub extern "C" fn kwaai_generation_config_set_temperature(
    config: *mut kwaai_generation_config,
    temperature: f32,
) -> kwaai_status {
    ffi_call(|| {
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(Error::invalid_argument("temperature must be positive"));
        }
        with_config(config, |c| c.sampling.temperature = temperature)
    })
}

/// Samples among the `top_k` most likely tokens only (0: all).
#[no_mangle]
pub extern "C" fn kwaai_generation_config_set_top_k(
    config: *mut kwaai_generation_config,
    top_k: usize,
) -> kwaai_status {
    ffi_call(|| with_config(config, |c| c.sampling.top_k = top_k))
}

/// Samples among the most likely tokens whose probability reaches `top_p`, in (0, 1] (1: all).
#[no_mangle]
pub extern "C" fn kwaai_generation_config_set_top_p(config: *mut kwaai_generation_config, top_p: f32) -> kwaai_status {
    ffi_call(|| {
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(Error::invalid_argument("top_p must be in (0, 1]"));
        }
        with_config(config, |c| c.sampling.top_p = top_p)
    })
}

/// Penalises tokens already seen (1: off); positive and finite.
#[no_mangle]
pub extern "C" fn kwaai_generation_config_set_repetition_penalty(
    config: *mut kwaai_generation_config,
    penalty: f32,
) -> kwaai_status {
    ffi_call(|| {
        if !(penalty.is_finite() && penalty > 0.0) {
            return Err(Error::invalid_argument("repetition_penalty must be positive"));
        }
        with_config(config, |c| c.sampling.repetition_penalty = penalty)
    })
}

/// Seeds the sampler (the same seed draws the same tokens).
#[no_mangle]
pub extern "C" fn kwaai_generation_config_set_seed(config: *mut kwaai_generation_config, seed: u64) -> kwaai_status {
    ffi_call(|| with_config(config, |c| c.sampling.seed = seed))
}

/// Ends generation after any of `tokens[0..count]` (the stop token is included in the output);
/// replaces earlier stop tokens, and `count == 0` clears them.
///
/// # Safety
/// `tokens` must point to `count` ids (or be NULL with `count == 0`).
#[no_mangle]
pub unsafe extern "C" fn kwaai_generation_config_set_stop_tokens(
    config: *mut kwaai_generation_config,
    tokens: *const u32,
    count: usize,
) -> kwaai_status {
    ffi_call(|| {
        let tokens = slice_arg(tokens, count, "tokens")?.to_vec();
        with_config(config, |c| c.stop_tokens = tokens)
    })
}

/// Frees a generation configuration. NULL, or a handle already freed, is ignored.
#[no_mangle]
pub extern "C" fn kwaai_generation_config_free(config: *mut kwaai_generation_config) {
    ffi_call(|| {
        drop(GENERATION_CONFIGS.remove(config));
        Ok(())
    });
}

/// Receives the tokens of a generation, one call per token in order, then one last call with
/// `finished` true and `token` KWAAI_NO_TOKEN (after the last token, an error, but never after
/// `kwaai_generation_cancel`); `kwaai_generation_wait` then gives the outcome.
///
/// Runs on a thread the library starts for each generation (named `kwaai-generation`); calls of
/// one generation never overlap. `text_piece` is the text the token adds (UTF-8, possibly empty
/// while a character is incomplete or without a tokenizer; NUL characters are left out) and is
/// valid during the call only. From the callback, call only `kwaai_generation_cancel` or
/// `kwaai_generation_free` on its own generation, and tensor, string and error functions.
pub type kwaai_token_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, token: u32, text_piece: *const c_char, finished: bool)>;

/// A non-NULL `kwaai_token_callback`.
pub(crate) type TokenCallback =
    unsafe extern "C" fn(user_data: *mut c_void, token: u32, text_piece: *const c_char, finished: bool);

/// A generation in progress or over, streaming tokens to a host callback.
pub struct kwaai_generation {
    inner: Arc<Generation>,
}

/// The shared state of a generation: its callback, how to stop it, and how it ended.
struct Generation {
    gate: CallbackGate<TokenCallback>,
    /// Set by `cancel`; no callback starts once it is set.
    cancelled: AtomicBool,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    /// The delivering thread: its id (to recognise calls from the callback) and its handle.
    thread: OnceLock<ThreadId>,
    worker: Mutex<Option<JoinHandle<()>>>,
    /// `None` while running; then the outcome, as a kind and a message.
    outcome: Mutex<Option<Result<(), (ErrorKind, String)>>>,
    done: Condvar,
}

impl Generation {
    fn on_own_thread(&self) -> bool {
        self.thread.get() == Some(&std::thread::current().id())
    }

    /// Stops the stream and the callbacks. From another thread it waits until the callback is not
    /// running and the server streams are closed; from the callback itself, only flags the stop.
    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        let own = self.on_own_thread();
        if !own {
            self.gate.set(None);
        }
        if let Some(stop) = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = stop.send(());
        }
        if !own {
            let worker = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(worker) = worker {
                let _ = worker.join();
            }
        }
    }

    /// Calls the host's callback unless the generation was cancelled; false when it was.
    fn emit(&self, token: u32, text: &CString, finished: bool) -> bool {
        if self.cancelled.load(Ordering::SeqCst) {
            return false;
        }
        self.gate
            .call(|callback, user_data| {
                // SAFETY: the host gave this callback for these arguments; `text` outlives the call.
                unsafe { callback(user_data.0, token, text.as_ptr(), finished) }
            })
            .is_some()
    }

    /// Delivers every token of `stream` until it ends or the generation is cancelled, then closes
    /// the stream (and with it the server sessions), sends the last call and records the outcome.
    fn run(&self, mut stream: TokenStream, mut stop: oneshot::Receiver<()>) {
        let _ = self.thread.set(std::thread::current().id());
        let cancelled = || Err(Error::new(ErrorKind::Closed, "the generation was cancelled"));
        let outcome = futures::executor::block_on(async {
            loop {
                match select(StreamExt::next(&mut stream), &mut stop).await {
                    Either::Left((Some(Ok(token)), _)) => {
                        if !self.emit(token.id, &text_of(token), false) {
                            return cancelled();
                        }
                    }
                    Either::Left((Some(Err(e)), _)) => return Err(e),
                    Either::Left((None, _)) => return Ok(()),
                    Either::Right(_) => return cancelled(),
                }
            }
        });
        stream.cancel();
        let outcome = outcome.map_err(|e| (e.kind(), e.message().to_owned()));
        self.emit(KWAAI_NO_TOKEN, &CString::default(), true);
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
        self.done.notify_all();
    }

    /// Blocks until the generation is over and returns its outcome.
    fn wait(&self) -> Result<(), Error> {
        if self.on_own_thread() {
            return Err(Error::invalid_argument("a generation cannot be waited for from its own callback"));
        }
        let mut outcome = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match &*outcome {
                Some(Ok(())) => return Ok(()),
                Some(Err((kind, message))) => return Err(Error::new(*kind, message.clone())),
                None => outcome = self.done.wait(outcome).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }
}

/// A token's text as a C string, leaving out NUL characters.
fn text_of(token: GeneratedToken) -> CString {
    let text = if token.text.contains('\0') { token.text.replace('\0', "") } else { token.text };
    CString::new(text).unwrap_or_default()
}

/// Starts delivering `stream` to `callback` on a new thread and returns the generation's handle,
/// as `kwaai_model_generate` does once its stream started: for Rust code that hands any token
/// stream (e.g. [`TokenStream::replay`]) to a C callback.
pub fn start_generation(
    stream: TokenStream,
    callback: kwaai_token_callback,
    user_data: *mut c_void,
) -> Result<*mut kwaai_generation, Error> {
    let callback = callback.ok_or_else(|| Error::invalid_argument("`callback` is NULL"))?;
    let (stop, stopped) = oneshot::channel();
    let generation = Arc::new(Generation {
        gate: CallbackGate::new(),
        cancelled: AtomicBool::new(false),
        stop: Mutex::new(Some(stop)),
        thread: OnceLock::new(),
        worker: Mutex::new(None),
        outcome: Mutex::new(None),
        done: Condvar::new(),
    });
    generation.gate.set(Some((callback, UserData(user_data))));
    let running = Arc::clone(&generation);
    let worker = std::thread::Builder::new()
        .name("kwaai-generation".into())
        .spawn(move || running.run(stream, stopped))
        .map_err(|e| Error::with_source(ErrorKind::Internal, "starting the generation thread", e))?;
    *generation.worker.lock().unwrap_or_else(|p| p.into_inner()) = Some(worker);
    Ok(GENERATIONS.insert(kwaai_generation { inner: generation }))
}

fn generation_of(generation: *mut kwaai_generation) -> Result<Arc<Generation>, Error> {
    GENERATIONS.with(generation, |g| Arc::clone(&g.inner))
}

/// Stops the generation: once it returns, the callback is not running and is never called again
/// (not even with `finished`), and the servers' sessions are closed. Called from the callback, it
/// returns at once and no call follows the current one. Cancelling a finished generation does
/// nothing.
#[no_mangle]
pub extern "C" fn kwaai_generation_cancel(generation: *mut kwaai_generation) -> kwaai_status {
    ffi_call(|| {
        generation_of(generation)?.cancel();
        Ok(())
    })
}

/// Blocks until the generation is over (the callback has returned for the last time) and returns
/// its outcome: KWAAI_STATUS_OK when every token was delivered, KWAAI_STATUS_CLOSED when it was
/// cancelled, or the error that ended it. Not callable from the generation's own callback.
#[no_mangle]
pub extern "C" fn kwaai_generation_wait(generation: *mut kwaai_generation) -> kwaai_status {
    ffi_call(|| generation_of(generation)?.wait())
}

/// Cancels the generation if it still runs (see `kwaai_generation_cancel`) and frees the handle.
/// NULL, or a handle already freed, is ignored.
#[no_mangle]
pub extern "C" fn kwaai_generation_free(generation: *mut kwaai_generation) {
    ffi_call(|| {
        if let Some(generation) = GENERATIONS.remove(generation) {
            generation.inner.cancel();
        }
        Ok(())
    });
}
