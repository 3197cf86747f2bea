//! Key-encryption keys (KEKs): the keys that wrap data keys, held by a KMS, an HSM or (for
//! development) a local file.
//!
//! Data keys and blind-index root keys are stored only wrapped, in the key table
//! ([`crate::store`]). A [`KekProvider`] wraps a fresh key when it is created and unwraps it when
//! the keyring is loaded, at startup or on a refresh: never per row, never inside
//! `ToSql`/`FromSql`. Every wrap is bound to a [`WrapContext`] (tenant, purpose, key id) that
//! the provider authenticates, so a wrapped key moved to another row of the key table does not
//! unwrap.

use std::fmt;
use std::time::Duration;

use crate::Error;
use crate::format::key::{KeyId, KeyMaterial};
use crate::tenant::TenantId;

#[cfg(feature = "aws-kms")]
pub mod aws;
#[cfg(feature = "local-kek")]
pub mod local;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;

/// What a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// A data key (DEK): seals values.
    Data,
    /// A blind-index root key: derives blind-index keys.
    BlindIndex,
    /// A wrapping key: wrapped by the KEK, it wraps the other keys in the process
    /// (`docs/adr/0003-key-hierarchy.md`), so loading costs one KEK call per wrapping key.
    Wrapping,
}

impl Purpose {
    /// The name stored in the key table and bound into every wrap.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Data => "data",
            Self::BlindIndex => "blind_index",
            Self::Wrapping => "wrapping",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "data" => Some(Self::Data),
            "blind_index" => Some(Self::BlindIndex),
            "wrapping" => Some(Self::Wrapping),
            _ => None,
        }
    }
}

/// What a wrapped key is bound to. Providers authenticate all three fields (as AAD, or as the
/// KMS encryption context), so a wrapped key presented for another tenant, purpose or key id is
/// rejected.
#[derive(Debug, Clone, Copy)]
pub struct WrapContext<'a> {
    /// The tenant, if any.
    pub tenant: Option<&'a TenantId>,
    /// Data key or blind-index root key.
    pub purpose: Purpose,
    /// The key's id.
    pub key_id: KeyId,
}

impl WrapContext<'_> {
    /// A canonical byte encoding, for providers that take AAD: a domain string, then
    /// length-prefixed tenant (`0x00` for none), purpose and big-endian key id.
    pub fn aad(&self) -> Vec<u8> {
        let mut out = b"encrypted-types/kek/v1".to_vec();
        match self.tenant {
            None => out.push(0),
            Some(t) => {
                out.push(1);
                out.extend_from_slice(&(t.as_str().len() as u64).to_be_bytes());
                out.extend_from_slice(t.as_str().as_bytes());
            }
        }
        out.push(match self.purpose {
            Purpose::Data => 1,
            Purpose::BlindIndex => 2,
            Purpose::Wrapping => 3,
        });
        out.extend_from_slice(&self.key_id.get().to_be_bytes());
        out
    }

    /// The context as key-value pairs, for KMS encryption contexts. A key of no tenant has no
    /// `tenant` pair, so it cannot be confused with a tenant named "".
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = vec![
            ("purpose", self.purpose.as_str().to_owned()),
            ("key_id", self.key_id.to_string()),
        ];
        if let Some(t) = self.tenant {
            pairs.push(("tenant", t.as_str().to_owned()));
        }
        pairs
    }
}

/// A KMS, an HSM or a key file that wraps and unwraps keys.
///
/// Implementations are called at startup and on refresh, never per row. They should fail
/// rather than hang: wrap a slow one in [`Retrying`] for timeouts and bounded retries.
pub trait KekProvider: Send + Sync + fmt::Debug {
    /// Names the KEK, as stored beside each wrapped key (`local:<path>`, `aws-kms:<key id>`,
    /// `pkcs11:<label>`).
    fn kek_ref(&self) -> String;

    /// Wraps `key` under the KEK, bound to `ctx`.
    ///
    /// # Errors
    /// [`Error::Provider`] or [`Error::Timeout`].
    fn wrap(&self, ctx: &WrapContext<'_>, key: &KeyMaterial) -> Result<Vec<u8>, Error>;

    /// A fresh key and its wrapped form. By default generated from the OS and wrapped with
    /// [`KekProvider::wrap`]; a KMS can generate it itself (AWS `GenerateDataKey`).
    ///
    /// # Errors
    /// As [`KekProvider::wrap`].
    fn generate_wrapped(&self, ctx: &WrapContext<'_>) -> Result<(KeyMaterial, Vec<u8>), Error> {
        let key = KeyMaterial::generate()?;
        let wrapped = self.wrap(ctx, &key)?;
        Ok((key, wrapped))
    }

    /// Unwraps `wrapped`, checking that it was wrapped for `ctx`.
    ///
    /// # Errors
    /// [`Error::KeyUnwrap`] naming the key id when the bytes or the context are wrong;
    /// [`Error::Provider`] or [`Error::Timeout`] when the provider fails.
    fn unwrap(&self, ctx: &WrapContext<'_>, wrapped: &[u8]) -> Result<KeyMaterial, Error>;

    /// A check value of the KEK itself, where the provider can give one without revealing it
    /// (a local KEK: `HMAC-SHA256(KEK, "encrypted-types/kek/check/v1")[0..16]`; PKCS#11: the
    /// key's `CKA_CHECK_VALUE`). The key store keeps it beside each wrap the KEK makes, and
    /// compares it only after an unwrap failed, to report [`Error::WrongKek`] rather than
    /// [`Error::KeyUnwrap`]; it decides nothing else. `None` (the default) when the provider
    /// has none.
    ///
    /// ```
    /// use encrypted_types::kek::{KekProvider, local::LocalKek};
    /// let dir = tempfile::tempdir().unwrap();
    /// let a = LocalKek::create(dir.path().join("a.kek"))?;
    /// let b = LocalKek::create(dir.path().join("b.kek"))?;
    /// assert_ne!(a.kek_check()?, b.kek_check()?);
    /// assert_eq!(a.kek_check()?.map(|c| c.len()), Some(16));
    /// # Ok::<(), encrypted_types::Error>(())
    /// ```
    ///
    /// # Errors
    /// A provider error when the check value cannot be read.
    fn kek_check(&self) -> Result<Option<Vec<u8>>, Error> {
        Ok(None)
    }
}

/// Retries with exponential backoff for a provider call.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, at least 1.
    pub attempts: u32,
    /// Wait before the second attempt; doubled each time.
    pub backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// A provider with bounded retries: transient failures ([`Error::Provider`], [`Error::Timeout`])
/// are retried with backoff; a wrong key or context ([`Error::KeyUnwrap`]) is not.
///
/// Per-call timeouts belong to the provider (the AWS provider sets the SDK's operation timeout),
/// so a stopped KMS gives a typed error within `attempts × timeout + backoff`, never a hang.
#[derive(Debug)]
pub struct Retrying<P> {
    inner: P,
    policy: RetryPolicy,
}

impl<P: KekProvider> Retrying<P> {
    /// Wraps `inner` with `policy`.
    pub fn new(inner: P, policy: RetryPolicy) -> Self {
        Self { inner, policy }
    }

    fn run<T>(&self, mut call: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
        let mut wait = self.policy.backoff;
        let mut attempt = 1;
        loop {
            match call() {
                Err(e @ (Error::Provider { .. } | Error::Timeout { .. }))
                    if attempt < self.policy.attempts =>
                {
                    tracing::warn!(target: "encrypted_types::audit", event = "kek_retry", attempt, error = %e);
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(self.policy.max_backoff);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

impl<P: KekProvider> KekProvider for Retrying<P> {
    fn kek_ref(&self) -> String {
        self.inner.kek_ref()
    }

    fn generate_wrapped(&self, ctx: &WrapContext<'_>) -> Result<(KeyMaterial, Vec<u8>), Error> {
        self.run(|| self.inner.generate_wrapped(ctx))
    }

    fn wrap(&self, ctx: &WrapContext<'_>, key: &KeyMaterial) -> Result<Vec<u8>, Error> {
        self.run(|| self.inner.wrap(ctx, key))
    }

    fn unwrap(&self, ctx: &WrapContext<'_>, wrapped: &[u8]) -> Result<KeyMaterial, Error> {
        self.run(|| self.inner.unwrap(ctx, wrapped))
    }

    fn kek_check(&self) -> Result<Option<Vec<u8>>, Error> {
        self.run(|| self.inner.kek_check())
    }
}

impl<P: KekProvider + ?Sized> KekProvider for &P {
    fn kek_ref(&self) -> String {
        (**self).kek_ref()
    }

    fn generate_wrapped(&self, ctx: &WrapContext<'_>) -> Result<(KeyMaterial, Vec<u8>), Error> {
        (**self).generate_wrapped(ctx)
    }

    fn wrap(&self, ctx: &WrapContext<'_>, key: &KeyMaterial) -> Result<Vec<u8>, Error> {
        (**self).wrap(ctx, key)
    }

    fn unwrap(&self, ctx: &WrapContext<'_>, wrapped: &[u8]) -> Result<KeyMaterial, Error> {
        (**self).unwrap(ctx, wrapped)
    }

    fn kek_check(&self) -> Result<Option<Vec<u8>>, Error> {
        (**self).kek_check()
    }
}
