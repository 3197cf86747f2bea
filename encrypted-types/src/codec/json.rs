//! JSON values: serde_json's compact serialization, under the type tag `json`.
//!
//! `serde_json::Value` keeps object keys sorted (serde_json's default `BTreeMap`). [`Json<T>`]
//! shares the tag, so a column written as `Value` can be read as `Json<MyStruct>` and back.
//! Opening accepts the JSON texts `docs/FORMAT.md` §3.1 allows, and no other: a duplicate
//! object key is refused, not resolved (serde_json alone would keep the last).

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Plaintext, SecretBuf, invalid};
use crate::Error;

const TAG: &str = "json";

fn encode_json<T: Serialize + ?Sized>(value: &T, out: &mut SecretBuf) -> Result<(), Error> {
    serde_json::to_writer(out, value).map_err(|_| Error::Unencodable { type_name: TAG })
}

/// Refuses what serde_json would accept but §3.1 does not: duplicate object keys. Every
/// other rule (UTF-8, no lone surrogate, finite numbers, nesting depth, nothing after the
/// value) is serde_json's own, checked by this same pass.
fn check(bytes: &[u8]) -> Result<(), serde_json::Error> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    Strict.deserialize(&mut de)?;
    de.end()
}

/// A visitor that walks a JSON text, keeping nothing but the keys of the object it is in
/// (wiped as they go).
#[derive(Clone, Copy)]
struct Strict;

impl<'de> serde::de::DeserializeSeed<'de> for Strict {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Strict {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys: Vec<zeroize::Zeroizing<String>> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            keys.push(zeroize::Zeroizing::new(key));
            map.next_value_seed(self)?;
        }
        keys.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        if keys
            .windows(2)
            .any(|w| matches!(w, [a, b] if a.as_str() == b.as_str()))
        {
            return Err(serde::de::Error::custom("duplicate object key"));
        }
        Ok(())
    }
}

impl Plaintext for serde_json::Value {
    const TYPE: &'static str = TAG;

    fn encode(&self, out: &mut SecretBuf) -> Result<(), Error> {
        encode_json(self, out)
    }

    fn encoded_len_hint(&self) -> usize {
        64
    }

    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        check(bytes).map_err(|_| invalid::<Self>())?;
        serde_json::from_slice(bytes).map_err(|_| invalid::<Self>())
    }

    fn wipe(&mut self) {
        wipe_value(self);
    }
}

/// Overwrites every string a JSON value owns, object keys included.
fn wipe_value(v: &mut serde_json::Value) {
    use serde_json::Value;
    use zeroize::Zeroize;
    match std::mem::take(v) {
        Value::String(mut s) => s.zeroize(),
        Value::Array(mut items) => items.iter_mut().for_each(wipe_value),
        Value::Object(map) => {
            for (mut key, mut value) in map {
                key.zeroize();
                wipe_value(&mut value);
            }
        }
        Value::Number(_) | Value::Bool(_) | Value::Null => {}
    }
}

/// Any serde type, sealed as JSON.
///
/// `Json<T>` cannot wipe an arbitrary `T` when it is dropped; seal a `serde_json::Value`
/// (wiped on drop) or types that wipe themselves if that matters.
///
/// ```
/// use encrypted_types::{Json, Plaintext, SecretBuf};
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct Allergy { substance: String, severe: bool }
///
/// let mut buf = SecretBuf::default();
/// Json(Allergy { substance: "penicillin".into(), severe: true }).encode(&mut buf).unwrap();
/// assert_eq!(buf.as_slice(), br#"{"substance":"penicillin","severe":true}"#);
/// let back = Json::<Allergy>::decode(buf.as_slice()).unwrap();
/// assert!(back.0.severe);
/// ```
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Json<T>(pub T);

impl<T> fmt::Debug for Json<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Json(<redacted>)")
    }
}

impl<T: Serialize + DeserializeOwned> Plaintext for Json<T> {
    const TYPE: &'static str = TAG;

    fn encode(&self, out: &mut SecretBuf) -> Result<(), Error> {
        encode_json(&self.0, out)
    }

    fn encoded_len_hint(&self) -> usize {
        64
    }

    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        check(bytes).map_err(|_| invalid::<Self>())?;
        serde_json::from_slice(bytes)
            .map(Json)
            .map_err(|_| invalid::<Self>())
    }
}
