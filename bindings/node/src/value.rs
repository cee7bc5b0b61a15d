//! JavaScript values <-> msgpack values. Numbers that are whole and within +/-2^53 become msgpack
//! integers, other numbers float64; `Buffer` is binary; arrays and plain objects nest. Tuples
//! (ext type 0x40) come back as arrays.

use kwaai_core::wire::msgpack;
use napi::{Env, JsBuffer, JsObject, JsUnknown, ValueType};
use rmpv::Value;

const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// Converts a JavaScript value; unsupported types (functions, symbols, bigint) are a `TypeError`.
pub(crate) fn to_value(value: JsUnknown) -> napi::Result<Value> {
    Ok(match value.get_type()? {
        ValueType::Null | ValueType::Undefined => Value::Nil,
        ValueType::Boolean => Value::Boolean(value.coerce_to_bool()?.get_value()?),
        ValueType::Number => {
            let n = value.coerce_to_number()?.get_double()?;
            if n.fract() == 0.0 && n.abs() <= MAX_SAFE_INTEGER {
                Value::from(n as i64)
            } else {
                Value::F64(n)
            }
        }
        ValueType::String => Value::from(value.coerce_to_string()?.into_utf8()?.as_str()?.to_owned()),
        ValueType::Object if value.is_buffer()? => {
            // SAFETY: checked to be a Buffer just above.
            let buffer = unsafe { value.cast::<JsBuffer>() }.into_value()?;
            Value::Binary(buffer.to_vec())
        }
        ValueType::Object if value.is_array()? => {
            // SAFETY: checked to be an array just above.
            let array = unsafe { value.cast::<JsObject>() };
            let len = array.get_array_length()?;
            Value::Array((0..len).map(|i| to_value(array.get_element::<JsUnknown>(i)?)).collect::<napi::Result<_>>()?)
        }
        ValueType::Object => {
            // SAFETY: its type is Object.
            let object = unsafe { value.cast::<JsObject>() };
            let names = object.get_property_names()?;
            let mut entries = Vec::new();
            for i in 0..names.get_array_length()? {
                let name = names.get_element::<JsUnknown>(i)?.coerce_to_string()?.into_utf8()?.as_str()?.to_owned();
                let item = object.get_named_property::<JsUnknown>(&name)?;
                entries.push((Value::from(name), to_value(item)?));
            }
            Value::Map(entries)
        }
        other => {
            return Err(napi::Error::new(napi::Status::InvalidArg, format!("cannot store a {other} in the DHT")));
        }
    })
}

/// Converts a msgpack value to JavaScript.
pub(crate) fn to_js(env: &Env, value: &Value) -> napi::Result<JsUnknown> {
    Ok(match value {
        Value::Nil => env.get_null()?.into_unknown(),
        Value::Boolean(b) => env.get_boolean(*b)?.into_unknown(),
        Value::Integer(i) => env.create_double(i.as_f64().unwrap_or(f64::NAN))?.into_unknown(),
        Value::F32(f) => env.create_double(f64::from(*f))?.into_unknown(),
        Value::F64(f) => env.create_double(*f)?.into_unknown(),
        Value::String(s) => match s.as_str() {
            Some(text) => env.create_string(text)?.into_unknown(),
            None => env.create_buffer_with_data(s.as_bytes().to_vec())?.into_unknown(),
        },
        Value::Binary(b) => env.create_buffer_with_data(b.clone())?.into_unknown(),
        Value::Array(items) => array(env, items)?,
        Value::Map(entries) => {
            let mut object = env.create_object()?;
            for (k, v) in entries {
                let name = match k {
                    Value::String(s) => s.as_str().unwrap_or_default().to_owned(),
                    other => other.to_string(),
                };
                object.set_named_property(&name, to_js(env, v)?)?;
            }
            object.into_unknown()
        }
        Value::Ext(_, data) => match msgpack::as_tuple(value) {
            Some(items) => array(env, &items)?,
            None => env.create_buffer_with_data(data.clone())?.into_unknown(),
        },
    })
}

fn array(env: &Env, items: &[Value]) -> napi::Result<JsUnknown> {
    let mut array = env.create_array_with_length(items.len())?;
    for (i, item) in items.iter().enumerate() {
        array.set_element(i as u32, to_js(env, item)?)?;
    }
    Ok(array.into_unknown())
}
