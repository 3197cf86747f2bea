//! JSON values: serde_json's compact serialization, under the type tag `json`.
//!
//! `serde_json::Value` keeps object keys sorted (serde_json's default `BTreeMap`), so equal
//! values encode to equal bytes. [`Json<T>`] shares the tag, so a column written as `Value`
//! can be read as `Json<MyStruct>` and back.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Plaintext, SecretBuf, invalid};
use crate::Error;

const TAG: &str = "json";

fn encode_json<T: Serialize + ?Sized>(value: &T, out: &mut SecretBuf) -> Result<(), Error> {
    serde_json::to_writer(out, value).map_err(|_| Error::Unencodable { type_name: TAG })
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
        serde_json::from_slice(bytes)
            .map(Json)
            .map_err(|_| invalid::<Self>())
    }
}
