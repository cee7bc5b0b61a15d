//! The DHT from Node.js: `dhtStore` / `dhtGet` (and their `Many` forms) on `Node`, as Promises.

use std::sync::Arc;

use kwaai_core::dht::{DhtValue, StoreItem};
use napi::{Env, JsUnknown, Task};

use crate::error::to_js as error_to_js;
use crate::value::to_js;

/// Stores items on the thread pool.
pub struct StoreTask {
    pub(crate) node: Arc<kwaai_core::Node>,
    pub(crate) items: Vec<StoreItem>,
    /// Resolve with the single flag instead of an array.
    pub(crate) single: bool,
}

impl Task for StoreTask {
    type Output = Result<Vec<bool>, kwaai_core::Error>;
    type JsValue = JsUnknown;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        Ok(self.node.dht_store_many(std::mem::take(&mut self.items)))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<JsUnknown> {
        let flags = output.map_err(|e| error_to_js(&env, &e))?;
        if self.single {
            return Ok(env.get_boolean(flags.first().copied().unwrap_or(false))?.into_unknown());
        }
        let mut array = env.create_array_with_length(flags.len())?;
        for (i, ok) in flags.into_iter().enumerate() {
            array.set_element(i as u32, env.get_boolean(ok)?)?;
        }
        Ok(array.into_unknown())
    }
}

/// Reads keys on the thread pool.
pub struct GetTask {
    pub(crate) node: Arc<kwaai_core::Node>,
    pub(crate) keys: Vec<rmpv::Value>,
    pub(crate) latest: bool,
    /// Resolve with the single result instead of an array.
    pub(crate) single: bool,
}

impl Task for GetTask {
    type Output = Result<Vec<Option<DhtValue>>, kwaai_core::Error>;
    type JsValue = JsUnknown;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        Ok(self.node.dht_get_many(std::mem::take(&mut self.keys), self.latest))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<JsUnknown> {
        let found = output.map_err(|e| error_to_js(&env, &e))?;
        if self.single {
            return result_to_js(&env, found.into_iter().next().flatten());
        }
        let mut array = env.create_array_with_length(found.len())?;
        for (i, item) in found.into_iter().enumerate() {
            array.set_element(i as u32, result_to_js(&env, item)?)?;
        }
        Ok(array.into_unknown())
    }
}

/// `null`, `{ value, expiration }`, or `{ entries: [{ subkey, value, expiration }], expiration }`.
fn result_to_js(env: &Env, found: Option<DhtValue>) -> napi::Result<JsUnknown> {
    let Some(found) = found else { return Ok(env.get_null()?.into_unknown()) };
    let mut object = env.create_object()?;
    match found {
        DhtValue::Regular { value, expiration } => {
            object.set_named_property("value", to_js(env, &value)?)?;
            object.set_named_property("expiration", env.create_double(expiration)?)?;
        }
        DhtValue::Dictionary { entries, expiration } => {
            let mut array = env.create_array_with_length(entries.len())?;
            for (i, entry) in entries.iter().enumerate() {
                let mut item = env.create_object()?;
                item.set_named_property("subkey", to_js(env, &entry.subkey)?)?;
                item.set_named_property("value", to_js(env, &entry.value)?)?;
                item.set_named_property("expiration", env.create_double(entry.expiration)?)?;
                array.set_element(i as u32, item)?;
            }
            object.set_named_property("entries", array)?;
            object.set_named_property("expiration", env.create_double(expiration)?)?;
        }
    }
    Ok(object.into_unknown())
}
