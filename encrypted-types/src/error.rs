//! The one error type of the library.
//!
//! Messages name what went wrong and where (key id, tenant, value type) but never contain
//! plaintext or key bytes. Every failure of the AEAD tag or of the authenticated context is the
//! single opaque [`Error::AuthenticationFailed`], so an attacker learns nothing from which check
//! failed.

use crate::format::key::KeyId;

/// Everything that can go wrong while sealing or opening a value.
///
/// Diesel boxes this into `diesel::result::Error::SerializationError` (on write) or
/// `DeserializationError` (on read); recover it with `downcast_ref::<encrypted_types::Error>()`.
///
/// ```
/// use encrypted_types::Error;
/// let err = Error::UnknownKeyId(7.into());
/// assert_eq!(err.to_string(), "no key with id 7 is installed in the keyring");
/// ```
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The value is shorter than a version 1 header plus tag.
    #[error("sealed value is truncated: {len} bytes, at least {min} expected")]
    Truncated {
        /// Length of the input.
        len: usize,
        /// Minimum length of a valid sealed value.
        min: usize,
    },
    /// The first byte names a format version this build does not know: often not a sealed
    /// value at all (plaintext in an encrypted column).
    #[error(
        "unsupported ciphertext format version {0} (if the column still holds plaintext being \
         migrated, read it with migration::allow_plaintext for that column)"
    )]
    UnsupportedVersion(u8),
    /// The suite byte names an algorithm this build does not know.
    #[error("unsupported cipher suite {0}")]
    UnsupportedSuite(u8),
    /// The header names a key id the installed keyring does not hold.
    #[error("no key with id {0} is installed in the keyring")]
    UnknownKeyId(KeyId),
    /// The header names a key that was destroyed (crypto-shredded).
    #[error("key {0} was destroyed; the value can never be opened")]
    KeyDestroyed(KeyId),
    /// The tag did not verify: the bytes were altered, or they were sealed for another
    /// table, column, tenant or value type. Deliberately says nothing more.
    #[error("authentication failed")]
    AuthenticationFailed,
    /// A value bound to its row (suite 3) was opened without the row's identity, or a value
    /// not bound to any row was found in a column whose model binds values to their row
    /// (`bind_row`): it could have been copied from another row. A rotation binds such values.
    #[error(
        "the value is not bound to this row (bind_row): sealed before the model declared \
         bind_row (bind such values once: `jobs rotate --bind-unbound`, docs/KEYS.md), or \
         copied from another row"
    )]
    RowBinding,
    /// A value's schema context (suites 4 and 5, `docs/FORMAT.md` §2.2) does not match its
    /// column's: sealed with no schema in a column whose model names one (it could have been
    /// copied from the same table in another schema), or with a schema in a column whose model
    /// names none. A model adopting its schema (`adopt_schema`) reads values sealed before it,
    /// and a rotation re-seals them.
    #[error(
        "the value's schema does not match its column's: sealed before the model named its \
         schema (declare adopt_schema until `jobs rotate` has re-sealed them, docs/KEYS.md), \
         or sealed for a table in another schema"
    )]
    SchemaMismatch,
    /// A row write sealed a second value of one column under its one nonce (the two would
    /// share their AAD): a program error of code that seals rows by hand.
    #[error("a row write sealed two values of one column: give each value of a row its own column")]
    RowColumnRepeated,
    /// A row identity could not be encoded: no column, more than four, or a part of 4 GiB or
    /// more.
    #[error("invalid row identity for bind_row")]
    InvalidRowBinding,
    /// Decryption succeeded but the plaintext is not a canonical encoding of the expected type.
    #[error("plaintext is not a valid `{type_name}` encoding")]
    InvalidPlaintext {
        /// The value type tag (see `docs/FORMAT.md`).
        type_name: &'static str,
    },
    /// The value could not be encoded (for example a JSON map with non-string keys).
    #[error("value could not be encoded as `{type_name}`")]
    Unencodable {
        /// The value type tag.
        type_name: &'static str,
    },
    /// No keyring has been installed: the keys were not loaded at startup.
    #[error(
        "no keyring installed: load the keys at startup with KeyStore::load_and_install (or \
         install a keyring built by hand with Keyring::install)"
    )]
    NoKeyring,
    /// The keyring has no primary data key for this tenant, so nothing can be sealed for it.
    #[error("no primary data key for tenant {tenant}")]
    NoPrimaryKey {
        /// The tenant, or `(none)` for values without a tenant.
        tenant: String,
    },
    /// A context string (table, column, tenant or value type) is too long to encode.
    #[error("context field `{field}` is {len} bytes, more than the 65535 the format allows")]
    ContextTooLong {
        /// Which context field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// The tenant was crypto-shredded: every one of its keys is destroyed, so nothing can be
    /// sealed, found or opened for it again.
    #[error(
        "tenant {tenant} is crypto-shredded: its keys are destroyed and its values can never be \
         read or written again (jobs::purge_tenant deletes its rows)"
    )]
    TenantShredded {
        /// The tenant.
        tenant: String,
    },
    /// The keyring has no blind-index root key for this tenant.
    #[error("no blind-index key for tenant {tenant}")]
    NoBlindIndexKey {
        /// The tenant, or `(none)`.
        tenant: String,
    },
    /// A value opened with a key of another tenant than its row's: it was copied across
    /// tenants.
    #[error("value in column {column} belongs to another tenant than its row")]
    TenantMismatch {
        /// The column.
        column: &'static str,
    },
    /// A blind index was misconfigured.
    #[error("invalid blind index: {0}")]
    InvalidIndex(&'static str),
    /// A wrapped key did not unwrap: its bytes were altered, or it was presented for another
    /// tenant, purpose or key id than it was wrapped for.
    #[error("wrapped key {key_id} did not unwrap (altered, or wrapped for another context)")]
    KeyUnwrap {
        /// The key.
        key_id: KeyId,
    },
    /// An unwrapped key does not match the check value stored beside it: the KEK provider
    /// returned other bytes than the key that was wrapped (a misbehaving KMS or HSM).
    #[error(
        "key {key_id} does not match its check value: the KEK provider returned wrong key bytes"
    )]
    KeyCheck {
        /// The key.
        key_id: KeyId,
    },
    /// The tenant's own KEK (bring your own key) could not unwrap its keys at the last load:
    /// disabled, deleted or unreachable. Nothing of the tenant can be read or written until
    /// access to that KEK is restored and the keyring reloaded
    /// (`KeyStore::load_and_install`).
    #[error(
        "tenant {tenant} is unavailable: its KEK {kek} could not unwrap its keys at the last load; restore access to the KEK, then reload the keyring (KeyStore::load_and_install)"
    )]
    TenantUnavailable {
        /// The tenant (as `describe` prints it).
        tenant: String,
        /// The KEK reference (a KMS key id or HSM label, never key bytes).
        kek: String,
    },
    /// One KEK is given both as a tenant's own ([`crate::store::KeyStore::with_tenant_kek`])
    /// and as a deployment KEK (the provider or [`crate::store::KeyStore::with_kek`]): that
    /// tenant could then vouch for the deployment's wrapping key. Refused before any load.
    #[error("KEK {kek} is given both as tenant {tenant}'s own and as a deployment KEK")]
    KekRoles {
        /// The KEK reference.
        kek: String,
        /// The tenant it was given for.
        tenant: String,
    },
    /// An unwrapped key failed its canary seal-and-open self-test.
    #[error("key {key_id} failed its self-test")]
    SelfTest {
        /// The key.
        key_id: KeyId,
    },
    /// A key in the key table is unusable: missing bytes, an unknown state or purpose, a KEK this
    /// process does not have.
    #[error("key {key_id} in the key table is unusable: {reason}")]
    KeyRecord {
        /// The key.
        key_id: KeyId,
        /// Why.
        reason: &'static str,
    },
    /// The KEK provider failed (unreachable, refused, misconfigured). `reason` is the provider's
    /// own message, which holds no key material.
    #[error("KEK provider failed to {operation} key {key_id}: {reason}")]
    Provider {
        /// `wrap` or `unwrap`.
        operation: &'static str,
        /// The key.
        key_id: KeyId,
        /// The provider's message.
        reason: String,
    },
    /// The KEK provider did not answer in time.
    #[error("KEK provider timed out trying to {operation} key {key_id}")]
    Timeout {
        /// `wrap` or `unwrap`.
        operation: &'static str,
        /// The key.
        key_id: KeyId,
    },
    /// The KEK configured under `kek_ref` is not the one the key table's wraps were made with:
    /// its check value differs from the one stored when they were (docs/KEYTABLE.md,
    /// `kek_check`), or the KMS says the ciphertext is another key's. Told apart from tampering
    /// ([`Error::KeyUnwrap`]), which is what a failed unwrap under the right KEK stays. The
    /// check value is not authenticated, so a database writer can make tampering read as this:
    /// if the configured KEK is the original, treat the record as tampered.
    #[error(
        "the KEK {kek_ref} is not the one these keys were wrapped with: configure the original \
         KEK (the key file, HSM key or KMS key that wrapped them), not a new one under the same name"
    )]
    WrongKek {
        /// The KEK reference (`local:<file>`, `pkcs11:<label>`, `aws-kms:<key id>`).
        kek_ref: String,
    },
    /// The local KEK file is unusable: missing (opening never creates one), readable by
    /// others, of the wrong length, or all zeros.
    #[error("local KEK file {kek}: {reason}")]
    KekFile {
        /// The file's path, as given.
        kek: String,
        /// Why, and what to do.
        reason: &'static str,
    },
    /// [`crate::store::KeyStore::destroy_key`] refused: the key is not one that can be
    /// destroyed now (never a sign of tampering).
    #[error("key {key_id} cannot be destroyed: {reason}")]
    NotDestroyable {
        /// The key.
        key_id: KeyId,
        /// Why, and what to do first.
        reason: &'static str,
    },
    /// The key table could not be read or written.
    #[error("key table: {0}")]
    Store(String),
    /// One of the library's migrations of its own tables is not applied: an application that
    /// copied the first migrations and not a later one (or applied them by hand).
    #[error(
        "table {table} lacks the library's migration {migration}: copy \
         migrations/<backend>/{migration} into the application's migrations and run it, or call \
         KeyStore::run_migrations (CHANGELOG.md, \"Upgrading from 0.1\", says what to do when \
         migrations were applied by hand)"
    )]
    MissingMigration {
        /// The library's table.
        table: &'static str,
        /// The migration's directory name in `migrations/<backend>/`.
        migration: &'static str,
    },
    /// The keyring configuration is inconsistent (duplicate key id, primary key not present...).
    #[error("invalid keyring: {0}")]
    InvalidKeyring(&'static str),
    /// The value is longer than AES-GCM or the format can carry.
    #[error("plaintext of {0} bytes is too large to seal")]
    TooLarge(usize),
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Rng,
    /// The job table could not be read or written, or holds something malformed.
    #[error("job table: {0}")]
    Job(String),
    /// A row of a model in an expand/contract migration has neither a sealed value nor a
    /// legacy one in a column its model says is not optional.
    #[error("{table}.{column} is NULL and so is its legacy column {legacy}")]
    NoValue {
        /// The table.
        table: &'static str,
        /// The encrypted column.
        column: &'static str,
        /// The legacy column (`migrate_from`).
        legacy: &'static str,
    },
    /// The database rolled a job's transaction back as a deadlock victim or a serialization
    /// failure more times than the job retries (with random pauses). Nothing half-done was
    /// kept: run the job again and it resumes from its checkpoint.
    #[error(
        "job table: the database kept rolling the job's transaction back (deadlock or \
         serialization failure); run the job again to resume"
    )]
    Contended,
    /// A job cannot walk this table correctly (no primary key, a key type it cannot page, a
    /// primary key other than the model's): refused before anything is written.
    #[error("table {table} cannot be processed by the jobs: {reason}")]
    UnpageableKey {
        /// The table.
        table: String,
        /// Why.
        reason: String,
    },
    /// The keyring was loaded for some tenants only ([`crate::store::KeyStore::load_tenants`])
    /// and this tenant is not one of them: load it (outside the query, where a KMS call may
    /// happen) with [`crate::store::KeyStore::ensure_loaded`].
    #[error(
        "tenant {tenant} is not loaded in this process's keyring; call KeyStore::ensure_loaded for it before its queries"
    )]
    TenantNotLoaded {
        /// The tenant.
        tenant: String,
    },
    /// A value names a key the keyring does not hold, and the keyring was loaded for some
    /// tenants only: the value may be another tenant's. Load the tenants this process serves
    /// with [`crate::store::KeyStore::ensure_loaded`].
    #[error(
        "key {0} is not in this process's keyring, which holds some tenants only; call KeyStore::ensure_loaded for the value's tenant"
    )]
    KeyNotLoaded(KeyId),
    /// The operation needs every tenant's keys (a job), and the installed keyring holds some
    /// tenants only: run it in a process that loaded the whole table
    /// ([`crate::store::KeyStore::load_and_install`]).
    #[error("this needs every tenant's keys, but the installed keyring holds some tenants only")]
    PartialKeyring,
    /// [`crate::jobs::purge_tenant`] was asked to delete the rows of a tenant that the key
    /// table does not show, in records that authenticate, as shredded: every key of the tenant
    /// destroyed. A tenant whose own KEK is down or not configured in this process, or that is
    /// simply not loaded here, still has live keys and is refused; so is a tenant with no
    /// records at all (a typo, or another deployment's key table).
    #[error(
        "tenant {tenant} is not shredded ({reason}): purge_tenant deletes only the rows of a tenant whose every key the key table shows destroyed; shred it first (KeyStore::shred_tenant, or `keys shred`)"
    )]
    NotShredded {
        /// The tenant.
        tenant: String,
        /// What the key table shows instead.
        reason: &'static str,
    },
    /// This process's keyring is older than its maximum sealing age
    /// ([`crate::store::KeyStore::with_seal_max_age`]) and was neither reloaded nor confirmed
    /// current by a poll since: it refuses to seal, since another process may have retired (and
    /// may soon destroy) the key it would seal with. Opening still works.
    #[error(
        "this process's keyring was loaded or last confirmed current {age_secs}s ago, over its maximum sealing age of {max_secs}s: poll the key table (KeyStore::refresh) or reload it before sealing"
    )]
    StaleKeyring {
        /// Seconds since the keyring's load or last confirmation.
        age_secs: u64,
        /// The maximum sealing age, in seconds.
        max_secs: u64,
    },
    /// [`crate::store::KeyStore::destroy_key`] refused a key retired less than the store's
    /// destroy grace period ago: a process still on a keyring from before the retirement may
    /// seal with it until it reloads.
    #[error(
        "key {key_id} was retired {retired_secs}s ago, less than the destroy grace period of {grace_secs}s: a process that has not reloaded since may still seal with it; wait, or shorten the grace period with KeyStore::with_seal_max_age"
    )]
    DestroyTooSoon {
        /// The key.
        key_id: KeyId,
        /// Seconds since it was retired.
        retired_secs: u64,
        /// The grace period, in seconds.
        grace_secs: u64,
    },
    /// One KEK would serve two tenants as their own: each tenant's own KEK must be its own,
    /// or disabling it (or the tenant holding it) reaches another tenant.
    #[error("KEK {kek} is tenant {first}'s own KEK and would also be tenant {second}'s")]
    SharedTenantKek {
        /// The KEK reference.
        kek: String,
        /// The tenant whose KEK it is.
        first: String,
        /// The other tenant.
        second: String,
    },
    /// The key table's manifest (`docs/KEYTABLE.md` §6) refuses the table: a group's records
    /// differ from its manifest row (rolled back, altered, or changed by a library version
    /// before 0.3), a row does not authenticate or is missing, the rows do not add up to the
    /// deployment row, or the deployment epoch is below the pinned minimum
    /// ([`crate::store::KeyStore::with_min_epoch`]) or one this process saw. Nothing is
    /// loaded or written; `reason` says what to do.
    #[error("the key table's manifest refuses {scope}: {reason}")]
    Manifest {
        /// `tenant <id>`, `the keys of no tenant`, `the deployment row`, or `the row "<scope>"`
        /// for a row of a scope no group has.
        scope: String,
        /// What differs, and what to do.
        reason: &'static str,
    },
    /// A job name was resumed for another operation or target than the one it was started
    /// for (for example after another key rotation).
    #[error(
        "job {job} was started as `{found}`, this run is `{wanted}`: give this run another job name"
    )]
    JobMismatch {
        /// The job's name.
        job: String,
        /// What the job table records.
        found: String,
        /// What this run would do.
        wanted: String,
    },
}

impl Error {
    /// A fixed, lower-case name for this kind of error (`"authentication_failed"`,
    /// `"unknown_key_id"`), with no value in it: what metrics label failures with, and what
    /// alerting can match on.
    ///
    /// ```
    /// use encrypted_types::Error;
    /// assert_eq!(Error::AuthenticationFailed.reason(), "authentication_failed");
    /// assert_eq!(Error::TooLarge(1 << 30).reason(), "too_large");
    /// ```
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Truncated { .. } => "truncated",
            Self::UnsupportedVersion { .. } => "unsupported_version",
            Self::UnsupportedSuite { .. } => "unsupported_suite",
            Self::UnknownKeyId { .. } => "unknown_key_id",
            Self::KeyDestroyed { .. } => "key_destroyed",
            Self::AuthenticationFailed { .. } => "authentication_failed",
            Self::RowBinding { .. } => "row_binding",
            Self::SchemaMismatch { .. } => "schema_mismatch",
            Self::InvalidRowBinding { .. } => "invalid_row_binding",
            Self::InvalidPlaintext { .. } => "invalid_plaintext",
            Self::Unencodable { .. } => "unencodable",
            Self::NoKeyring { .. } => "no_keyring",
            Self::RowColumnRepeated => "row_column_repeated",
            Self::NoPrimaryKey { .. } => "no_primary_key",
            Self::ContextTooLong { .. } => "context_too_long",
            Self::NoBlindIndexKey { .. } => "no_blind_index_key",
            Self::TenantShredded { .. } => "tenant_shredded",
            Self::TenantMismatch { .. } => "tenant_mismatch",
            Self::InvalidIndex { .. } => "invalid_index",
            Self::KeyUnwrap { .. } => "key_unwrap",
            Self::KeyCheck { .. } => "key_check",
            Self::TenantUnavailable { .. } => "tenant_unavailable",
            Self::KekRoles { .. } => "kek_roles",
            Self::SelfTest { .. } => "self_test",
            Self::KeyRecord { .. } => "key_record",
            Self::Provider { .. } => "provider",
            Self::Timeout { .. } => "timeout",
            Self::KekFile { .. } => "kek_file",
            Self::WrongKek { .. } => "wrong_kek",
            Self::Store { .. } => "store",
            Self::NotDestroyable { .. } => "not_destroyable",
            Self::MissingMigration { .. } => "missing_migration",
            Self::InvalidKeyring { .. } => "invalid_keyring",
            Self::TooLarge { .. } => "too_large",
            Self::Rng { .. } => "rng",
            Self::Job { .. } => "job",
            Self::NoValue { .. } => "no_value",
            Self::Contended { .. } => "contended",
            Self::UnpageableKey { .. } => "unpageable_key",
            Self::TenantNotLoaded { .. } => "tenant_not_loaded",
            Self::KeyNotLoaded { .. } => "key_not_loaded",
            Self::PartialKeyring { .. } => "partial_keyring",
            Self::JobMismatch { .. } => "job_mismatch",
            Self::NotShredded { .. } => "not_shredded",
            Self::StaleKeyring { .. } => "stale_keyring",
            Self::DestroyTooSoon { .. } => "destroy_too_soon",
            Self::SharedTenantKek { .. } => "shared_tenant_kek",
            Self::Manifest { .. } => "manifest",
        }
    }
}
