//! `google.protobuf.Value` ⇄ `serde_json::Value`, so grpcurl users write plain
//! JSON and the database stores plain JSON.

use prost_types::{ListValue, Struct, Value as PbValue, value::Kind};
use serde_json::{Map, Number, Value};

use crate::domain::limits::MAX_VALUE_DEPTH;

/// Converts a protobuf value to JSON. Fails on NaN or infinite numbers (JSON
/// has none), on a missing kind, and past the depth limit.
pub fn to_json(value: &PbValue) -> Result<Value, String> {
    convert(value, 1)
}

fn convert(value: &PbValue, depth: usize) -> Result<Value, String> {
    if depth > MAX_VALUE_DEPTH {
        return Err(format!("is nested more than {MAX_VALUE_DEPTH} deep"));
    }
    Ok(match &value.kind {
        None => return Err("has no kind set (use null_value for null)".into()),
        Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::NumberValue(n)) => {
            number(*n).ok_or_else(|| format!("contains {n}, which JSON cannot hold"))?
        }
        Some(Kind::ListValue(list)) => {
            Value::Array(list.values.iter().map(|v| convert(v, depth + 1)).collect::<Result<_, _>>()?)
        }
        Some(Kind::StructValue(s)) => Value::Object(
            s.fields
                .iter()
                .map(|(k, v)| Ok((k.clone(), convert(v, depth + 1)?)))
                .collect::<Result<Map<_, _>, String>>()?,
        ),
    })
}

/// Whole numbers stay integers, so `session_count: 3` round-trips as 3, not 3.0.
fn number(n: f64) -> Option<Value> {
    if !n.is_finite() {
        return None;
    }
    if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        return Some(Value::Number(Number::from(n as i64)));
    }
    Number::from_f64(n).map(Value::Number)
}

/// Converts JSON to a protobuf value.
pub fn from_json(value: &Value) -> PbValue {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(ListValue { values: items.iter().map(from_json).collect() }),
        Value::Object(map) => {
            Kind::StructValue(Struct { fields: map.iter().map(|(k, v)| (k.clone(), from_json(v))).collect() })
        }
    };
    PbValue { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_round_trips_through_protobuf_values() {
        let value = json!({"a": [1, 2.5, "x", null, true], "b": {"c": -7}});
        assert_eq!(to_json(&from_json(&value)), Ok(value));
    }

    #[test]
    fn non_finite_numbers_and_missing_kinds_are_rejected() {
        assert!(to_json(&PbValue { kind: Some(Kind::NumberValue(f64::NAN)) }).is_err());
        assert!(to_json(&PbValue { kind: None }).is_err());
    }
}
