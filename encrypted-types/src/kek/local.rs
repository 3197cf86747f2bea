//! A KEK in a local file, for development and tests only.
//!
//! The file holds exactly 32 random bytes. It is refused if it is readable or writable by the
//! group or others, has another length, or is all zeros. Keys are wrapped with AES-256-GCM under
//! it: `nonce (12) ‖ ciphertext (32) ‖ tag (16)`, with [`WrapContext::aad`] as the AAD.
//!
//! A file next to the application is no protection against someone who can read the
//! application's disk: production deployments use a KMS or an HSM.

use std::fmt;
use std::path::{Path, PathBuf};

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::KeyInit;
use zeroize::Zeroizing;

use super::{KekProvider, WrapContext};
use crate::Error;
use crate::format::key::KeyMaterial;

/// The local file KEK.
///
/// ```
/// use encrypted_types::kek::local::LocalKek;
/// use encrypted_types::kek::{KekProvider, Purpose, WrapContext};
/// use encrypted_types::KeyMaterial;
///
/// let dir = std::env::temp_dir().join(format!("et-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let kek = LocalKek::create(dir.join("dev.kek"))?;
/// let ctx = WrapContext { tenant: None, purpose: Purpose::Data, key_id: 1.into() };
/// let dek = KeyMaterial::generate()?;
/// let wrapped = kek.wrap(&ctx, &dek)?;
/// assert_eq!(kek.unwrap(&ctx, &wrapped)?.expose(), dek.expose());
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), encrypted_types::Error>(())
/// ```
pub struct LocalKek {
    path: PathBuf,
    cipher: Aes256Gcm,
    /// Its check value, stored beside the wraps it makes: a wrong KEK file is told apart from
    /// tampered wraps.
    check: [u8; crate::store::record::CHECK_LEN],
}

impl fmt::Debug for LocalKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKek")
            .field("path", &self.path)
            .field("key", &"<redacted>")
            .finish()
    }
}

fn file_error(path: &Path, reason: &'static str) -> Error {
    Error::KekFile {
        kek: path.display().to_string(),
        reason,
    }
}

impl LocalKek {
    /// Opens an existing KEK file. It never creates one: a KEK made in place of a lost one
    /// could not unwrap a single stored key, so a missing file is an error naming the path
    /// (create the file once with [`LocalKek::create`], as the toolkit's `keys init` does).
    ///
    /// ```
    /// use encrypted_types::kek::local::LocalKek;
    /// use encrypted_types::Error;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("app.kek");
    /// assert!(matches!(LocalKek::open(&path), Err(Error::KekFile { .. })));
    /// assert!(!path.exists(), "opening never creates a KEK");
    /// ```
    ///
    /// # Errors
    /// [`Error::KekFile`] if the file is missing, readable by others, not 32 bytes, or all zeros.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        use std::io::Read;
        let path = path.as_ref();
        let unreadable = |_| file_error(path, "cannot read the KEK file");
        // Permissions and bytes from one open handle, so the file checked is the file read.
        let mut file = std::fs::File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => file_error(
                path,
                "no such file; opening never creates a KEK (keys wrapped by a lost KEK cannot be \
                 unwrapped by a new one): restore the file, or create it once with `keys init` \
                 (LocalKek::create)",
            ),
            _ => file_error(path, "cannot read the KEK file"),
        })?;
        let meta = file.metadata().map_err(unreadable)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(file_error(
                    path,
                    "the KEK file is accessible to group or others; chmod 600 it",
                ));
            }
        }
        if meta.len() != 32 {
            return Err(file_error(path, "the KEK file must hold exactly 32 bytes"));
        }
        let mut bytes = Zeroizing::new(Vec::with_capacity(32));
        file.read_to_end(&mut bytes).map_err(unreadable)?;
        if bytes.len() != 32 {
            return Err(file_error(path, "the KEK file must hold exactly 32 bytes"));
        }
        if bytes.iter().all(|b| *b == 0) {
            return Err(file_error(path, "the KEK file is all zeros"));
        }
        let material = KeyMaterial::from_slice(&bytes)?;
        Ok(Self {
            path: path.to_owned(),
            cipher: Aes256Gcm::new(material.expose().into()),
            check: crate::store::record::kek_check_value(&material),
        })
    }

    /// Creates a new KEK file with fresh random bytes and mode 0600. Refuses to overwrite.
    ///
    /// # Errors
    /// [`Error::KekFile`] if the file exists or cannot be written; [`Error::Rng`].
    pub fn create(path: impl AsRef<Path>) -> Result<Self, Error> {
        use std::io::Write;
        let path = path.as_ref();
        let key = KeyMaterial::generate()?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options
            .open(path)
            .map_err(|_| file_error(path, "cannot create the KEK file (does it exist?)"))?;
        file.write_all(key.expose())
            .map_err(|_| file_error(path, "cannot write the KEK file"))?;
        file.sync_all()
            .map_err(|_| file_error(path, "cannot write the KEK file"))?;
        Self::open(path)
    }

    /// For demos and development only: opens the KEK file, creating it first when it does not
    /// exist. A production startup calls [`LocalKek::open`] (or uses a KMS or HSM): there, a
    /// missing file means a lost KEK, and a new one would silently take its place.
    ///
    /// ```
    /// use encrypted_types::kek::local::LocalKek;
    /// let dir = tempfile::tempdir().unwrap();
    /// let first = LocalKek::open_or_create_dev(dir.path().join("dev.kek"))?;
    /// let again = LocalKek::open_or_create_dev(dir.path().join("dev.kek"))?; // the same file
    /// # use encrypted_types::kek::KekProvider;
    /// assert_eq!(first.kek_ref(), again.kek_ref());
    /// # Ok::<(), encrypted_types::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`LocalKek::open`] and [`LocalKek::create`].
    pub fn open_or_create_dev(path: impl AsRef<Path>) -> Result<Self, Error> {
        if path.as_ref().exists() {
            Self::open(path)
        } else {
            Self::create(path)
        }
    }

    /// Renamed [`LocalKek::open_or_create_dev`], whose name says what it is for.
    ///
    /// # Errors
    /// As [`LocalKek::open_or_create_dev`].
    #[deprecated(
        since = "0.2.0",
        note = "a startup that creates a missing KEK replaces a lost one silently: use \
                `LocalKek::open` in production, `LocalKek::create` to make the file once, \
                or `LocalKek::open_or_create_dev` for demos"
    )]
    pub fn open_or_create(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_or_create_dev(path)
    }
}

impl KekProvider for LocalKek {
    fn kek_ref(&self) -> String {
        format!(
            "local:{}",
            self.path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        )
    }

    fn wrap(&self, ctx: &WrapContext<'_>, key: &KeyMaterial) -> Result<Vec<u8>, Error> {
        crate::store::record::seal_key(&self.cipher, &ctx.aad(), key, ctx.key_id)
    }

    fn unwrap(&self, ctx: &WrapContext<'_>, wrapped: &[u8]) -> Result<KeyMaterial, Error> {
        crate::store::record::open_key(&self.cipher, &ctx.aad(), wrapped, ctx.key_id)
    }

    fn kek_check(&self) -> Result<Option<Vec<u8>>, Error> {
        Ok(Some(self.check.to_vec()))
    }
}
