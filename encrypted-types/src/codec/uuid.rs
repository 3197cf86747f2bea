//! `uuid::Uuid`: its 16 bytes in RFC 9562 order.

use super::{Plaintext, SecretBuf, invalid};
use crate::Error;

impl Plaintext for uuid::Uuid {
    const TYPE: &'static str = "uuid";

    fn encode(&self, out: &mut SecretBuf) -> Result<(), Error> {
        out.extend_from_slice(self.as_bytes());
        Ok(())
    }

    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        uuid::Uuid::from_slice(bytes).map_err(|_| invalid::<Self>())
    }

    fn wipe(&mut self) {
        *self = uuid::Uuid::nil();
    }
}
