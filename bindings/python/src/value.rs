//! Python objects <-> msgpack values, as hivemind's `MSGPackSerializer` maps them: `None`, `bool`,
//! `int`, `float`, `str`, `bytes`, `list`, `dict`, and `tuple` (ext type 0x40).

use kwaai_core::wire::msgpack;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use rmpv::Value;

/// Converts a Python object to a msgpack value; unsupported types raise `TypeError`.
pub(crate) fn to_value(object: &Bound<'_, PyAny>) -> PyResult<Value> {
    if object.is_none() {
        Ok(Value::Nil)
    } else if let Ok(b) = object.downcast::<PyBool>() {
        Ok(Value::Boolean(b.is_true()))
    } else if object.is_instance_of::<PyInt>() {
        if let Ok(i) = object.extract::<i64>() {
            Ok(Value::from(i))
        } else {
            Ok(Value::from(object.extract::<u64>()?))
        }
    } else if let Ok(f) = object.downcast::<PyFloat>() {
        Ok(Value::F64(f.value()))
    } else if let Ok(s) = object.downcast::<PyString>() {
        Ok(Value::from(s.to_cow()?.into_owned()))
    } else if let Ok(b) = object.downcast::<PyBytes>() {
        Ok(Value::Binary(b.as_bytes().to_vec()))
    } else if let Ok(t) = object.downcast::<PyTuple>() {
        Ok(msgpack::tuple(t.iter().map(|item| to_value(&item)).collect::<PyResult<_>>()?))
    } else if let Ok(l) = object.downcast::<PyList>() {
        Ok(Value::Array(l.iter().map(|item| to_value(&item)).collect::<PyResult<_>>()?))
    } else if let Ok(d) = object.downcast::<PyDict>() {
        let entries = d.iter().map(|(k, v)| Ok((to_value(&k)?, to_value(&v)?))).collect::<PyResult<_>>()?;
        Ok(Value::Map(entries))
    } else {
        Err(PyTypeError::new_err(format!(
            "cannot store a {} in the DHT (use None, bool, int, float, str, bytes, list, tuple or dict)",
            object.get_type().name()?
        )))
    }
}

/// Converts a msgpack value to a Python object (ext 0x40 becomes a tuple, other ext types bytes).
pub(crate) fn to_python(py: Python<'_>, value: &Value) -> PyResult<PyObject> {
    Ok(match value {
        Value::Nil => py.None(),
        Value::Boolean(b) => b.into_pyobject(py)?.to_owned().into_any().unbind(),
        Value::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(v), _) => v.into_pyobject(py)?.into_any().unbind(),
            (None, Some(v)) => v.into_pyobject(py)?.into_any().unbind(),
            _ => py.None(),
        },
        Value::F32(f) => f64::from(*f).into_pyobject(py)?.into_any().unbind(),
        Value::F64(f) => f.into_pyobject(py)?.into_any().unbind(),
        Value::String(s) => match s.as_str() {
            Some(text) => text.into_pyobject(py)?.into_any().unbind(),
            None => PyBytes::new(py, s.as_bytes()).into_any().unbind(),
        },
        Value::Binary(b) => PyBytes::new(py, b).into_any().unbind(),
        Value::Array(items) => {
            PyList::new(py, items.iter().map(|v| to_python(py, v)).collect::<PyResult<Vec<_>>>()?)?.into_any().unbind()
        }
        Value::Map(entries) => {
            let dict = PyDict::new(py);
            for (k, v) in entries {
                dict.set_item(to_python(py, k)?, to_python(py, v)?)?;
            }
            dict.into_any().unbind()
        }
        Value::Ext(_, data) => match msgpack::as_tuple(value) {
            Some(items) => PyTuple::new(py, items.iter().map(|v| to_python(py, v)).collect::<PyResult<Vec<_>>>()?)?
                .into_any()
                .unbind(),
            None => PyBytes::new(py, data).into_any().unbind(),
        },
    })
}
