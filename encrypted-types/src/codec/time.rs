//! chrono dates and times, as fixed-width big-endian integers relative to the Unix epoch.
//!
//! - `NaiveDate`: i32 days since 1970-01-01 (4 bytes).
//! - `NaiveDateTime`: i64 seconds since 1970-01-01T00:00:00 then u32 nanoseconds (12 bytes);
//!   the nanoseconds are below 2 000 000 000 (values of 1e9 and above mark a leap second).
//! - `DateTime<Utc>`: the same 12 bytes for the UTC instant, under its own type tag.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use super::{Plaintext, SecretBuf, invalid};
use crate::Error;

const EPOCH: NaiveDate = NaiveDate::from_ymd_opt(1970, 1, 1).expect("1970-01-01 is a valid date");

fn encode_instant(dt: &NaiveDateTime, out: &mut SecretBuf) {
    let utc = dt.and_utc();
    out.extend_from_slice(&utc.timestamp().to_be_bytes());
    out.extend_from_slice(&utc.timestamp_subsec_nanos().to_be_bytes());
}

fn decode_instant<T: Plaintext>(bytes: &[u8]) -> Result<NaiveDateTime, Error> {
    let (secs, nanos) = bytes.split_first_chunk::<8>().ok_or_else(invalid::<T>)?;
    let nanos: [u8; 4] = nanos.try_into().map_err(|_| invalid::<T>())?;
    let (secs, nanos) = (i64::from_be_bytes(*secs), u32::from_be_bytes(nanos));
    if nanos >= 2_000_000_000 {
        return Err(invalid::<T>());
    }
    DateTime::from_timestamp(secs, nanos)
        .map(|d| d.naive_utc())
        .ok_or_else(invalid::<T>)
}

impl Plaintext for NaiveDate {
    const TYPE: &'static str = "date";

    fn encode(&self, out: &mut SecretBuf) -> Result<(), Error> {
        // Every NaiveDate lies within +-262143 years, so its day count fits in i32.
        let days = i32::try_from(self.signed_duration_since(EPOCH).num_days()).map_err(|_| {
            Error::Unencodable {
                type_name: Self::TYPE,
            }
        })?;
        out.extend_from_slice(&days.to_be_bytes());
        Ok(())
    }

    fn wipe(&mut self) {
        *self = EPOCH;
    }

    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let days = bytes
            .try_into()
            .map(i32::from_be_bytes)
            .map_err(|_| invalid::<Self>())?;
        EPOCH
            .checked_add_signed(chrono::TimeDelta::days(i64::from(days)))
            .ok_or_else(invalid::<Self>)
    }
}

impl Plaintext for NaiveDateTime {
    const TYPE: &'static str = "timestamp";

    fn encode(&self, out: &mut SecretBuf) -> Result<(), Error> {
        encode_instant(self, out);
        Ok(())
    }

    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        decode_instant::<Self>(bytes)
    }

    fn wipe(&mut self) {
        *self = NaiveDateTime::default();
    }
}

impl Plaintext for DateTime<Utc> {
    const TYPE: &'static str = "timestamptz";

    fn encode(&self, out: &mut SecretBuf) -> Result<(), Error> {
        encode_instant(&self.naive_utc(), out);
        Ok(())
    }

    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        decode_instant::<Self>(bytes).map(|n| n.and_utc())
    }

    fn wipe(&mut self) {
        *self = DateTime::default();
    }
}
