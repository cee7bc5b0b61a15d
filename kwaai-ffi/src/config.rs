//! `kwaai_config`: the settings a node starts with.

use std::os::raw::c_char;
use std::path::PathBuf;

use kwaai_core::NodeConfig;

use crate::error::{ffi_call, kwaai_status};
use crate::handles::Registry;
use crate::strings::{out_arg, str_arg};

pub(crate) static CONFIGS: Registry = Registry::new("config");

/// Node settings, built with `kwaai_config_*` calls and passed to `kwaai_node_start`.
pub struct kwaai_config {
    pub(crate) inner: NodeConfig,
}

/// Creates a configuration with the defaults: listen on `/ip4/127.0.0.1/tcp/0`, fresh identity.
/// Free it with `kwaai_config_free` (it may be freed right after `kwaai_node_start`).
#[no_mangle]
pub extern "C" fn kwaai_config_new(out: *mut *mut kwaai_config) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        *out = CONFIGS.insert(kwaai_config { inner: NodeConfig::default() });
        Ok(())
    })
}

/// Adds a multiaddr to listen on, e.g. `/ip4/127.0.0.1/tcp/0`. With none, the default is used.
///
/// # Safety
/// `addr` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn kwaai_config_add_listen_addr(config: *mut kwaai_config, addr: *const c_char) -> kwaai_status {
    ffi_call(|| {
        let addr = str_arg(addr, "addr")?.to_owned();
        CONFIGS.with(config, |c| c.inner.listen_addrs.push(addr))
    })
}

/// Sets the identity file (hivemind's format). A missing file is created with a fresh key.
///
/// # Safety
/// `path` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn kwaai_config_set_identity_path(
    config: *mut kwaai_config,
    path: *const c_char,
) -> kwaai_status {
    ffi_call(|| {
        let path = PathBuf::from(str_arg(path, "path")?);
        CONFIGS.with(config, |c| c.inner.identity_path = Some(path))
    })
}

/// Adds a peer to join the swarm through: a multiaddr ending in `/p2p/<peer id>`.
///
/// # Safety
/// `addr` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn kwaai_config_add_initial_peer(config: *mut kwaai_config, addr: *const c_char) -> kwaai_status {
    ffi_call(|| {
        let addr = str_arg(addr, "addr")?.to_owned();
        CONFIGS.with(config, |c| c.inner.initial_peers.push(addr))
    })
}

/// Runs the DHT in client mode (ask, do not serve) when `client_mode` is true.
#[no_mangle]
pub extern "C" fn kwaai_config_set_client_mode(config: *mut kwaai_config, client_mode: bool) -> kwaai_status {
    ffi_call(|| CONFIGS.with(config, |c| c.inner.dht.client_mode = client_mode))
}

/// Frees a configuration. NULL, or a handle already freed, is ignored.
#[no_mangle]
pub extern "C" fn kwaai_config_free(config: *mut kwaai_config) {
    ffi_call(|| {
        drop(CONFIGS.remove(config));
        Ok(())
    });
}
