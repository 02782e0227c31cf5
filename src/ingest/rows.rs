//! Reading rows out of a request body: a JSON array of objects (or one object), or NDJSON (one
//! object per line). Each row goes to a sink as soon as it is read, so no tree of the whole
//! body is built; field names and string values stay borrowed from the body unless they had
//! to be unescaped.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::batch::{BatchError, Layout};
use crate::catalog::param::RawValue;

/// Where rows go as they are read; a refusal stops the reading.
pub(super) trait RowSink<'de> {
    fn take(&mut self, row: Row<'de>) -> Result<(), BatchError>;
}

/// Reads every row of `body` into `sink`.
pub(super) fn read<'de>(layout: Layout, body: &'de [u8], sink: &mut impl RowSink<'de>) -> Result<(), BatchError> {
    match layout {
        Layout::Json => read_json(body, sink),
        Layout::NdJson => read_ndjson(body, sink),
    }
}

/// A JSON array of rows, or one row.
fn read_json<'de>(body: &'de [u8], sink: &mut impl RowSink<'de>) -> Result<(), BatchError> {
    let mut reader = serde_json::Deserializer::from_slice(body);
    let mut stopped = None;
    let read = serde::Deserializer::deserialize_any(
        &mut reader,
        Rows {
            sink,
            stopped: &mut stopped,
        },
    )
    .and_then(|()| reader.end());
    read.map_err(|error| stopped.unwrap_or_else(|| BatchError::NotJson(format!("valid JSON ({error})"))))
}

/// One row per line; blank lines are skipped.
fn read_ndjson<'de>(body: &'de [u8], sink: &mut impl RowSink<'de>) -> Result<(), BatchError> {
    for (number, line) in body.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut reader = serde_json::Deserializer::from_slice(line);
        let row = Row::deserialize(&mut reader)
            .and_then(|row| reader.end().map(|()| row))
            .map_err(|error| BatchError::NotJson(format!("NDJSON: line {} is not JSON ({error})", number + 1)))?;
        sink.take(row)?;
    }
    Ok(())
}

/// One row as read: its fields in the order sent, names borrowed from the body where they
/// have no escapes.
pub(super) enum Row<'de> {
    Object(Vec<(Cow<'de, str>, FieldValue<'de>)>),
    /// Anything but an object (an array, a string, a number, true/false, null).
    NotObject,
}

impl<'de> Deserialize<'de> for Row<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RowVisitor)
    }
}

struct RowVisitor;

impl<'de> Visitor<'de> for RowVisitor {
    type Value = Row<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Row<'de>, A::Error> {
        fields_of(map).map(Row::Object)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Row<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Row::NotObject)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Row<'de>, E> {
        Ok(Row::NotObject)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Row<'de>, E> {
        Ok(Row::NotObject)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Row<'de>, E> {
        Ok(Row::NotObject)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Row<'de>, E> {
        Ok(Row::NotObject)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Row<'de>, E> {
        Ok(Row::NotObject)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Row<'de>, E> {
        Ok(Row::NotObject)
    }
}

fn fields_of<'de, A: MapAccess<'de>>(mut map: A) -> Result<Vec<(Cow<'de, str>, FieldValue<'de>)>, A::Error> {
    let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(16));
    while let Some(FieldName(name)) = map.next_key()? {
        fields.push((name, map.next_value()?));
    }
    Ok(fields)
}

/// A field's value. Strings, the text form of most types, stay borrowed from the body unless
/// they had to be unescaped; anything else becomes a JSON value.
pub(super) enum FieldValue<'de> {
    String(Cow<'de, str>),
    Other(Value),
}

impl FieldValue<'_> {
    pub(super) fn as_raw(&self) -> RawValue<'_> {
        match self {
            FieldValue::String(text) => RawValue::JsonString(text),
            FieldValue::Other(value) => RawValue::Json(value),
        }
    }

    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::String(text) => Some(text),
            FieldValue::Other(_) => None,
        }
    }

    /// As JSON text, for messages.
    pub(super) fn to_json(&self) -> String {
        match self {
            FieldValue::String(text) => Value::from(text.as_ref()).to_string(),
            FieldValue::Other(value) => value.to_string(),
        }
    }
}

impl<'de> Deserialize<'de> for FieldValue<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = FieldValue<'de>;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a JSON value")
            }

            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<FieldValue<'de>, E> {
                Ok(FieldValue::String(Cow::Borrowed(text)))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<FieldValue<'de>, E> {
                Ok(FieldValue::String(Cow::Owned(text.to_owned())))
            }

            fn visit_bool<E: de::Error>(self, flag: bool) -> Result<FieldValue<'de>, E> {
                Ok(FieldValue::Other(Value::Bool(flag)))
            }

            fn visit_i64<E: de::Error>(self, number: i64) -> Result<FieldValue<'de>, E> {
                Ok(FieldValue::Other(Value::from(number)))
            }

            fn visit_u64<E: de::Error>(self, number: u64) -> Result<FieldValue<'de>, E> {
                Ok(FieldValue::Other(Value::from(number)))
            }

            fn visit_f64<E: de::Error>(self, number: f64) -> Result<FieldValue<'de>, E> {
                Ok(FieldValue::Other(Value::from(number)))
            }

            fn visit_unit<E: de::Error>(self) -> Result<FieldValue<'de>, E> {
                Ok(FieldValue::Other(Value::Null))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<FieldValue<'de>, A::Error> {
                Value::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(FieldValue::Other)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FieldValue<'de>, A::Error> {
                Value::deserialize(de::value::MapAccessDeserializer::new(map)).map(FieldValue::Other)
            }
        }
        deserializer.deserialize_any(ValueVisitor)
    }
}

/// A field's name, borrowed unless it had to be unescaped.
struct FieldName<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for FieldName<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = FieldName<'de>;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a field name")
            }

            fn visit_borrowed_str<E: de::Error>(self, name: &'de str) -> Result<FieldName<'de>, E> {
                Ok(FieldName(Cow::Borrowed(name)))
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<FieldName<'de>, E> {
                Ok(FieldName(Cow::Owned(name.to_owned())))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

/// The top of a JSON body: an array of rows, each handed on as soon as it is read, or one
/// row. Why the sink stopped the reading is kept in `stopped`.
struct Rows<'s, S> {
    sink: &'s mut S,
    stopped: &'s mut Option<BatchError>,
}

impl<S> Rows<'_, S> {
    fn stop<E: de::Error>(self, why: BatchError) -> E {
        *self.stopped = Some(why);
        E::custom("stopped")
    }

    fn not_rows<E: de::Error>(self) -> E {
        self.stop(BatchError::NotJson("a JSON array of objects".into()))
    }
}

impl<'de, S: RowSink<'de>> Visitor<'de> for Rows<'_, S> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON array of objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(row) = seq.next_element::<Row<'de>>()? {
            if let Err(why) = self.sink.take(row) {
                return Err(self.stop(why));
            }
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let row = Row::Object(fields_of(map)?);
        match self.sink.take(row) {
            Ok(()) => Ok(()),
            Err(why) => Err(self.stop(why)),
        }
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.not_rows())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(self.not_rows())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(self.not_rows())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(self.not_rows())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(self.not_rows())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.not_rows())
    }
}
