//! The fields of one row under one nonce (ADR 0004, "One nonce per row"; FORMAT.md §3.1).
//!
//! GCM-SIV derives a message-encryption key and a POLYVAL key from each nonce (RFC 8452 §4).
//! Under one nonce it is a deterministic AEAD keyed by those: values whose AAD differ reveal
//! nothing about each other, and the fields of a row always differ in their AAD (each names its
//! own context column: the derive refuses two fields with one, and [`RowSeal`] a second value
//! of a column it has sealed). So a row
//! write draws one nonce, derives its state once and seals every field under it; a row read
//! derives it once for all the fields that repeat the key id and nonce. The bytes are exactly
//! those of a value sealed alone with that nonce: old rows, the vectors and outside readers are
//! unchanged.

use super::{
    Context, DataKey, Error, Plaintext, RowBinding, aead_open, nonce, open_framed, seal_framed,
    suite_of,
};

#[cfg(feature = "aws-lc")]
type State = super::awslc::AtNonce;
#[cfg(not(feature = "aws-lc"))]
type State = super::siv::AtNonce;

/// The columns a row write tracks inline; more go to a vector.
const ROW_COLUMNS: usize = 16;

/// Whether `suite` is one of GCM-SIV's (2 to 5), whose per-nonce state a row can share.
const fn is_siv(suite: u8) -> bool {
    matches!(
        suite,
        super::SUITE_AES256GCMSIV..=super::SUITE_AES256GCMSIV_ROW_SCHEMA
    )
}

/// One row write: every field sealed under one fresh nonce and one derived state.
///
/// The rule it relies on: no two values sealed under one nonce share their AAD. Each value
/// names its own column in its [`Context`]; a second value of a column already sealed in this
/// row is refused (`#[derive(Encrypted)]` refuses two fields with one context column at
/// compile time). What a shared nonce shows a reader of the table:
/// which fields were written together, and (by a nonce that differs) which were later updated
/// alone. The per-key limit on random nonces counts row writes, not values.
///
/// ```
/// use encrypted_types::format::{self, Context, RowSeal, RowOpen};
/// use encrypted_types::{KeyMaterial, Keyring};
/// let keyring = Keyring::builder().data_key(1, None, KeyMaterial::generate()?).primary(None, 1).build()?;
/// let key = keyring.primary_key(None)?;
/// let (name, email) = (
///     Context::new("patients", "name", None, "string"),
///     Context::new("patients", "email", None, "string"),
/// );
/// let mut row = RowSeal::new(key)?;
/// let a = row.seal(&name, None, &"Ann".to_owned())?;
/// let b = row.seal(&email, None, &"ann@example.org".to_owned())?;
/// assert_eq!(a[6..18], b[6..18]); // one nonce
/// // Each opens alone, and only in its own column.
/// assert_eq!(format::open::<String>(key, &name, a.clone())?, "Ann");
/// assert!(format::open::<String>(key, &email, a.clone()).is_err());
/// // A row read derives the state once for both.
/// let mut open = RowOpen::new();
/// assert_eq!(open.open::<String>(key, &email, None, b)?, "ann@example.org");
/// assert_eq!(open.open::<String>(key, &name, None, a)?, "Ann");
/// # Ok::<(), encrypted_types::Error>(())
/// ```
pub struct RowSeal<'k> {
    key: &'k DataKey,
    /// The columns sealed so far: a second value of one column in one row would share its AAD
    /// with the first, and is refused. A row's first few fit without an allocation.
    columns: [&'k str; ROW_COLUMNS],
    sealed: usize,
    more: Vec<&'k str>,
    /// Boxed: the state is over a kilobyte (an expanded AES key), and a row's seal is moved
    /// through a few results before its first field.
    state: Box<State>,
}

impl<'k> RowSeal<'k> {
    /// A row write under `key` with a fresh random nonce.
    ///
    /// # Errors
    /// [`Error::Rng`] when the system's random source fails.
    pub fn new(key: &'k DataKey) -> Result<Self, Error> {
        Ok(Self::at(key, nonce::generate()?))
    }

    /// A row write under a caller-chosen nonce: known-answer tests only, behind the
    /// `test-vectors` feature. A nonce must never repeat under one key.
    #[cfg(feature = "test-vectors")]
    pub fn with_nonce(key: &'k DataKey, nonce: [u8; 12]) -> Self {
        Self::at(key, nonce)
    }

    fn at(key: &'k DataKey, nonce: [u8; 12]) -> Self {
        Self {
            key,
            columns: [""; ROW_COLUMNS],
            sealed: 0,
            more: Vec::new(),
            state: Box::new(key.siv().at_nonce(&nonce)),
        }
    }

    /// The key every field is sealed under.
    pub fn key(&self) -> &'k DataKey {
        self.key
    }

    /// Seals one field in the suite of its context (2, or 3 with `row`, 4 and 5 with a schema).
    /// `ctx.tenant` must be the key's tenant.
    ///
    /// # Errors
    /// As [`super::seal`] and [`super::seal_bound`]; [`Error::RowColumnRepeated`] for a second
    /// value of a column already sealed in this row.
    pub fn seal<T: Plaintext>(
        &mut self,
        ctx: &Context<'k>,
        row: Option<&RowBinding>,
        value: &T,
    ) -> Result<Vec<u8>, Error> {
        let seen = self.columns.get(..self.sealed).unwrap_or_default();
        if seen.contains(&ctx.column) || self.more.contains(&ctx.column) {
            return Err(Error::RowColumnRepeated);
        }
        match self.columns.get_mut(self.sealed) {
            Some(slot) => {
                *slot = ctx.column;
                self.sealed += 1;
            }
            None => self.more.push(ctx.column),
        }
        let suite = suite_of(row.is_some(), ctx.schema.is_some());
        let nonce = *self.state.nonce();
        let state = &mut self.state;
        seal_framed(self.key.id, ctx, row, value, suite, &nonce, |aad, body| {
            let len = body.len();
            state.seal(aad, body).map_err(|_| Error::TooLarge(len))
        })
    }
}

impl std::fmt::Debug for RowSeal<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowSeal")
            .field("key", &self.key.id)
            .finish_non_exhaustive()
    }
}

/// One row read: the per-nonce state is derived once while key id and nonce repeat from one
/// field to the next (a row written whole), and again when they change (a field updated
/// alone, or a row written before rows shared a nonce).
pub struct RowOpen<'k> {
    /// The key the state was derived under (compared by identity: ids are unique within one
    /// keyring only) and the state, boxed as in [`RowSeal`].
    last: Option<(&'k DataKey, Box<State>)>,
}

impl<'k> RowOpen<'k> {
    /// A row read with no state yet.
    pub fn new() -> Self {
        Self { last: None }
    }

    /// Opens one field as [`super::open`] (or [`super::open_bound`] with `row`) does.
    ///
    /// # Errors
    /// As [`super::open`] and [`super::open_bound`].
    pub fn open<T: Plaintext>(
        &mut self,
        key: &'k DataKey,
        ctx: &Context<'_>,
        row: Option<&RowBinding>,
        sealed: Vec<u8>,
    ) -> Result<T, Error> {
        open_framed(ctx, row, sealed, |suite, nonce, aad, body, tag| {
            if !is_siv(suite) {
                return aead_open(key, suite, nonce, aad, body, tag);
            }
            let same =
                matches!(&self.last, Some((k, s)) if std::ptr::eq(*k, key) && s.nonce() == nonce);
            if !same {
                self.last = Some((key, Box::new(key.siv().at_nonce(nonce))));
            }
            match &mut self.last {
                Some((_, state)) => state
                    .open(aad, body, tag)
                    .map_err(|_| Error::AuthenticationFailed),
                None => Err(Error::AuthenticationFailed),
            }
        })
    }
}

impl Default for RowOpen<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for RowOpen<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowOpen").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::format::{open, open_bound};
    use crate::{KeyId, KeyMaterial};
    use crate::{RowPart, TenantId};

    fn key(id: u32, tenant: Option<&str>) -> DataKey {
        DataKey::new(
            KeyId::from(id),
            tenant.map(TenantId::from),
            &KeyMaterial::from_bytes([id as u8; 32]),
        )
    }

    /// A row's fields share the nonce, each opens alone and in a row read, and none opens in
    /// another column, another tenant's context or (bound) another row.
    #[test]
    fn a_rows_fields_share_a_nonce_and_stay_apart() {
        let k = key(7, Some("a"));
        let t = TenantId::from("a");
        let cols = ["name", "email", "ssn", "notes"];
        let ctxs: Vec<Context<'_>> = cols
            .iter()
            .map(|c| Context::new("patients", c, Some(&t), "string"))
            .collect();
        let row_7 = RowBinding::new(&[RowPart::Int(7)]).unwrap();
        let row_8 = RowBinding::new(&[RowPart::Int(8)]).unwrap();
        for bound in [None, Some(&row_7)] {
            let mut w = RowSeal::new(&k).unwrap();
            let sealed: Vec<Vec<u8>> = ctxs
                .iter()
                .zip(cols)
                .map(|(c, v)| w.seal(c, bound, &v.to_owned()).unwrap())
                .collect();
            for s in &sealed[1..] {
                assert_eq!(s[6..18], sealed[0][6..18]);
            }
            let mut r = RowOpen::new();
            for ((s, c), v) in sealed.iter().zip(&ctxs).zip(cols) {
                // Alone, and through the shared state.
                let alone: String = match bound {
                    None => open(&k, c, s.clone()).unwrap(),
                    Some(b) => open_bound(&k, c, b, s.clone()).unwrap(),
                };
                assert_eq!(alone, v);
                assert_eq!(r.open::<String>(&k, c, bound, s.clone()).unwrap(), v);
                // Moved to every other column: refused, by the shared state too.
                for other in ctxs.iter().filter(|o| o.column != c.column) {
                    assert_eq!(
                        r.open::<String>(&k, other, bound, s.clone()).err(),
                        Some(Error::AuthenticationFailed)
                    );
                }
                if bound.is_some() {
                    assert_eq!(
                        r.open::<String>(&k, c, Some(&row_8), s.clone()).err(),
                        Some(Error::AuthenticationFailed)
                    );
                }
            }
        }
    }

    /// A second value of one column in one row would share the first one's AAD and nonce:
    /// refused, whatever the value.
    #[test]
    fn a_column_sealed_twice_in_one_row_is_refused() {
        let k = key(3, None);
        let (a, b) = (
            Context::new("t", "a", None, "string"),
            Context::new("t", "b", None, "string"),
        );
        let mut w = RowSeal::new(&k).unwrap();
        w.seal(&a, None, &"1".to_owned()).unwrap();
        w.seal(&b, None, &"2".to_owned()).unwrap();
        assert_eq!(
            w.seal(&a, None, &"3".to_owned()).err(),
            Some(Error::RowColumnRepeated)
        );
        // Past the columns tracked inline too.
        let names: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
        let mut w = RowSeal::new(&k).unwrap();
        for n in &names {
            w.seal(&Context::new("t", n, None, "string"), None, &"v".to_owned())
                .unwrap();
        }
        for n in [&names[3], &names[30]] {
            assert_eq!(
                w.seal(&Context::new("t", n, None, "string"), None, &"v".to_owned())
                    .err(),
                Some(Error::RowColumnRepeated)
            );
        }
    }

    /// The bytes are RFC 8452's: a field sealed in a row equals the same value sealed alone
    /// with that nonce, and values of rows with other nonces open through one `RowOpen`.
    #[cfg(feature = "test-vectors")]
    #[test]
    fn a_row_field_is_the_value_sealed_alone_with_its_nonce() {
        let k = key(9, None);
        let ctx = Context::new("t", "c", None, "string");
        let v = "a value of a few words".to_owned();
        for n in 0..4u8 {
            let nonce = [n; 12];
            let in_row = RowSeal::with_nonce(&k, nonce).seal(&ctx, None, &v).unwrap();
            let alone =
                crate::format::seal_with_suite(&k, &ctx, &v, crate::format::SUITE, nonce).unwrap();
            assert_eq!(in_row, alone);
        }
    }

    /// A row read that meets another nonce or another key derives again and still opens; a
    /// suite-1 value opens through the same reader.
    #[test]
    fn a_row_read_follows_nonce_and_key_changes() {
        let (k1, k2) = (key(1, None), key(2, None));
        let ctx = Context::new("t", "c", None, "string");
        let values: Vec<(&DataKey, Vec<u8>)> = (0..6)
            .map(|i| {
                let k = if i % 3 == 0 { &k2 } else { &k1 };
                (k, crate::format::seal(k, &ctx, &format!("v{i}")).unwrap())
            })
            .collect();
        let mut r = RowOpen::new();
        for (i, (k, s)) in values.into_iter().enumerate() {
            assert_eq!(r.open::<String>(k, &ctx, None, s).unwrap(), format!("v{i}"));
        }
        // A tampered value fails and does not poison the state for the next.
        let mut w = RowSeal::new(&k1).unwrap();
        let good = w.seal(&ctx, None, &"x".to_owned()).unwrap();
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(
            r.open::<String>(&k1, &ctx, None, bad).err(),
            Some(Error::AuthenticationFailed)
        );
        assert_eq!(r.open::<String>(&k1, &ctx, None, good).unwrap(), "x");
    }
}
