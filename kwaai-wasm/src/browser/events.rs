//! Events for the page's `onEvent` callback, as plain objects (`{ kind: "route", hops }`, ...).

use std::rc::Rc;

use js_sys::{Array, Object, Reflect};
use kwaai_core::client::Hop;
use wasm_bindgen::{JsCast, JsValue};

/// The page's event callback, if it gave one.
#[derive(Clone, Default)]
pub struct Events(Option<Rc<js_sys::Function>>);

/// `hops` as `[{ peer, start, end }, ...]`.
pub fn hops_value(hops: &[Hop]) -> JsValue {
    hops.iter()
        .map(|hop| {
            object(&[("peer", hop.peer.to_base58().into()), ("start", hop.start.into()), ("end", hop.end.into())])
        })
        .collect::<Array>()
        .into()
}

/// A plain object with `fields`.
pub fn object(fields: &[(&str, JsValue)]) -> JsValue {
    let object = Object::new();
    for (name, value) in fields {
        let _ = Reflect::set(&object, &JsValue::from_str(name), value);
    }
    object.into()
}

impl Events {
    /// Events go to `callback` (ignored unless it is a function).
    pub fn new(callback: JsValue) -> Self {
        Events(callback.dyn_into::<js_sys::Function>().ok().map(Rc::new))
    }

    fn emit(&self, kind: &str, fields: &[(&str, JsValue)]) {
        let Some(callback) = &self.0 else { return };
        let mut all = vec![("kind", JsValue::from_str(kind))];
        all.extend(fields.iter().cloned());
        if let Err(e) = callback.call1(&JsValue::NULL, &object(&all)) {
            tracing::warn!("onEvent threw: {e:?}");
        }
    }

    /// `{ kind: "connected", peer }`.
    pub fn connected(&self, peer: &str) {
        self.emit("connected", &[("peer", peer.into())]);
    }

    /// `{ kind: "disconnected", peer, message }`.
    pub fn disconnected(&self, peer: &str, message: &str) {
        self.emit("disconnected", &[("peer", peer.into()), ("message", message.into())]);
    }

    /// `{ kind: "route", hops }`.
    pub fn route(&self, hops: &[Hop]) {
        self.emit("route", &[("hops", hops_value(hops))]);
    }

    /// `{ kind: "retry", message }`.
    pub fn retry(&self, message: &str) {
        self.emit("retry", &[("message", message.into())]);
    }

    /// `{ kind: "error", message }`.
    pub fn error(&self, message: &str) {
        self.emit("error", &[("message", message.into())]);
    }
}
