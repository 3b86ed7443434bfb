//! Parsing and validating the body of `POST /record`.
//!
//! Validation happens before anything is stored, so a refused record leaves
//! no trace. Error texts name the field and the rule it broke, because the
//! person reading them is usually typing a curl command.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::decimal::{Number, NumberError};

/// Longest metric name accepted, in bytes.
pub const MAX_METRIC_BYTES: usize = 256;
/// Largest metadata object accepted, in bytes as sent.
pub const MAX_METADATA_BYTES: usize = 4096;
/// Deepest nesting of metadata accepted; the object itself is level 1.
pub const MAX_METADATA_DEPTH: usize = 16;

/// A validated record, borrowing from the request body where it can.
#[derive(Debug)]
pub struct Record<'a> {
    /// The metric name.
    pub metric: Cow<'a, str>,
    /// The value to add; 1.0 when the record had none.
    pub value: Number,
    /// The metadata object as compact JSON text, when one was sent.
    pub metadata: Option<String>,
}

/// Why a record body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// The body is not JSON at all.
    NotJson(String),
    /// The body is JSON but not an object.
    NotObject,
    /// There is no `metric` field.
    MissingMetric,
    /// `metric` is not a string.
    MetricNotString,
    /// `metric` is an empty string.
    MetricEmpty,
    /// `metric` is longer than [`MAX_METRIC_BYTES`].
    MetricTooLong(usize),
    /// `metric` contains a control character.
    MetricControl,
    /// `value` is not a number.
    ValueNotNumber,
    /// `value` is too large to be finite.
    ValueNotFinite,
    /// `metadata` is neither an object nor null.
    MetadataNotObject,
    /// `metadata` is larger than [`MAX_METADATA_BYTES`].
    MetadataTooLarge(usize),
    /// `metadata` nests deeper than [`MAX_METADATA_DEPTH`].
    MetadataTooDeep,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use RecordError::*;
        match self {
            NotJson(why) => write!(f, "request body is not valid JSON: {why}"),
            NotObject => f.write_str(
                "request body must be a JSON object like \
                 {\"metric\": \"name\", \"value\": 1}",
            ),
            MissingMetric => f.write_str("field 'metric' is required"),
            MetricNotString => f.write_str("field 'metric' must be a string"),
            MetricEmpty => f.write_str("field 'metric' must not be empty"),
            MetricTooLong(n) => write!(
                f,
                "field 'metric' is {n} bytes long; \
                 the limit is {MAX_METRIC_BYTES}"
            ),
            MetricControl => f.write_str(
                "field 'metric' must not contain control characters",
            ),
            ValueNotNumber => f.write_str("field 'value' must be a number"),
            ValueNotFinite => {
                f.write_str("field 'value' must be a finite number")
            }
            MetadataNotObject => {
                f.write_str("field 'metadata' must be a JSON object or null")
            }
            MetadataTooLarge(n) => write!(
                f,
                "field 'metadata' is {n} bytes long; \
                 the limit is {MAX_METADATA_BYTES}"
            ),
            MetadataTooDeep => write!(
                f,
                "field 'metadata' is nested more than \
                 {MAX_METADATA_DEPTH} levels deep"
            ),
        }
    }
}

impl std::error::Error for RecordError {}

/// The body's shape before validation. Every field is kept as raw JSON so
/// that each rule can give its own message and numbers keep their digits.
#[derive(Deserialize)]
struct RawRecord<'a> {
    #[serde(borrow)]
    metric: Option<&'a RawValue>,
    #[serde(borrow)]
    value: Option<&'a RawValue>,
    #[serde(borrow)]
    metadata: Option<&'a RawValue>,
}

/// Parses and validates a record body.
pub fn parse(body: &[u8]) -> Result<Record<'_>, RecordError> {
    let raw: RawRecord = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            RecordError::NotObject
        } else {
            RecordError::NotJson(e.to_string())
        }
    })?;
    Ok(Record {
        metric: parse_metric(raw.metric)?,
        value: parse_value(raw.value)?,
        metadata: parse_metadata(raw.metadata)?,
    })
}

fn parse_metric(raw: Option<&RawValue>) -> Result<Cow<'_, str>, RecordError> {
    let text = raw.ok_or(RecordError::MissingMetric)?.get();
    let name = json_string(text).ok_or(RecordError::MetricNotString)?;
    if name.is_empty() {
        return Err(RecordError::MetricEmpty);
    }
    if name.len() > MAX_METRIC_BYTES {
        return Err(RecordError::MetricTooLong(name.len()));
    }
    if name.chars().any(char::is_control) {
        return Err(RecordError::MetricControl);
    }
    Ok(name)
}

/// Reads a JSON string, borrowing it when it holds no escapes.
fn json_string(text: &str) -> Option<Cow<'_, str>> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

fn parse_value(raw: Option<&RawValue>) -> Result<Number, RecordError> {
    let text = match raw.map(RawValue::get) {
        None | Some("null") => "1",
        Some(text) => text,
    };
    Number::parse(text).map_err(|e| match e {
        NumberError::Syntax => RecordError::ValueNotNumber,
        NumberError::NotFinite => RecordError::ValueNotFinite,
    })
}

fn parse_metadata(
    raw: Option<&RawValue>,
) -> Result<Option<String>, RecordError> {
    let text = match raw.map(RawValue::get) {
        None | Some("null") => return Ok(None),
        Some(text) => text,
    };
    if !text.starts_with('{') {
        return Err(RecordError::MetadataNotObject);
    }
    if text.len() > MAX_METADATA_BYTES {
        return Err(RecordError::MetadataTooLarge(text.len()));
    }
    compact(text).map(Some).ok_or(RecordError::MetadataTooDeep)
}

/// Drops insignificant white space from already-valid JSON and checks its
/// depth in the same pass. Returns `None` when it nests too deep.
fn compact(json: &str) -> Option<String> {
    let mut out = String::with_capacity(json.len());
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            ' ' | '\t' | '\n' | '\r' => continue,
            '"' => in_string = true,
            '{' | '[' => {
                depth += 1;
                if depth > MAX_METADATA_DEPTH {
                    return None;
                }
            }
            '}' | ']' => depth -= 1,
            _ => {}
        }
        out.push(c);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> RecordError {
        parse(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn a_full_record_is_parsed() {
        let body = br#"{"metric":"revenue","value":49.99,
            "metadata": {"plan": "pro", "tags": ["a b", "c\"d"]},"x":1}"#;
        let rec = parse(body).unwrap();
        assert_eq!(rec.metric, "revenue");
        assert_eq!(rec.value.to_string(), "49.99");
        assert_eq!(
            rec.metadata.as_deref(),
            Some(r#"{"plan":"pro","tags":["a b","c\"d"]}"#)
        );
    }

    #[test]
    fn value_defaults_to_one_and_null_metadata_is_none() {
        let rec = parse(br#"{"metric":"signup","metadata":null}"#).unwrap();
        assert_eq!(rec.value.to_string(), "1.0");
        assert_eq!(rec.metadata, None);
    }

    #[test]
    fn escaped_names_are_decoded() {
        let rec = parse(br#"{"metric":"caf\u00e9"}"#).unwrap();
        assert_eq!(rec.metric, "café");
    }

    #[test]
    fn each_rule_has_its_own_error() {
        assert!(matches!(err("{"), RecordError::NotJson(_)));
        assert_eq!(err("[1]"), RecordError::NotObject);
        assert_eq!(err("{}"), RecordError::MissingMetric);
        assert_eq!(err(r#"{"metric":5}"#), RecordError::MetricNotString);
        assert_eq!(err(r#"{"metric":""}"#), RecordError::MetricEmpty);
        let long = format!(r#"{{"metric":"{}"}}"#, "m".repeat(257));
        assert_eq!(err(&long), RecordError::MetricTooLong(257));
        assert_eq!(err(r#"{"metric":"a\nb"}"#), RecordError::MetricControl);
        let bad_value = r#"{"metric":"m","value":"5"}"#;
        assert_eq!(err(bad_value), RecordError::ValueNotNumber);
        let huge = r#"{"metric":"m","value":1e999}"#;
        assert_eq!(err(huge), RecordError::ValueNotFinite);
        let list = r#"{"metric":"m","metadata":[1]}"#;
        assert_eq!(err(list), RecordError::MetadataNotObject);
    }

    #[test]
    fn metadata_limits_are_enforced() {
        let big = format!(
            r#"{{"metric":"m","metadata":{{"k":"{}"}}}}"#,
            "x".repeat(4090)
        );
        assert!(matches!(err(&big), RecordError::MetadataTooLarge(4098)));
        let nest = |n: usize| {
            format!(
                r#"{{"metric":"m","metadata":{}1{}}}"#,
                r#"{"a":"#.repeat(n),
                "}".repeat(n)
            )
        };
        assert!(parse(nest(16).as_bytes()).is_ok());
        assert_eq!(err(&nest(17)), RecordError::MetadataTooDeep);
    }
}
