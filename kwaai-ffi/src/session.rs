//! `kwaai_session`: a step-by-step inference session through the swarm's chain of servers, for
//! hosts that drive their own decoding loop (embed, step, logits, choose, repeat).

use std::sync::{Arc, Mutex};

use kwaai_core::client::InferenceSession;
use kwaai_core::tensor::Tensor;
use kwaai_core::Error;

use crate::error::{ffi_call, kwaai_status};
use crate::handles::Registry;
use crate::model::{hidden_states_arg, kwaai_model, model_of};
use crate::strings::out_arg;
use crate::tensor::{kwaai_tensor, TENSORS};

static SESSIONS: Registry = Registry::new("session");

/// An open inference session: the servers keep the attention caches of its tokens.
pub struct kwaai_session {
    session: Arc<Mutex<InferenceSession>>,
    hidden_size: usize,
}

/// Opens a session over every block of `model` that may hold up to `max_length` tokens (servers
/// reserve their caches for that many). Free it with `kwaai_session_free`.
#[no_mangle]
pub extern "C" fn kwaai_model_inference_session(
    model: *mut kwaai_model,
    max_length: usize,
    out: *mut *mut kwaai_session,
) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        if max_length == 0 {
            return Err(Error::invalid_argument("max_length must be positive"));
        }
        let model = model_of(model)?;
        let session = model.inference_session(max_length)?;
        let hidden_size = model.model().config().hidden_size;
        *out = SESSIONS.insert(kwaai_session { session: Arc::new(Mutex::new(session)), hidden_size });
        Ok(())
    })
}

fn session_of(session: *mut kwaai_session) -> Result<(Arc<Mutex<InferenceSession>>, usize), Error> {
    SESSIONS.with(session, |s| (Arc::clone(&s.session), s.hidden_size))
}

/// Runs float hidden states `[batch, tokens, hidden]` (e.g. from `kwaai_model_embed`) through
/// every block and writes the last block's output, float32 of the same shape, to `out`. The
/// servers remember the tokens for the following steps. Other dtypes or shapes are
/// KWAAI_STATUS_INVALID_ARGUMENT, and so is going past `max_length`; a closed session is
/// KWAAI_STATUS_CLOSED. `hidden` stays owned by the caller.
#[no_mangle]
pub extern "C" fn kwaai_session_step(
    session: *mut kwaai_session,
    hidden: *mut kwaai_tensor,
    out: *mut *mut kwaai_tensor,
) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        let (session, hidden_size) = session_of(session)?;
        let hidden = hidden_states_arg(hidden, hidden_size)?;
        let output = session.lock().unwrap_or_else(|p| p.into_inner()).step(&hidden)?;
        *out = TENSORS.insert(kwaai_tensor { tensor: Tensor::from_candle(&output)? });
        Ok(())
    })
}

/// Writes the number of tokens processed so far to `out`.
#[no_mangle]
pub extern "C" fn kwaai_session_position(session: *mut kwaai_session, out: *mut usize) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        *out = session_of(session)?.0.lock().unwrap_or_else(|p| p.into_inner()).position();
        Ok(())
    })
}

/// Closes every server stream of the session and waits until the servers ended them; later steps
/// are KWAAI_STATUS_CLOSED. Closing again does nothing.
#[no_mangle]
pub extern "C" fn kwaai_session_close(session: *mut kwaai_session) -> kwaai_status {
    ffi_call(|| {
        session_of(session)?.0.lock().unwrap_or_else(|p| p.into_inner()).close();
        Ok(())
    })
}

/// Closes the session if needed and frees the handle. NULL, or a handle already freed, is ignored.
#[no_mangle]
pub extern "C" fn kwaai_session_free(session: *mut kwaai_session) {
    ffi_call(|| {
        if let Some(session) = SESSIONS.remove(session) {
            session.session.lock().unwrap_or_else(|p| p.into_inner()).close();
        }
        Ok(())
    });
}
