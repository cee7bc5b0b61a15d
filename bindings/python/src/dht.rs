//! The DHT from Python, shaped like hivemind's `DHT.store` / `DHT.get`: values come back as
//! `ValueWithExpiration(value, expiration_time)`, dictionaries as `{subkey: ValueWithExpiration}`.

use kwaai_core::dht::{DhtValue, StoreItem};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::value::{to_python, to_value};

/// A value and its expiration time (DHT time, Unix seconds); unpacks like a 2-tuple.
#[pyclass(module = "kwaai", frozen, get_all)]
pub struct ValueWithExpiration {
    /// The value (for a dictionary: `{subkey: ValueWithExpiration}`).
    pub value: PyObject,
    /// When it expires.
    pub expiration_time: f64,
}

#[pymethods]
impl ValueWithExpiration {
    #[new]
    fn new(value: PyObject, expiration_time: f64) -> Self {
        ValueWithExpiration { value, expiration_time }
    }

    fn __iter__(&self, py: Python<'_>) -> PyResult<PyObject> {
        let pair = (self.value.clone_ref(py), self.expiration_time).into_pyobject(py)?;
        Ok(pair.try_iter()?.into_any().unbind())
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Ok(other) = other.downcast::<ValueWithExpiration>() else { return Ok(false) };
        let other = other.get();
        Ok(self.expiration_time == other.expiration_time && self.value.bind(py).eq(other.value.bind(py))?)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "ValueWithExpiration(value={}, expiration_time={})",
            self.value.bind(py).repr()?,
            self.expiration_time
        ))
    }
}

/// Converts a core result into `ValueWithExpiration` (or `None`).
pub(crate) fn to_python_result(py: Python<'_>, found: Option<DhtValue>) -> PyResult<Option<ValueWithExpiration>> {
    Ok(match found {
        None => None,
        Some(DhtValue::Regular { value, expiration }) => {
            Some(ValueWithExpiration { value: to_python(py, &value)?, expiration_time: expiration })
        }
        Some(DhtValue::Dictionary { entries, expiration }) => {
            let dict = PyDict::new(py);
            for entry in entries {
                let item =
                    ValueWithExpiration { value: to_python(py, &entry.value)?, expiration_time: entry.expiration };
                dict.set_item(to_python(py, &entry.subkey)?, Py::new(py, item)?)?;
            }
            Some(ValueWithExpiration { value: dict.into_any().unbind(), expiration_time: expiration })
        }
    })
}

/// Builds store items from Python sequences (a single expiration applies to every key).
pub(crate) fn store_items(
    keys: &[Bound<'_, PyAny>],
    values: &[Bound<'_, PyAny>],
    expirations: &[f64],
    subkeys: Option<&[Bound<'_, PyAny>]>,
) -> PyResult<Vec<StoreItem>> {
    let n = keys.len();
    let aligned =
        values.len() == n && (expirations.len() == n || expirations.len() == 1) && subkeys.is_none_or(|s| s.len() == n);
    if !aligned {
        return Err(crate::error::InvalidArgumentError::new_err(
            "keys, values, expirations and subkeys differ in length",
        ));
    }
    (0..n)
        .map(|i| {
            let subkey = match subkeys.map(|s| &s[i]) {
                Some(s) if !s.is_none() => Some(to_value(s)?),
                _ => None,
            };
            let expiration = if expirations.len() == 1 { expirations[0] } else { expirations[i] };
            Ok(StoreItem { key: to_value(&keys[i])?, subkey, value: to_value(&values[i])?, expiration })
        })
        .collect()
}
