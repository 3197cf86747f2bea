//! A KEK inside an HSM, through PKCS#11 (`cryptoki`).
//!
//! The KEK is a non-extractable AES-256 key on the token. Keys are wrapped by the HSM with
//! AES-256-GCM (`CKM_AES_GCM`), with [`WrapContext::aad`] as the AAD, so the HSM itself
//! authenticates the tenant, purpose and key id: `iv (12) ‖ ciphertext (32) ‖ tag (16)`. The
//! KEK never leaves the token.

use std::fmt;
use std::path::Path;
use std::sync::Mutex;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use super::{KekProvider, WrapContext};
use crate::Error;
use crate::format::key::{KeyId, KeyMaterial};

/// An AES-256 KEK on a PKCS#11 token.
pub struct Pkcs11Kek {
    key_label: String,
    session: Mutex<Session>,
    key: ObjectHandle,
    /// The key's `CKA_CHECK_VALUE`, if the token gives one.
    check: Option<Vec<u8>>,
    // Kept last so it outlives the session.
    _context: Pkcs11,
}

impl fmt::Debug for Pkcs11Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Kek")
            .field("key_label", &self.key_label)
            .finish_non_exhaustive()
    }
}

fn setup_error(reason: impl fmt::Display) -> Error {
    Error::Provider {
        operation: "open",
        key_id: KeyId::from(0),
        reason: format!("PKCS#11: {reason}"),
    }
}

impl Pkcs11Kek {
    /// Logs in to the token labelled `token` with the user `pin`, through the PKCS#11 module at
    /// `module` (for SoftHSM2 on Debian, `/usr/lib/softhsm/libsofthsm2.so`), and finds the AES
    /// key labelled `key_label`; with `create`, generates it first if it is missing
    /// (non-extractable, sensitive, encrypt/decrypt only).
    ///
    /// # Errors
    /// [`Error::Provider`] if the module, token or key cannot be found or used.
    pub fn open(
        module: impl AsRef<Path>,
        token: &str,
        pin: &str,
        key_label: &str,
        create: bool,
    ) -> Result<Self, Error> {
        let context = Pkcs11::new(module.as_ref()).map_err(setup_error)?;
        match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            // Another handle in this process initialized the module already: share it.
            Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(setup_error(e)),
        }
        let slot = context
            .get_slots_with_initialized_token()
            .map_err(setup_error)?
            .into_iter()
            .find(|s| {
                context
                    .get_token_info(*s)
                    .map(|i| i.label().trim() == token)
                    .unwrap_or(false)
            })
            .ok_or_else(|| setup_error(format!("no token labelled {token:?}")))?;
        let session = context.open_rw_session(slot).map_err(setup_error)?;
        session
            .login(UserType::User, Some(&AuthPin::new(pin.into())))
            .map_err(setup_error)?;
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Label(key_label.as_bytes().to_vec()),
        ];
        let found = session.find_objects(&template).map_err(setup_error)?;
        if found.len() > 1 {
            return Err(setup_error(format!(
                "{} keys are labelled {key_label:?}; the KEK must be unique",
                found.len()
            )));
        }
        let key = match found.first() {
            Some(k) => *k,
            None if create => session
                .generate_key(
                    &Mechanism::AesKeyGen,
                    &[
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(false),
                        Attribute::Encrypt(true),
                        Attribute::Decrypt(true),
                        Attribute::Wrap(false),
                        Attribute::Unwrap(false),
                        Attribute::ValueLen(32.into()),
                        Attribute::Label(key_label.as_bytes().to_vec()),
                    ],
                )
                .map_err(setup_error)?,
            None => {
                return Err(setup_error(format!(
                    "no AES key labelled {key_label:?} on the token"
                )));
            }
        };
        // Refuse a KEK the HSM would let out.
        let attrs = session
            .get_attributes(key, &[AttributeType::Extractable, AttributeType::Sensitive])
            .map_err(setup_error)?;
        for a in attrs {
            match a {
                Attribute::Extractable(true) => return Err(setup_error("the KEK is extractable")),
                Attribute::Sensitive(false) => return Err(setup_error("the KEK is not sensitive")),
                _ => {}
            }
        }
        // PKCS#11 2.40's key check value (AES: the first 3 bytes of the zero block encrypted).
        // A token that lacks it gives none: wrong-KEK errors then read as `KeyUnwrap`.
        let check = session
            .get_attributes(key, &[AttributeType::CheckValue])
            .ok()
            .and_then(|attrs| {
                attrs.into_iter().find_map(|a| match a {
                    Attribute::CheckValue(v) if !v.is_empty() => Some(v),
                    _ => None,
                })
            });
        Ok(Self {
            key_label: key_label.to_owned(),
            session: Mutex::new(session),
            key,
            check,
            _context: context,
        })
    }

    fn with_session<T>(&self, f: impl FnOnce(&Session) -> T) -> T {
        let session = self
            .session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&session)
    }
}

fn provider_error(operation: &'static str, key_id: KeyId, e: P11Error) -> Error {
    Error::Provider {
        operation,
        key_id,
        reason: format!("PKCS#11: {e}"),
    }
}

impl KekProvider for Pkcs11Kek {
    fn kek_ref(&self) -> String {
        format!("pkcs11:{}", self.key_label)
    }

    fn wrap(&self, ctx: &WrapContext<'_>, key: &KeyMaterial) -> Result<Vec<u8>, Error> {
        let mut iv = crate::format::nonce::from_os()?;
        let aad = ctx.aad();
        let sealed = self.with_session(|s| {
            let params = GcmParams::new(&mut iv, &aad, 128.into())
                .map_err(|e| provider_error("wrap", ctx.key_id, e))?;
            s.encrypt(&Mechanism::AesGcm(params), self.key, key.expose())
                .map_err(|e| provider_error("wrap", ctx.key_id, e))
        })?;
        let mut out = iv.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn kek_check(&self) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.check.clone())
    }

    fn unwrap(&self, ctx: &WrapContext<'_>, wrapped: &[u8]) -> Result<KeyMaterial, Error> {
        let fail = || Error::KeyUnwrap { key_id: ctx.key_id };
        if wrapped.len() != 60 {
            return Err(fail());
        }
        let (iv, sealed) = wrapped.split_at(12);
        let mut iv: [u8; 12] = iv.try_into().map_err(|_| fail())?;
        let aad = ctx.aad();
        let plain = self.with_session(|s| {
            let params = GcmParams::new(&mut iv, &aad, 128.into())
                .map_err(|e| provider_error("unwrap", ctx.key_id, e))?;
            s.decrypt(&Mechanism::AesGcm(params), self.key, sealed)
                .map_err(|e| match e {
                    // A tag that does not verify: altered bytes or another context.
                    P11Error::Pkcs11(
                        RvError::EncryptedDataInvalid
                        | RvError::EncryptedDataLenRange
                        | RvError::GeneralError,
                        _,
                    ) => fail(),
                    other => provider_error("unwrap", ctx.key_id, other),
                })
        })?;
        let plain = Zeroizing::new(plain);
        KeyMaterial::from_slice(&plain).map_err(|_| fail())
    }
}
