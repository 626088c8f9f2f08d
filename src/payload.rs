//! JSON values as Temporal payloads, encoded as temporalio's default data converter encodes them
//! (`json/plain`, and `binary/null` for null), so a typed parent in any SDK decodes them. For values that
//! arrive over the network as JSON; the Python face encodes with the worker's own converter instead.

use std::collections::HashMap;

use prost::Message;
use temporalio_common::protos::temporal::api::common::v1::{Payload, Payloads};

/// One value as a payload.
pub fn json_payload(value: &serde_json::Value) -> Payload {
    let (encoding, data) = match value {
        serde_json::Value::Null => (&b"binary/null"[..], Vec::new()),
        value => (&b"json/plain"[..], value.to_string().into_bytes()),
    };
    Payload { metadata: HashMap::from([("encoding".to_owned(), encoding.to_vec())]), data, ..Default::default() }
}

/// Values as encoded `temporal.api.common.v1.Payloads`.
pub fn json_payloads(values: &[serde_json::Value]) -> Vec<u8> {
    Payloads { payloads: values.iter().map(json_payload).collect() }.encode_to_vec()
}

/// A protobuf `Value` (of a `Struct` or `ListValue`) as JSON. A number that is not finite has no JSON
/// form: it becomes null, as protobuf's own JSON mapping refuses it.
pub fn value_json(value: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, |n| {
            // Whole numbers as integers, as Python's json and temporalio write them.
            match n.as_f64() {
                #[allow(clippy::cast_possible_truncation)] // whole and within 2^53: exact
                Some(f) if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 => serde_json::Value::from(f as i64),
                _ => serde_json::Value::Number(n),
            }
        }),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(list)) => serde_json::Value::Array(list.values.iter().map(value_json).collect()),
        Some(Kind::StructValue(fields)) => struct_json(fields),
    }
}

pub fn struct_json(fields: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(fields.fields.iter().map(|(k, v)| (k.clone(), value_json(v))).collect())
}

/// Encoded payloads as JSON values where they are JSON (or null); others are shown as
/// `{"encoding": ..., "size": n}`, never their bytes (they may be encrypted, or the converter's own).
pub fn payloads_json(bytes: &[u8]) -> Vec<serde_json::Value> {
    let Ok(payloads) = Payloads::decode(bytes) else { return Vec::new() };
    payloads
        .payloads
        .iter()
        .map(|p| {
            let encoding =
                p.metadata.get("encoding").map(|e| String::from_utf8_lossy(e).into_owned()).unwrap_or_default();
            match encoding.as_str() {
                "binary/null" => serde_json::Value::Null,
                "json/plain" => serde_json::from_slice(&p.data)
                    .unwrap_or_else(|_| serde_json::json!({"encoding": encoding, "size": p.data.len()})),
                _ => serde_json::json!({"encoding": encoding, "size": p.data.len()}),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_encode_as_temporalio_default_converter_and_read_back() {
        let bytes = json_payloads(&[serde_json::json!({"b": 1, "a": [true]}), serde_json::Value::Null]);
        let payloads = Payloads::decode(bytes.as_slice()).unwrap();
        assert_eq!(payloads.payloads[0].metadata["encoding"], b"json/plain");
        assert_eq!(payloads.payloads[0].data, br#"{"a":[true],"b":1}"#);
        assert_eq!(payloads.payloads[1].metadata["encoding"], b"binary/null");
        assert!(payloads.payloads[1].data.is_empty());
        assert_eq!(payloads_json(&bytes), vec![serde_json::json!({"a": [true], "b": 1}), serde_json::Value::Null]);
        let other = Payload {
            metadata: HashMap::from([("encoding".to_owned(), b"binary/encrypted".to_vec())]),
            data: vec![1, 2, 3],
            ..Default::default()
        };
        let other = Payloads { payloads: vec![other] }.encode_to_vec();
        assert_eq!(payloads_json(&other), vec![serde_json::json!({"encoding": "binary/encrypted", "size": 3})]);
    }

    #[test]
    fn protobuf_values_read_as_json() {
        use prost_types::value::Kind;
        let v = |kind| prost_types::Value { kind: Some(kind) };
        let fields = prost_types::Struct {
            fields: [
                ("n".to_owned(), v(Kind::NumberValue(3.0))),
                ("f".to_owned(), v(Kind::NumberValue(0.5))),
                ("inf".to_owned(), v(Kind::NumberValue(f64::INFINITY))),
                ("l".to_owned(), v(Kind::ListValue(prost_types::ListValue { values: vec![v(Kind::BoolValue(true))] }))),
                ("s".to_owned(), v(Kind::StringValue("x".into()))),
            ]
            .into(),
        };
        assert_eq!(struct_json(&fields), serde_json::json!({"n": 3, "f": 0.5, "inf": null, "l": [true], "s": "x"}));
    }
}
