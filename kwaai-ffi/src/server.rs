//! Serving a span of a model's blocks: `kwaai_server_config` and `kwaai_server`.

use std::os::raw::c_char;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kwaai_core::server::{Server, ServerConfig, Span};
use kwaai_core::tensor::DType;
use kwaai_core::{Error, ErrorKind};

use crate::error::{ffi_call, kwaai_status};
use crate::handles::Registry;
use crate::node::{kwaai_node, node_of};
use crate::strings::{out_arg, owned_c_string, str_arg};
use crate::tensor::kwaai_dtype;

static SERVER_CONFIGS: Registry = Registry::new("server config");
static SERVERS: Registry = Registry::new("server");

/// What a server serves and how, built with `kwaai_server_config_*` calls and passed to
/// `kwaai_node_serve`. The defaults are Petals': give at least a model directory, a block range
/// (or a number of blocks) and a DHT prefix; without a throughput, it is measured (and cached).
pub struct kwaai_server_config {
    inner: ServerConfig,
}

/// A running server: a span of blocks announced to the swarm and served from one node.
pub struct kwaai_server {
    /// `None` once shut down.
    server: Arc<Mutex<Option<Server>>>,
}

/// Creates a server configuration with Petals' defaults. Free it with `kwaai_server_config_free`.
#[no_mangle]
pub extern "C" fn kwaai_server_config_new(out: *mut *mut kwaai_server_config) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        *out = SERVER_CONFIGS.insert(kwaai_server_config { inner: ServerConfig::default() });
        Ok(())
    })
}

fn with_config(config: *mut kwaai_server_config, f: impl FnOnce(&mut ServerConfig)) -> Result<(), Error> {
    SERVER_CONFIGS.with(config, |c| f(&mut c.inner))
}

/// Sets the Hugging Face model directory (config.json and safetensors) to serve from.
///
/// # Safety
/// `dir` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn kwaai_server_config_set_model_dir(
    config: *mut kwaai_server_config,
    dir: *const c_char,
) -> kwaai_status {
    ffi_call(|| {
        let dir = PathBuf::from(str_arg(dir, "dir")?);
        with_config(config, |c| c.model_dir = dir)
    })
}

/// Serves blocks `start..end` (`--block_indices start:end`); `start < end`.
#[no_mangle]
pub extern "C" fn kwaai_server_config_set_block_range(
    config: *mut kwaai_server_config,
    start: u32,
    end: u32,
) -> kwaai_status {
    ffi_call(|| {
        let span = Span::new(start, end)?;
        with_config(config, |c| c.block_indices = Some(span))
    })
}

/// Serves `num_blocks` blocks chosen where the swarm needs them (`--num_blocks`); positive.
#[no_mangle]
pub extern "C" fn kwaai_server_config_set_num_blocks(
    config: *mut kwaai_server_config,
    num_blocks: u32,
) -> kwaai_status {
    ffi_call(|| {
        if num_blocks == 0 {
            return Err(Error::invalid_argument("num_blocks must be positive"));
        }
        with_config(config, |c| c.num_blocks = Some(num_blocks))
    })
}

/// Sets the model's DHT prefix (e.g. `tiny-llama`), under which blocks are announced.
///
/// # Safety
/// `prefix` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn kwaai_server_config_set_dht_prefix(
    config: *mut kwaai_server_config,
    prefix: *const c_char,
) -> kwaai_status {
    ffi_call(|| {
        let prefix = str_arg(prefix, "prefix")?;
        if prefix.is_empty() {
            return Err(Error::invalid_argument("the DHT prefix is empty"));
        }
        let prefix = prefix.to_owned();
        with_config(config, |c| c.dht_prefix = Some(prefix))
    })
}

/// Sets the announced throughput in requests per second (`--throughput`); positive and finite.
/// Without it, the server measures its throughput as Petals does.
#[no_mangle]
pub extern "C" fn kwaai_server_config_set_throughput(
    config: *mut kwaai_server_config,
    throughput: f64,
) -> kwaai_status {
    ffi_call(|| {
        if !(throughput.is_finite() && throughput > 0.0) {
            return Err(Error::invalid_argument("throughput must be a positive number of requests per second"));
        }
        with_config(config, |c| c.throughput = Some(throughput))
    })
}

/// Sets the dtype the blocks compute and answer in (`--torch_dtype`): F32, F16 or BF16. Without
/// it, the checkpoint's dtype is used (float32 becoming bfloat16), as Petals' `auto`.
#[no_mangle]
pub extern "C" fn kwaai_server_config_set_torch_dtype(
    config: *mut kwaai_server_config,
    dtype: kwaai_dtype,
) -> kwaai_status {
    ffi_call(|| {
        let dtype = DType::from(dtype);
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::invalid_argument(format!(
                "a server computes in float32, float16 or bfloat16, not {}",
                dtype.name()
            )));
        }
        with_config(config, |c| c.torch_dtype = Some(dtype))
    })
}

/// Sets how many inference sessions may be open at once; positive.
#[no_mangle]
pub extern "C" fn kwaai_server_config_set_max_sessions(
    config: *mut kwaai_server_config,
    max_sessions: usize,
) -> kwaai_status {
    ffi_call(|| {
        if max_sessions == 0 {
            return Err(Error::invalid_argument("max_sessions must be positive"));
        }
        with_config(config, |c| c.max_sessions = max_sessions)
    })
}

/// Sets the attention-cache tokens per block (`--attn_cache_tokens`); positive.
#[no_mangle]
pub extern "C" fn kwaai_server_config_set_attn_cache_tokens(
    config: *mut kwaai_server_config,
    tokens: u64,
) -> kwaai_status {
    ffi_call(|| {
        if tokens == 0 {
            return Err(Error::invalid_argument("attn_cache_tokens must be positive"));
        }
        with_config(config, |c| c.attn_cache_tokens = Some(tokens))
    })
}

/// Sets the longest inference session in tokens (`--inference_max_length`); positive.
#[no_mangle]
pub extern "C" fn kwaai_server_config_set_inference_max_length(
    config: *mut kwaai_server_config,
    max_length: usize,
) -> kwaai_status {
    ffi_call(|| {
        if max_length == 0 {
            return Err(Error::invalid_argument("inference_max_length must be positive"));
        }
        with_config(config, |c| c.inference_max_length = Some(max_length))
    })
}

/// Sets the name swarm monitors show for this server (`--public_name`).
///
/// # Safety
/// `name` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn kwaai_server_config_set_public_name(
    config: *mut kwaai_server_config,
    name: *const c_char,
) -> kwaai_status {
    ffi_call(|| {
        let name = str_arg(name, "name")?.to_owned();
        with_config(config, |c| c.public_name = Some(name))
    })
}

/// Frees a server configuration. NULL, or a handle already freed, is ignored.
#[no_mangle]
pub extern "C" fn kwaai_server_config_free(config: *mut kwaai_server_config) {
    ffi_call(|| {
        drop(SERVER_CONFIGS.remove(config));
        Ok(())
    });
}

/// Loads the configured blocks, announces them and serves them from `node` until
/// `kwaai_server_shutdown` or `kwaai_server_free`; returns once the server is ONLINE. `config`
/// stays owned by the caller. Free servers before their node.
#[no_mangle]
pub extern "C" fn kwaai_node_serve(
    node: *mut kwaai_node,
    config: *mut kwaai_server_config,
    out: *mut *mut kwaai_server,
) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        let node = node_of(node)?;
        let config = SERVER_CONFIGS.with(config, |c| c.inner.clone())?;
        if !node.is_running() {
            return Err(Error::new(ErrorKind::Closed, "the node is shut down"));
        }
        if config.model_dir.as_os_str().is_empty() {
            return Err(Error::invalid_argument("the server configuration has no model directory"));
        }
        let server = Server::start(&node, config)?;
        *out = SERVERS.insert(kwaai_server { server: Arc::new(Mutex::new(Some(server))) });
        Ok(())
    })
}

/// Runs `f` on a running server; a shut-down server is KWAAI_STATUS_CLOSED.
fn with_server<R>(server: *mut kwaai_server, f: impl FnOnce(&Server) -> R) -> Result<R, Error> {
    let shared = SERVERS.with(server, |s| Arc::clone(&s.server))?;
    let guard = shared.lock().unwrap_or_else(|p| p.into_inner());
    let server = guard.as_ref().ok_or_else(|| Error::new(ErrorKind::Closed, "the server is shut down"))?;
    Ok(f(server))
}

/// Writes the served blocks `start..end` to `out_start` and `out_end`.
#[no_mangle]
pub extern "C" fn kwaai_server_span(server: *mut kwaai_server, out_start: *mut u32, out_end: *mut u32) -> kwaai_status {
    ffi_call(|| {
        let out_start = out_arg(out_start, "out_start")?;
        let out_end = out_arg(out_end, "out_end")?;
        let span = with_server(server, Server::span)?;
        *out_start = span.start;
        *out_end = span.end;
        Ok(())
    })
}

/// Writes the server's DHT prefix to `out`; free it with `kwaai_string_free`.
#[no_mangle]
pub extern "C" fn kwaai_server_dht_prefix(server: *mut kwaai_server, out: *mut *mut c_char) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        *out = owned_c_string(with_server(server, |s| s.dht_prefix().to_owned())?)?;
        Ok(())
    })
}

/// Writes the number of inference sessions holding a cache now to `out`.
#[no_mangle]
pub extern "C" fn kwaai_server_active_sessions(server: *mut kwaai_server, out: *mut usize) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        *out = with_server(server, Server::active_sessions)?;
        Ok(())
    })
}

/// Writes the attention-cache tokens still free to `out` (as Petals announces `cache_tokens_left`).
#[no_mangle]
pub extern "C" fn kwaai_server_cache_tokens_left(server: *mut kwaai_server, out: *mut u64) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        *out = with_server(server, Server::cache_tokens_left)?;
        Ok(())
    })
}

/// Announces the span OFFLINE, stops answering and ends open sessions. The handle stays valid
/// until `kwaai_server_free`; other calls on it then give KWAAI_STATUS_CLOSED. Calling it again
/// does nothing.
#[no_mangle]
pub extern "C" fn kwaai_server_shutdown(server: *mut kwaai_server) -> kwaai_status {
    ffi_call(|| {
        let shared = SERVERS.with(server, |s| Arc::clone(&s.server))?;
        let stopped = shared.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(stopped);
        Ok(())
    })
}

/// Shuts the server down if needed and frees the handle. NULL, or a handle already freed, is ignored.
#[no_mangle]
pub extern "C" fn kwaai_server_free(server: *mut kwaai_server) {
    ffi_call(|| {
        if let Some(server) = SERVERS.remove(server) {
            let stopped = server.server.lock().unwrap_or_else(|p| p.into_inner()).take();
            drop(stopped);
        }
        Ok(())
    });
}
