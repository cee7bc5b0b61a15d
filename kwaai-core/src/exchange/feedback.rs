//! The error-feedback residuals of tensor pushes, one per (sending node, receiving peer, name).
//!
//! A push takes its residual out while it runs and puts back the new one (or the old one on
//! failure), so two concurrent pushes of one name never apply the same residual twice.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::PeerId;

/// (sending node, receiving peer, tensor name).
pub(super) type Key = (PeerId, PeerId, String);

fn store() -> MutexGuard<'static, HashMap<Key, Vec<f32>>> {
    static STORE: OnceLock<Mutex<HashMap<Key, Vec<f32>>>> = OnceLock::new();
    STORE.get_or_init(Mutex::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Removes and returns the residual of `key`.
pub(super) fn take(key: &Key) -> Option<Vec<f32>> {
    store().remove(key)
}

/// Stores `residual` as `key`'s (nothing to store leaves none).
pub(super) fn restore(key: Key, residual: Option<Vec<f32>>) {
    if let Some(residual) = residual {
        store().insert(key, residual);
    }
}

/// Forgets every residual of pushes sent by `node`.
pub(super) fn clear(node: PeerId) {
    store().retain(|(sender, _, _), _| *sender != node);
}
