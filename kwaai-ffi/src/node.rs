//! `kwaai_node`: a running node.

use std::os::raw::c_char;
use std::sync::Arc;
use std::time::Duration;

use kwaai_core::{Error, Node};

use crate::callbacks::CallbackGate;
use crate::config::{kwaai_config, CONFIGS};
use crate::error::{ffi_call, kwaai_status};
use crate::handles::Registry;
use crate::strings::{out_arg, owned_c_string, str_arg};
use crate::tensor::TensorCallback;

static NODES: Registry = Registry::new("node");

/// A running node. It owns its threads; calls on it may come from any thread.
pub struct kwaai_node {
    node: Arc<Node>,
    tensor_gate: Arc<TensorGate>,
}

/// The host's tensor callback of one node.
pub(crate) type TensorGate = CallbackGate<TensorCallback>;

pub(crate) fn node_of(handle: *mut kwaai_node) -> Result<Arc<Node>, Error> {
    NODES.with(handle, |h| h.node.clone())
}

pub(crate) fn node_and_tensor_gate(handle: *mut kwaai_node) -> Result<(Arc<Node>, Arc<TensorGate>), Error> {
    NODES.with(handle, |h| (h.node.clone(), h.tensor_gate.clone()))
}

/// Stops every host callback of the node (waiting for calls in progress), then its services.
fn stop(node: &kwaai_node) {
    node.tensor_gate.set(None);
    node.node.shutdown();
}

/// Starts a node with `config` and returns it through `out` once it listens.
/// `config` stays owned by the caller.
#[no_mangle]
pub extern "C" fn kwaai_node_start(config: *mut kwaai_config, out: *mut *mut kwaai_node) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        let config = CONFIGS.with(config, |c| c.inner.clone())?;
        let node = Node::start(config)?;
        *out = NODES.insert(kwaai_node { node: Arc::new(node), tensor_gate: Arc::new(CallbackGate::new()) });
        Ok(())
    })
}

/// Writes the node's peer ID (base58, e.g. `12D3KooW...`) to `out`; free it with `kwaai_string_free`.
#[no_mangle]
pub extern "C" fn kwaai_node_peer_id(node: *mut kwaai_node, out: *mut *mut c_char) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        *out = owned_c_string(node_of(node)?.peer_id().to_base58())?;
        Ok(())
    })
}

/// Writes the number of listen multiaddrs to `out` (0 once the node is shut down).
#[no_mangle]
pub extern "C" fn kwaai_node_listen_addr_count(node: *mut kwaai_node, out: *mut usize) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        *out = node_of(node)?.listen_addrs().len();
        Ok(())
    })
}

/// Writes listen multiaddr number `index` (ending in `/p2p/<peer id>`) to `out`; free it with
/// `kwaai_string_free`. An index past the count is KWAAI_STATUS_INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn kwaai_node_listen_addr(node: *mut kwaai_node, index: usize, out: *mut *mut c_char) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        let addrs = node_of(node)?.listen_addrs();
        let addr = addrs.get(index).ok_or_else(|| {
            Error::invalid_argument(format!("index {index} is past the {} listen addrs", addrs.len()))
        })?;
        *out = owned_c_string(addr.to_string())?;
        Ok(())
    })
}

/// Connects to the peer at multiaddr `addr` (ending in `/p2p/<peer id>`), waiting up to
/// `timeout_ms`.
///
/// # Safety
/// `addr` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn kwaai_node_connect(
    node: *mut kwaai_node,
    addr: *const c_char,
    timeout_ms: u64,
) -> kwaai_status {
    ffi_call(|| {
        let addr = str_arg(addr, "addr")?;
        node_of(node)?.connect(addr, Duration::from_millis(timeout_ms)).map(drop)
    })
}

/// Stops the node's services; the handle stays valid until `kwaai_node_free`. Calling it again
/// does nothing.
#[no_mangle]
pub extern "C" fn kwaai_node_shutdown(node: *mut kwaai_node) -> kwaai_status {
    ffi_call(|| {
        let (node, gate) = node_and_tensor_gate(node)?;
        gate.set(None);
        node.shutdown();
        Ok(())
    })
}

/// Shuts the node down if needed and frees the handle. NULL, or a handle already freed, is ignored.
#[no_mangle]
pub extern "C" fn kwaai_node_free(node: *mut kwaai_node) {
    ffi_call(|| {
        if let Some(node) = NODES.remove(node) {
            stop(&node);
        }
        Ok(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::{CStr, CString};
    use std::ptr::null_mut;

    #[test]
    fn lifecycle_through_the_c_api() {
        let mut config = null_mut();
        assert_eq!(crate::kwaai_config_new(&mut config), kwaai_status::Ok);
        let addr = CString::new("/ip4/127.0.0.1/tcp/0").unwrap();
        assert_eq!(unsafe { crate::kwaai_config_add_listen_addr(config, addr.as_ptr()) }, kwaai_status::Ok);
        let mut node = null_mut();
        assert_eq!(kwaai_node_start(config, &mut node), kwaai_status::Ok);
        crate::kwaai_config_free(config);

        let mut peer_id = null_mut();
        assert_eq!(kwaai_node_peer_id(node, &mut peer_id), kwaai_status::Ok);
        let peer = unsafe { CStr::from_ptr(peer_id) }.to_str().unwrap().to_owned();
        unsafe { crate::kwaai_string_free(peer_id) };
        let mut count = 0;
        assert_eq!(kwaai_node_listen_addr_count(node, &mut count), kwaai_status::Ok);
        assert_eq!(count, 1);
        let mut maddr = null_mut();
        assert_eq!(kwaai_node_listen_addr(node, 0, &mut maddr), kwaai_status::Ok);
        let text = unsafe { CStr::from_ptr(maddr) }.to_str().unwrap().to_owned();
        unsafe { crate::kwaai_string_free(maddr) };
        assert!(text.starts_with("/ip4/127.0.0.1/tcp/") && text.ends_with(&format!("/p2p/{peer}")), "{text}");
        assert_eq!(kwaai_node_listen_addr(node, 1, &mut maddr), kwaai_status::InvalidArgument);

        assert_eq!(kwaai_node_shutdown(node), kwaai_status::Ok);
        assert_eq!(kwaai_node_listen_addr_count(node, &mut count), kwaai_status::Ok);
        assert_eq!(count, 0);
        kwaai_node_free(node);
        assert_eq!(kwaai_node_peer_id(node, &mut peer_id), kwaai_status::InvalidArgument);
        kwaai_node_free(node);
    }

    #[test]
    fn invalid_utf8_and_nulls_are_invalid_arguments() {
        let mut config = null_mut();
        assert_eq!(crate::kwaai_config_new(&mut config), kwaai_status::Ok);
        let bad = [0xff_u8, 0xfe, 0];
        let status = unsafe { crate::kwaai_config_add_listen_addr(config, bad.as_ptr().cast()) };
        assert_eq!(status, kwaai_status::InvalidArgument);
        let message = unsafe { CStr::from_ptr(crate::kwaai_last_error_message()) }.to_str().unwrap();
        assert!(message.contains("UTF-8"), "{message}");
        assert_eq!(
            unsafe { crate::kwaai_config_add_listen_addr(config, std::ptr::null()) },
            kwaai_status::InvalidArgument
        );
        assert_eq!(kwaai_node_start(config, null_mut()), kwaai_status::InvalidArgument);
        assert_eq!(kwaai_node_start(null_mut(), &mut null_mut()), kwaai_status::InvalidArgument);
        crate::kwaai_config_free(config);
    }
}
