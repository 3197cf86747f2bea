//! A KEK in AWS KMS (`aws-sdk-kms`).
//!
//! New keys come from `GenerateDataKey` (AES-256) and are unwrapped with `Decrypt`, both with
//! the [`WrapContext`] as the KMS encryption context (`tenant`, `purpose`, `key_id`), which KMS
//! authenticates and writes into its CloudTrail log. Each call has an operation timeout, so a
//! KMS that does not answer gives [`Error::Timeout`] instead of a hang; combine with
//! [`super::Retrying`] for bounded retries.
//!
//! The SDK is async; the provider owns a small Tokio runtime and runs each call on a scoped
//! thread, so it can be called from sync code and from inside another runtime alike. It is
//! called at startup and on refresh, never per row.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use aws_sdk_kms::Client;
use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region, timeout::TimeoutConfig};
use aws_sdk_kms::error::{DisplayErrorContext, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use zeroize::Zeroizing;

use super::{KekProvider, WrapContext};
use crate::Error;
use crate::format::key::{KeyId, KeyMaterial};

/// How to reach KMS.
#[derive(Clone)]
pub struct AwsKmsConfig {
    /// The KMS key (id, ARN or alias) that wraps the data keys.
    pub key_id: String,
    /// AWS region.
    pub region: String,
    /// Another endpoint than AWS's (a VPC endpoint, or a local emulator in tests).
    pub endpoint_url: Option<String>,
    /// Static credentials `(access key id, secret)`; `None` uses the `SdkConfig` passed to
    /// [`AwsKms::from_sdk_config`] instead.
    pub credentials: Option<(String, String)>,
    /// Time allowed for one KMS call, retries inside the SDK included.
    pub timeout: Duration,
}

impl fmt::Debug for AwsKmsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKmsConfig")
            .field("key_id", &self.key_id)
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The AWS KMS provider.
pub struct AwsKms {
    client: Client,
    key_id: String,
    timeout: Duration,
    /// Always `Some` until dropped; taken in `Drop` to shut it down without blocking, which
    /// a plain drop would do (and panic) inside an async context.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for AwsKms {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl fmt::Debug for AwsKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKms")
            .field("key_id", &self.key_id)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Provider {
            operation: "open",
            key_id: KeyId::from(0),
            reason: format!("cannot start the KMS client runtime: {e}"),
        })
}

impl AwsKms {
    /// A client built from `config` alone.
    ///
    /// # Errors
    /// [`Error::Provider`] if the client runtime cannot start.
    pub fn new(config: AwsKmsConfig) -> Result<Self, Error> {
        let mut builder = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(config.timeout)
                    .build(),
            );
        if let Some(url) = &config.endpoint_url {
            builder = builder.endpoint_url(url);
        }
        if let Some((id, secret)) = &config.credentials {
            builder = builder.credentials_provider(Credentials::new(
                id,
                secret,
                None,
                None,
                "encrypted-types",
            ));
        }
        Ok(Self {
            client: Client::from_conf(builder.build()),
            key_id: config.key_id,
            timeout: config.timeout,
            runtime: Some(runtime()?),
        })
    }

    /// A client from an `SdkConfig` (for instance `aws_config::load_defaults(...)`: the usual
    /// credential chain), using KMS key `key_id` with calls limited to `timeout`.
    ///
    /// # Errors
    /// [`Error::Provider`] if the client runtime cannot start.
    pub fn from_sdk_config(
        sdk: &aws_types::SdkConfig,
        key_id: impl Into<String>,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let conf = aws_sdk_kms::config::Builder::from(sdk)
            .timeout_config(TimeoutConfig::builder().operation_timeout(timeout).build())
            .build();
        Ok(Self {
            client: Client::from_conf(conf),
            key_id: key_id.into(),
            timeout,
            runtime: Some(runtime()?),
        })
    }

    /// Runs one KMS call to completion, off the caller's async context if it has one.
    fn call<T: Send, F: Future<Output = Result<T, Error>> + Send>(
        &self,
        operation: &'static str,
        key_id: KeyId,
        fut: F,
    ) -> Result<T, Error> {
        // A backstop beyond the SDK's own operation timeout.
        let limit = self.timeout + Duration::from_secs(1);
        let Some(runtime) = self.runtime.as_ref() else {
            return Err(Error::Provider {
                operation,
                key_id,
                reason: "the KMS client is shut down".into(),
            });
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                runtime.block_on(async {
                    tokio::time::timeout(limit, fut)
                        .await
                        .unwrap_or(Err(Error::Timeout { operation, key_id }))
                })
            })
            .join()
            .unwrap_or(Err(Error::Provider {
                operation,
                key_id,
                reason: "the KMS call panicked".into(),
            }))
        })
    }

    fn context(ctx: &WrapContext<'_>) -> std::collections::HashMap<String, String> {
        ctx.pairs()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    }
}

fn sdk_error<E: std::error::Error + 'static, R: fmt::Debug>(
    operation: &'static str,
    key_id: KeyId,
    e: SdkError<E, R>,
) -> Error {
    match &e {
        SdkError::TimeoutError(_) => Error::Timeout { operation, key_id },
        _ => Error::Provider {
            operation,
            key_id,
            reason: DisplayErrorContext(&e).to_string(),
        },
    }
}

impl KekProvider for AwsKms {
    fn kek_ref(&self) -> String {
        format!("aws-kms:{}", self.key_id)
    }

    fn generate_wrapped(&self, ctx: &WrapContext<'_>) -> Result<(KeyMaterial, Vec<u8>), Error> {
        let req = self
            .client
            .generate_data_key()
            .key_id(&self.key_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(Self::context(ctx)));
        self.call("wrap", ctx.key_id, async move {
            let out = req
                .send()
                .await
                .map_err(|e| sdk_error("wrap", ctx.key_id, e))?;
            let fail = |reason: &str| Error::Provider {
                operation: "wrap",
                key_id: ctx.key_id,
                reason: reason.into(),
            };
            // The SDK's Blob is redacted in Debug but not wiped: copy it out and drop it.
            let plain = Zeroizing::new(
                out.plaintext()
                    .ok_or_else(|| fail("no plaintext in the KMS answer"))?
                    .as_ref()
                    .to_vec(),
            );
            let wrapped = out
                .ciphertext_blob()
                .ok_or_else(|| fail("no ciphertext in the KMS answer"))?
                .as_ref()
                .to_vec();
            drop(out);
            // A KMS (or something answering for it) that returns another length is a
            // provider fault, not a keyring misconfiguration.
            let key = KeyMaterial::from_slice(&plain)
                .map_err(|_| fail("the KMS answered a data key that is not 32 bytes"))?;
            Ok((key, wrapped))
        })
    }

    fn wrap(&self, ctx: &WrapContext<'_>, key: &KeyMaterial) -> Result<Vec<u8>, Error> {
        let req = self
            .client
            .encrypt()
            .key_id(&self.key_id)
            .plaintext(Blob::new(key.expose().to_vec()))
            .set_encryption_context(Some(Self::context(ctx)));
        self.call("wrap", ctx.key_id, async move {
            let out = req
                .send()
                .await
                .map_err(|e| sdk_error("wrap", ctx.key_id, e))?;
            out.ciphertext_blob()
                .map(|b| b.as_ref().to_vec())
                .ok_or(Error::Provider {
                    operation: "wrap",
                    key_id: ctx.key_id,
                    reason: "no ciphertext in the KMS answer".into(),
                })
        })
    }

    fn unwrap(&self, ctx: &WrapContext<'_>, wrapped: &[u8]) -> Result<KeyMaterial, Error> {
        let kek_ref = self.kek_ref();
        let req = self
            .client
            .decrypt()
            .key_id(&self.key_id)
            .ciphertext_blob(Blob::new(wrapped.to_vec()))
            .set_encryption_context(Some(Self::context(ctx)));
        self.call("unwrap", ctx.key_id, async move {
            let out = req.send().await.map_err(|e| match e {
                // KMS refuses a ciphertext it did not make, or one presented with another
                // encryption context, as InvalidCiphertextException.
                SdkError::ServiceError(ref s) if s.err().is_invalid_ciphertext_exception() => {
                    Error::KeyUnwrap { key_id: ctx.key_id }
                }
                // KMS's own answer to a ciphertext of another KMS key than the one named (the
                // KEK reference points at a different key than the one that wrapped).
                SdkError::ServiceError(ref s) if s.err().is_incorrect_key_exception() => {
                    Error::WrongKek {
                        kek_ref: kek_ref.clone(),
                    }
                }
                other => sdk_error("unwrap", ctx.key_id, other),
            })?;
            let plain = Zeroizing::new(
                out.plaintext()
                    .ok_or(Error::KeyUnwrap { key_id: ctx.key_id })?
                    .as_ref()
                    .to_vec(),
            );
            drop(out);
            KeyMaterial::from_slice(&plain).map_err(|_| Error::KeyUnwrap { key_id: ctx.key_id })
        })
    }
}
