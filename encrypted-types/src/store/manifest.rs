//! The key table's manifest (`docs/KEYTABLE.md` §6, ADR 0005): a MAC'd row per group of
//! records (a tenant's, or those of no tenant) with an epoch and a digest of the group's
//! records, and a deployment row whose digest covers every group row changed since its
//! creation. A record's own MAC cannot show that the record was replaced by an older copy of
//! itself; the manifest does.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use diesel::sql_types::{BigInt, Binary, Text};

use super::record::{Wrapper, group_digest};
use super::{
    KEYS, KeyDb, KeyRecord, KeyStore, KeyTable, Param, Query, RECORD_COLS, key_by_id, store_err,
};
use crate::Error;
use crate::kek::KekProvider;

pub(crate) const MANIFEST: &str = "encrypted_types_key_manifest";
const DEPLOYMENT: &str = "deployment";
const COLS: &str = "scope, epoch, digest, mac_key_id, mac";

const NO_MANIFEST: &str = "the key table has records but no manifest (a table from before 0.3, \
     or its manifest was deleted): run `encrypted-types keys manifest --rebuild` once after the migration \
     (KeyStore::rebuild_manifest), or allow it for the upgrade window with \
     KeyStore::allow_unmanifested_table";
const NOT_AUTHENTIC: &str =
    "its manifest row does not authenticate (altered, or MAC'd by a key the table does not hold)";
const DIFFERS: &str = "its key records differ from its manifest row: they were rolled back or \
     altered, or changed by a library version before 0.3 (review, then `keys manifest --rebuild`)";
const NO_ROW: &str = "it has key records but no manifest row (created by a library version \
     before 0.3, or its row was deleted: review, then `keys manifest --rebuild`)";
const GONE: &str = "its manifest row records changes, but its key records are gone (deleted, \
     or the table was rolled back)";
const DOES_NOT_ADD_UP: &str = "the group rows do not add up to the deployment row: a tenant's \
     key records were rolled back together with its manifest row, or a row was deleted";
const BELOW_PIN: &str =
    "its epoch is below the minimum pinned for this deployment: the key table was rolled back";
const BELOW_SEEN: &str = "its epoch is below one this process saw before: the key table was \
     rolled back";

/// One row of the manifest.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq, diesel::QueryableByName)]
pub struct ManifestRow {
    #[diesel(sql_type = Text)]
    pub(crate) scope: String,
    #[diesel(sql_type = BigInt)]
    pub(crate) epoch: i64,
    #[diesel(sql_type = Binary)]
    pub(crate) digest: Vec<u8>,
    #[diesel(sql_type = BigInt)]
    pub(crate) mac_key_id: i64,
    #[diesel(sql_type = Binary)]
    pub(crate) mac: Vec<u8>,
}

/// The manifest's state, from [`KeyStore::manifest_status`] or after
/// [`KeyStore::rebuild_manifest`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ManifestStatus {
    /// The deployment epoch (`None`: the table has no manifest). Pin it with
    /// [`KeyStore::with_min_epoch`].
    pub epoch: Option<u64>,
    /// Groups of records whose manifest row is missing, does not authenticate or does not
    /// match their records, or whose records are gone, as `tenant <id>` or `the keys of no
    /// tenant`: what a rebuild accepts as it is.
    pub differing: Vec<String>,
    /// Whether the group rows add up to the deployment row.
    pub adds_up: bool,
}

/// The scope of a group row: `tenant:<id>`, or `none` for the keys of no tenant.
pub(crate) fn scope_of(tenant: Option<&str>) -> String {
    tenant.map_or_else(|| "none".to_owned(), |t| format!("tenant:{t}"))
}

/// `records` grouped by scope, in scope order, each group in the records' order.
fn by_scope(records: &[KeyRecord]) -> BTreeMap<String, Vec<&KeyRecord>> {
    let mut groups: BTreeMap<String, Vec<&KeyRecord>> = BTreeMap::new();
    for r in records {
        groups
            .entry(scope_of(r.tenant.as_deref()))
            .or_default()
            .push(r);
    }
    groups
}

fn describe(scope: &str) -> String {
    match scope.strip_prefix("tenant:") {
        Some(t) => format!("tenant {t}"),
        None if scope == DEPLOYMENT => "the deployment row".to_owned(),
        None if scope == "none" => "the keys of no tenant".to_owned(),
        // Never written by the library: a row a database writer added.
        None => format!("the row {scope:?}"),
    }
}

fn refuse(scope: &str, reason: &'static str) -> Error {
    Error::Manifest {
        scope: describe(scope),
        reason,
    }
}

fn xor(acc: &mut [u8; 32], entry: &[u8; 32]) {
    for (a, e) in acc.iter_mut().zip(entry) {
        *a ^= e;
    }
}

/// Manifest rows: all of them (`None`), or those of `scopes`; `lock` is a lock clause.
async fn rows<D: KeyDb>(
    db: &mut D,
    scopes: Option<&[String]>,
    lock: &str,
) -> QueryResult<Vec<ManifestRow>> {
    let Some(scopes) = scopes else {
        let q = Query::sql(format!("SELECT {COLS} FROM {MANIFEST}{lock}"));
        return D::Backend::load_manifest(db, &q).await;
    };
    let mut out = Vec::new();
    for chunk in scopes.chunks(500) {
        let mut q = Query::new();
        let list: Vec<String> = chunk
            .iter()
            .map(|s| q.bind::<D::Backend>(Param::Text(s.clone())))
            .collect();
        q.sql = format!(
            "SELECT {COLS} FROM {MANIFEST} WHERE scope IN ({}){lock}",
            list.join(", ")
        );
        out.extend(D::Backend::load_manifest(db, &q).await?);
    }
    Ok(out)
}

use diesel::QueryResult;

async fn write_row<D: KeyDb>(db: &mut D, row: &ManifestRow, existed: bool) -> Result<(), Error> {
    // Bound in the order the placeholders appear: SQLite's and MySQL's `?` are positional.
    let mut q = Query::new();
    let bind = |q: &mut Query, p| q.bind::<D::Backend>(p);
    q.sql = if existed {
        let e = bind(&mut q, Param::Int(row.epoch));
        let d = bind(&mut q, Param::Bytes(row.digest.clone()));
        let k = bind(&mut q, Param::Int(row.mac_key_id));
        let m = bind(&mut q, Param::Bytes(row.mac.clone()));
        let s = bind(&mut q, Param::Text(row.scope.clone()));
        format!(
            "UPDATE {MANIFEST} SET epoch = {e}, digest = {d}, mac_key_id = {k}, mac = {m} WHERE scope = {s}"
        )
    } else {
        let s = bind(&mut q, Param::Text(row.scope.clone()));
        let e = bind(&mut q, Param::Int(row.epoch));
        let d = bind(&mut q, Param::Bytes(row.digest.clone()));
        let k = bind(&mut q, Param::Int(row.mac_key_id));
        let m = bind(&mut q, Param::Bytes(row.mac.clone()));
        format!("INSERT INTO {MANIFEST} ({COLS}) VALUES ({s}, {e}, {d}, {k}, {m})")
    };
    match db.exec(&q).await.map_err(store_err)? {
        1 => Ok(()),
        _ => Err(Error::Store(
            "the key table's manifest changed during the operation; run again".into(),
        )),
    }
}

async fn delete_row<D: KeyDb>(db: &mut D, scope: &str) -> Result<(), Error> {
    let mut q = Query::new();
    let s = q.bind::<D::Backend>(Param::Text(scope.to_owned()));
    q.sql = format!("DELETE FROM {MANIFEST} WHERE scope = {s}");
    db.exec(&q).await.map_err(store_err).map(|_| ())
}

/// A group's records in key-id order, read under a shared lock: under MySQL's REPEATABLE
/// READ a plain read would return the transaction's snapshot, older than the lock it holds.
async fn group_records<D: KeyDb>(
    db: &mut D,
    tenant: Option<&str>,
) -> Result<Vec<KeyRecord>, Error> {
    let mut q = Query::new();
    let t = super::tenant_is::<D::Backend>(&mut q, tenant);
    q.sql = format!(
        "SELECT {RECORD_COLS} FROM {KEYS} WHERE {t} ORDER BY key_id{}",
        D::Backend::SHARE_LOCK
    );
    D::Backend::load_records(db, &q).await.map_err(store_err)
}

/// The deployment row, read without a lock: what a load reads before and after the records to
/// know that no change committed in between.
pub(super) async fn deployment_row<D: KeyDb>(db: &mut D) -> Result<Option<ManifestRow>, Error> {
    match rows(db, Some(&[DEPLOYMENT.to_owned()]), "").await {
        Ok(mut r) => Ok(r.pop()),
        Err(e) => Err(super::migrated::explain(db, super::migrated::KEY_TABLE, store_err(e)).await),
    }
}

/// The manifest rows a load checks: every row, or those of `tenants` and of no tenant, with
/// the deployment row.
pub(super) async fn load_rows<D: KeyDb>(
    db: &mut D,
    tenants: Option<&[crate::TenantId]>,
) -> Result<Vec<ManifestRow>, Error> {
    let scopes: Option<Vec<String>> = tenants.map(|ts| {
        ts.iter()
            .map(|t| scope_of(Some(t.as_str())))
            .chain([scope_of(None), DEPLOYMENT.to_owned()])
            .collect()
    });
    rows(db, scopes.as_deref(), "").await.map_err(store_err)
}

/// How an operation takes part in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// A rotation, destroy, shred or root replacement: the deployment row is locked and
    /// rewritten.
    Change,
    /// A tenant's creation: a new group row at epoch 0, the deployment row left alone (unless
    /// the tenant had records before, a re-creation after a shred).
    Create,
    /// A rewrap: as [`Mode::Change`], and a table from before the key hierarchy (no
    /// deployment wrapping key, so no manifest), or one without a manifest where this store
    /// allows it (neither pinned nor seen), is let through: the rewrap writes its manifest in
    /// its first transaction.
    Rewrap,
}

/// A manifest change under way in a key-store transaction: what
/// [`KeyStore::manifest_begin`] read and checked, for [`KeyStore::manifest_commit`].
pub(super) struct Change {
    deployment: Option<ManifestRow>,
    /// No manifest yet, and an empty key table: created at commit.
    init: bool,
    /// No manifest, and the caller (a rewrap) writes it in the same transaction.
    absent: bool,
    groups: Vec<(Option<String>, Option<ManifestRow>)>,
}

impl Change {
    /// Whether the table had no manifest to change (a rewrap then writes one).
    pub(super) fn absent(&self) -> bool {
        self.absent
    }
}

impl<P: KekProvider> KeyStore<P> {
    /// Refuses, at every load and key-store write, a key table whose deployment epoch
    /// ([`LoadReport::manifest_epoch`](super::LoadReport::manifest_epoch)) is below `epoch`,
    /// and one without a manifest. A database writer who restores the whole key table from an
    /// older backup (every record and manifest row consistent, just old) is caught only by
    /// this: keep the pin outside the database (configuration, a parameter store) and raise
    /// it after key operations (the CLI prints the new epoch after each).
    ///
    /// ```
    /// # use diesel::prelude::*;
    /// # use encrypted_types::kek::local::LocalKek;
    /// # use encrypted_types::store::KeyStore;
    /// # use encrypted_types::Error;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let conn = &mut SqliteConnection::establish(":memory:").unwrap();
    /// # KeyStore::<LocalKek>::run_migrations(conn)?;
    /// let kek = dir.path().join("dev.kek");
    /// let store = KeyStore::new(LocalKek::create(&kek)?);
    /// store.create_tenant(conn, Some(&"clinic-a".into()))?;
    /// store.rotate_data_key(conn, Some(&"clinic-a".into()))?;
    /// let epoch = store.load(conn)?.1.manifest_epoch.unwrap();
    ///
    /// let pinned = KeyStore::new(LocalKek::open(&kek)?).with_min_epoch(epoch + 1);
    /// assert!(matches!(pinned.load(conn), Err(Error::Manifest { .. })));
    /// # Ok::<(), encrypted_types::Error>(())
    /// ```
    #[must_use]
    pub fn with_min_epoch(mut self, epoch: u64) -> Self {
        self.min_epoch = Some(epoch);
        self
    }

    /// Loads a key table that has records but no manifest (one from before 0.3), for the
    /// upgrade window: until `encrypted-types keys manifest --rebuild`
    /// ([`KeyStore::rebuild_manifest`]) or a rewrap writes it. Without it such a table is
    /// refused, since a database writer could delete the manifest to hide a rollback. Ignored
    /// once a minimum epoch is pinned or this store has seen a manifest.
    ///
    /// ```
    /// # use encrypted_types::kek::local::LocalKek;
    /// # use encrypted_types::store::KeyStore;
    /// # let dir = tempfile::tempdir().unwrap();
    /// let upgrading =
    ///     KeyStore::new(LocalKek::create(dir.path().join("kek"))?).allow_unmanifested_table();
    /// # drop(upgrading);
    /// # Ok::<(), encrypted_types::Error>(())
    /// ```
    #[must_use]
    pub fn allow_unmanifested_table(mut self) -> Self {
        self.unmanifested_allowed = true;
        self
    }

    crate::db::sync_and_async! {
        /// The key table's deployment epoch, from its manifest row, authenticated (one KEK
        /// call the first time): what to pin with [`KeyStore::with_min_epoch`]. `None` for a
        /// table without a manifest.
        ///
        /// ```
        /// # use diesel::prelude::*;
        /// # use encrypted_types::kek::local::LocalKek;
        /// # use encrypted_types::store::KeyStore;
        /// # let dir = tempfile::tempdir().unwrap();
        /// # let conn = &mut SqliteConnection::establish(":memory:").unwrap();
        /// # KeyStore::<LocalKek>::run_migrations(conn)?;
        /// let store = KeyStore::new(LocalKek::create(dir.path().join("dev.kek"))?);
        /// store.create_tenant(conn, Some(&"clinic-a".into()))?;
        /// let before = store.manifest_epoch(conn)?.unwrap();
        /// store.rotate_data_key(conn, Some(&"clinic-a".into()))?;
        /// assert_eq!(store.manifest_epoch(conn)?, Some(before + 1));
        /// # Ok::<(), encrypted_types::Error>(())
        /// ```
        ///
        /// # Errors
        /// [`Error::Manifest`] if the row does not authenticate; [`Error::Store`].
        pub fn manifest_epoch / manifest_epoch_async(&self)
            -> Result<Option<u64>, Error> where Backend: KeyTable => self.manifest_epoch_on
    }

    async fn manifest_epoch_on<D: KeyDb>(&self, db: &mut D) -> Result<Option<u64>, Error> {
        let Some(d) = deployment_row(db).await? else {
            return Ok(None);
        };
        self.verify_row(db, &d, &mut HashMap::new()).await?;
        Ok(u64::try_from(d.epoch).ok())
    }

    crate::db::sync_and_async! {
        /// Compares the manifest with the key records, writing nothing: the groups a
        /// [`KeyStore::rebuild_manifest`] would accept as they are, and whether the rows add
        /// up to the deployment row. A full [`KeyStore::load`] refuses a table for which this
        /// lists anything.
        ///
        /// ```
        /// # use diesel::prelude::*;
        /// # use encrypted_types::kek::local::LocalKek;
        /// # use encrypted_types::store::KeyStore;
        /// # let dir = tempfile::tempdir().unwrap();
        /// # let conn = &mut SqliteConnection::establish(":memory:").unwrap();
        /// # KeyStore::<LocalKek>::run_migrations(conn)?;
        /// let store = KeyStore::new(LocalKek::create(dir.path().join("dev.kek"))?);
        /// store.create_tenant(conn, Some(&"clinic-a".into()))?;
        /// let status = store.manifest_status(conn)?;
        /// assert!(status.differing.is_empty() && status.adds_up);
        /// # Ok::<(), encrypted_types::Error>(())
        /// ```
        ///
        /// # Errors
        /// [`Error::Store`], provider errors.
        pub fn manifest_status / manifest_status_async(&self)
            -> Result<ManifestStatus, Error> where Backend: KeyTable => self.manifest_status_on
    }

    async fn manifest_status_on<D: KeyDb>(&self, db: &mut D) -> Result<ManifestStatus, Error> {
        let all = rows(db, None, "").await.map_err(store_err)?;
        let records = super::all_keys(db).await.map_err(store_err)?;
        let groups = by_scope(&records);
        let mut cache = HashMap::new();
        let mut differing = Vec::new();
        let mut deployment = None;
        let mut acc = [0u8; 32];
        let mut entries_ok = true;
        let dw = match all.iter().find(|r| r.scope == DEPLOYMENT) {
            Some(d) => {
                deployment = Some(d.clone());
                self.verify_row(db, d, &mut cache).await.ok()
            }
            None => None,
        };
        // Listed too: a deployment row that does not authenticate, and one whose epoch is
        // below this store's pin or what it saw (a table restored whole), so that a rebuild
        // of it is reviewed and confirmed, never silent.
        let below = deployment
            .as_ref()
            .is_some_and(|d| self.epoch_allowed(d.epoch).is_err());
        if deployment.is_some() && (dw.is_none() || below) {
            differing.push(describe(DEPLOYMENT));
        }
        for r in all.iter().filter(|r| r.scope != DEPLOYMENT) {
            let ok = self.verify_row(db, r, &mut cache).await.is_ok();
            let recs = groups.get(&r.scope);
            let matches = recs.is_some_and(|recs| {
                group_digest(recs.iter().copied()).as_slice() == r.digest.as_slice()
            });
            // A row without records is listed too: a rebuild removes it.
            if !ok || !matches {
                differing.push(describe(&r.scope));
            }
            match (&dw, ok) {
                (Some(w), true) if r.epoch > 0 => {
                    xor(&mut acc, &w.manifest_entry(&r.scope, r.epoch, &r.digest));
                }
                (_, false) => entries_ok = false,
                _ => {}
            }
        }
        for scope in groups.keys() {
            if !all.iter().any(|r| &r.scope == scope) {
                differing.push(describe(scope));
            }
        }
        differing.sort();
        let adds_up = entries_ok
            && dw.is_some()
            && deployment
                .as_ref()
                .is_some_and(|d| d.digest.as_slice() == acc.as_slice());
        Ok(ManifestStatus {
            epoch: deployment.and_then(|d| u64::try_from(d.epoch).ok()),
            differing,
            adds_up,
        })
    }

    crate::db::sync_and_async! {
        /// Writes the manifest of the key records as they are now: the upgrade step of a table
        /// from before 0.3, and the operator's acceptance of a table that a full load refuses
        /// for its manifest (after a library version before 0.3 changed keys). Every record
        /// must authenticate and the table must load otherwise (the checks of
        /// [`KeyStore::load`], without the manifest's); review
        /// [`KeyStore::manifest_status`] first, since what it lists is accepted as it is. The
        /// new deployment epoch is above every earlier one, the pin and what this store saw.
        ///
        /// `reviewed` is the status the operator read: if the groups that differ are no longer
        /// the same when the rebuild runs, it writes nothing ([`Error::Store`]), so that what
        /// is accepted is what was reviewed.
        ///
        /// ```
        /// # use diesel::prelude::*;
        /// # use encrypted_types::kek::local::LocalKek;
        /// # use encrypted_types::store::KeyStore;
        /// # let dir = tempfile::tempdir().unwrap();
        /// # let conn = &mut SqliteConnection::establish(":memory:").unwrap();
        /// # KeyStore::<LocalKek>::run_migrations(conn)?;
        /// let store = KeyStore::new(LocalKek::create(dir.path().join("dev.kek"))?);
        /// store.create_tenant(conn, Some(&"clinic-a".into()))?;
        /// let reviewed = store.manifest_status(conn)?;
        /// let status = store.rebuild_manifest(conn, &reviewed)?;
        /// assert!(status.differing.is_empty(), "nothing differed");
        /// assert_eq!(store.load(conn)?.1.manifest_epoch, status.epoch);
        /// # Ok::<(), encrypted_types::Error>(())
        /// ```
        ///
        /// # Errors
        /// As [`KeyStore::load`]; [`Error::Store`] if the table changed since `reviewed`.
        pub fn rebuild_manifest / rebuild_manifest_async(&self, reviewed: &ManifestStatus)
            -> Result<ManifestStatus, Error> where Backend: KeyTable => self.rebuild_manifest_on
    }

    async fn rebuild_manifest_on<D: KeyDb>(
        &self,
        db: &mut D,
        reviewed: &ManifestStatus,
    ) -> Result<ManifestStatus, Error> {
        self.load_checked(db, None, false).await?;
        let (epoch, differing) = crate::db::transaction(db, store_err, async |db| {
            let mac = self.mac_wrapper(db).await?;
            // Under the deployment row's lock, the status again, by the same rule as the one
            // reviewed: what is accepted is what was read.
            rows(db, Some(&[DEPLOYMENT.to_owned()]), D::Backend::UPDATE_LOCK)
                .await
                .map_err(store_err)?;
            let now = self.manifest_status_on(db).await?;
            if now.differing != reviewed.differing || now.adds_up != reviewed.adds_up {
                return Err(Error::Store(
                    "the key table changed since its manifest was reviewed: review it again \
                     (`keys manifest`)"
                        .into(),
                ));
            }
            let (epoch, _) = self.manifest_build(db, &mac).await?;
            Ok((epoch, now.differing))
        })
        .await?;
        tracing::warn!(
            target: "encrypted_types::audit",
            event = "key_manifest_rebuilt",
            epoch,
            accepted = differing.len(),
        );
        Ok(ManifestStatus {
            epoch: u64::try_from(epoch).ok(),
            differing,
            adds_up: true,
        })
    }

    /// The deployment wrapping key `id` whose MAC key authenticates manifest rows, checked
    /// against its own record.
    async fn manifest_key<D: KeyDb>(
        &self,
        db: &mut D,
        id: i64,
        cache: &mut HashMap<i64, Arc<Wrapper>>,
    ) -> Result<Option<Arc<Wrapper>>, Error> {
        if let Some(w) = cache.get(&id) {
            return Ok(Some(Arc::clone(w)));
        }
        let Some(r) = key_by_id(db, id).await.map_err(store_err)? else {
            return Ok(None);
        };
        match self.verified_with(&r, &r) {
            Ok(w) => {
                cache.insert(id, Arc::clone(&w));
                Ok(Some(w))
            }
            Err(Error::KeyRecord { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn verify_row<D: KeyDb>(
        &self,
        db: &mut D,
        row: &ManifestRow,
        cache: &mut HashMap<i64, Arc<Wrapper>>,
    ) -> Result<Arc<Wrapper>, Error> {
        match self.manifest_key(db, row.mac_key_id, cache).await? {
            Some(w)
                if w.manifest_verifies(
                    &row.scope,
                    row.epoch,
                    &row.digest,
                    row.mac_key_id,
                    &row.mac,
                ) =>
            {
                Ok(w)
            }
            _ => Err(refuse(&row.scope, NOT_AUTHENTIC)),
        }
    }

    /// Refuses a deployment epoch below the pinned minimum or below one this process saw.
    pub(super) fn epoch_allowed(&self, epoch: i64) -> Result<(), Error> {
        self.epoch_allowed_since(epoch, self.seen_epoch.load(Ordering::SeqCst))
    }

    /// [`KeyStore::epoch_allowed`] against `seen`, the highest epoch this process had seen
    /// when the caller read the table: a later load of this process raising it meanwhile
    /// does not make this read look rolled back.
    pub(super) fn epoch_allowed_since(&self, epoch: i64, seen: u64) -> Result<(), Error> {
        let epoch = u64::try_from(epoch).unwrap_or(0);
        if self.min_epoch.is_some_and(|min| epoch < min) {
            return Err(refuse(DEPLOYMENT, BELOW_PIN));
        }
        if epoch < seen {
            return Err(refuse(DEPLOYMENT, BELOW_SEEN));
        }
        Ok(())
    }

    /// Whether a table without a manifest may be used: opted in, with no pin and no manifest
    /// seen by this store.
    fn unmanifested_ok(&self) -> bool {
        self.unmanifested_allowed
            && self.min_epoch.is_none()
            && self.seen_epoch.load(Ordering::SeqCst) == 0
    }

    pub(super) fn saw_epoch(&self, epoch: i64) {
        self.seen_epoch
            .fetch_max(u64::try_from(epoch).unwrap_or(0), Ordering::SeqCst);
    }

    /// Whether the manifest vouches for `records` as all of `tenant`'s records: its row and
    /// the deployment row authenticate, the epoch is allowed, and the digest matches. What a
    /// deletion (`purge_tenant`) checks besides the records themselves, so that a tenant
    /// shredded once and created again cannot be made to look shredded by deleting its new
    /// records. A table without a manifest passes only where one is allowed.
    pub(super) async fn manifest_confirms<D: KeyDb>(
        &self,
        db: &mut D,
        tenant: &str,
        records: &[KeyRecord],
    ) -> Result<(), Error> {
        let seen = self.seen_epoch.load(Ordering::SeqCst);
        let scope = scope_of(Some(tenant));
        // Every row in one statement: the deployment row and the rows it must add up to come
        // from one moment (PostgreSQL's READ COMMITTED gives each statement its own).
        let found = rows(db, None, "").await.map_err(store_err)?;
        let mut cache = HashMap::new();
        let Some(d) = found.iter().find(|r| r.scope == DEPLOYMENT) else {
            return if self.unmanifested_ok() {
                Ok(())
            } else {
                Err(refuse(DEPLOYMENT, NO_MANIFEST))
            };
        };
        let dw = self.verify_row(db, d, &mut cache).await?;
        self.epoch_allowed_since(d.epoch, seen)?;
        let row = found
            .iter()
            .find(|r| r.scope == scope)
            .ok_or_else(|| refuse(&scope, NO_ROW))?;
        self.verify_row(db, row, &mut cache).await?;
        if group_digest(records).as_slice() != row.digest.as_slice() {
            return Err(refuse(&scope, DIFFERS));
        }
        // And the rows add up (a full load's step 5), so that the tenant's older records put
        // back with its older row cannot make it look shredded either.
        let expected = d.digest.clone();
        if self.digest_of(db, &dw, found, |_| None).await?.as_slice() != expected.as_slice() {
            return Err(refuse(DEPLOYMENT, DOES_NOT_ADD_UP));
        }
        Ok(())
    }

    /// The first statements of a key-store transaction that changes the records of `groups`:
    /// locks the deployment row, and checks the rows of `groups` (MAC, and a digest equal to
    /// the records as they are now), so that a change never builds on records rolled back
    /// behind the manifest's back.
    pub(super) async fn manifest_begin<D: KeyDb>(
        &self,
        db: &mut D,
        groups: &[Option<&str>],
        mode: Mode,
    ) -> Result<Change, Error> {
        // Before any read: another thread's load raising it meanwhile is not a rollback.
        let seen = self.seen_epoch.load(Ordering::SeqCst);
        let mut scopes: Vec<String> = groups.iter().map(|t| scope_of(*t)).collect();
        let mut groups: Vec<Option<String>> = groups.iter().map(|t| t.map(str::to_owned)).collect();
        let recreates = mode == Mode::Create
            && !rows(db, Some(&scopes), "")
                .await
                .map_err(store_err)?
                .is_empty();
        let lock = if mode == Mode::Create && !recreates {
            ""
        } else {
            D::Backend::UPDATE_LOCK
        };
        let deployment = rows(db, Some(&[DEPLOYMENT.to_owned()]), lock)
            .await
            .map_err(store_err)?
            .pop();
        let mut cache = HashMap::new();
        let mut change = Change {
            deployment: None,
            init: false,
            absent: false,
            groups: Vec::new(),
        };
        match deployment {
            None => {
                let q = Query::sql(format!("SELECT COUNT(*) AS n FROM {KEYS}"));
                let records = D::Backend::count_q(db, &q).await.map_err(store_err)?;
                // A table from before the key hierarchy has no deployment wrapping key, and no
                // manifest: the key-store write refuses it itself, naming `rewrap`.
                let q = Query::sql(format!(
                    "SELECT COUNT(*) AS n FROM {KEYS} WHERE purpose = 'wrapping' AND tenant IS NULL AND state <> 'destroyed'"
                ));
                let hierarchical = D::Backend::count_q(db, &q).await.map_err(store_err)? > 0;
                if records > 0 {
                    // A pinned or seen manifest is never given up, not even for a table that
                    // looks older than the hierarchy.
                    let pinned = self.min_epoch.is_some() || seen > 0;
                    if !pinned && (!hierarchical || self.unmanifested_ok()) {
                        change.absent = true;
                        return Ok(change);
                    }
                    return Err(refuse(DEPLOYMENT, NO_MANIFEST));
                }
                if let Some(r) = rows(db, None, "").await.map_err(store_err)?.first() {
                    return Err(refuse(&r.scope, GONE));
                }
                // An empty table where a manifest was pinned or seen: wiped, not new.
                if self.min_epoch.is_some() || seen > 0 {
                    return Err(refuse(DEPLOYMENT, NO_MANIFEST));
                }
                // The first key of the table is the deployment wrapping key, of no tenant.
                change.init = true;
                if !groups.contains(&None) {
                    groups.push(None);
                    scopes.push(scope_of(None));
                }
            }
            Some(d) => {
                self.verify_row(db, &d, &mut cache).await?;
                self.epoch_allowed_since(d.epoch, seen)?;
                change.deployment = Some(d);
            }
        }
        for (tenant, scope) in groups.into_iter().zip(&scopes) {
            let row = rows(db, Some(std::slice::from_ref(scope)), lock)
                .await
                .map_err(store_err)?
                .pop();
            let records = group_records(db, tenant.as_deref()).await?;
            match &row {
                Some(r) => {
                    self.verify_row(db, r, &mut cache).await?;
                    if group_digest(&records).as_slice() != r.digest.as_slice() {
                        return Err(refuse(scope, DIFFERS));
                    }
                }
                None if !records.is_empty() => return Err(refuse(scope, NO_ROW)),
                None => {}
            }
            change.groups.push((tenant, row));
        }
        Ok(change)
    }

    /// The last statements of the transaction [`KeyStore::manifest_begin`] began: each
    /// group's row gets the digest of its records now, MAC'd under `mac` (the active
    /// deployment wrapping key), at the next epoch (0 for a new group); the deployment row,
    /// if a group row existed before, its next epoch and digest. Returns the deployment epoch
    /// (`None` without a manifest).
    pub(super) async fn manifest_commit<D: KeyDb>(
        &self,
        db: &mut D,
        change: Change,
        mac: &Wrapper,
    ) -> Result<Option<i64>, Error> {
        if change.absent {
            return Ok(None);
        }
        let mac_id = i64::from(mac.id.get());
        let mut changed: Vec<(ManifestRow, ManifestRow)> = Vec::new();
        for (tenant, old) in change.groups {
            let records = group_records(db, tenant.as_deref()).await?;
            if records.is_empty() && old.is_none() {
                continue;
            }
            let scope = scope_of(tenant.as_deref());
            let digest = group_digest(&records).to_vec();
            let epoch = match &old {
                Some(o) => o
                    .epoch
                    .checked_add(1)
                    .ok_or_else(|| refuse(&scope, NOT_AUTHENTIC))?,
                None => 0,
            };
            let row = ManifestRow {
                mac: mac.manifest_mac(&scope, epoch, &digest),
                scope,
                epoch,
                digest,
                mac_key_id: mac_id,
            };
            write_row(db, &row, old.is_some()).await?;
            if let Some(old) = old {
                changed.push((old, row));
            }
        }
        let old = change.deployment;
        if changed.is_empty() && !change.init {
            return Ok(old.map(|d| d.epoch));
        }
        let digest = match &old {
            Some(d) if d.mac_key_id == mac_id => {
                let mut acc: [u8; 32] = d
                    .digest
                    .as_slice()
                    .try_into()
                    .map_err(|_| refuse(DEPLOYMENT, NOT_AUTHENTIC))?;
                for (before, after) in &changed {
                    if before.epoch > 0 {
                        xor(
                            &mut acc,
                            &mac.manifest_entry(&before.scope, before.epoch, &before.digest),
                        );
                    }
                    xor(
                        &mut acc,
                        &mac.manifest_entry(&after.scope, after.epoch, &after.digest),
                    );
                }
                acc
            }
            // A new deployment wrapping key (a rewrap): the rows as they were must add up to
            // the old deployment row under its own key first, or a rollback of a tenant's
            // records and row together would be folded into a new, consistent digest.
            Some(d) => {
                let mut cache = HashMap::new();
                let old_key = self.verify_row(db, d, &mut cache).await?;
                let before: HashMap<&str, &ManifestRow> =
                    changed.iter().map(|(b, _)| (b.scope.as_str(), b)).collect();
                let was = self
                    .deployment_digest(db, &old_key, |scope| before.get(scope).copied())
                    .await?;
                if was.as_slice() != d.digest.as_slice() {
                    return Err(refuse(DEPLOYMENT, DOES_NOT_ADD_UP));
                }
                self.deployment_digest(db, mac, |_| None).await?
            }
            // A new manifest: from every row.
            None => self.deployment_digest(db, mac, |_| None).await?,
        };
        let epoch = old
            .as_ref()
            .map_or(Some(1), |d| d.epoch.checked_add(1))
            .ok_or_else(|| refuse(DEPLOYMENT, NOT_AUTHENTIC))?;
        self.write_deployment(db, mac, epoch, &digest, old.is_some())
            .await?;
        Ok(Some(epoch))
    }

    async fn write_deployment<D: KeyDb>(
        &self,
        db: &mut D,
        mac: &Wrapper,
        epoch: i64,
        digest: &[u8; 32],
        existed: bool,
    ) -> Result<(), Error> {
        let row = ManifestRow {
            scope: DEPLOYMENT.to_owned(),
            epoch,
            digest: digest.to_vec(),
            mac_key_id: i64::from(mac.id.get()),
            mac: mac.manifest_mac(DEPLOYMENT, epoch, digest),
        };
        // Not recorded as seen here: the transaction may still fail to commit. The next load
        // records it.
        write_row(db, &row, existed).await?;
        tracing::info!(target: "encrypted_types::audit", event = "key_manifest_written", epoch);
        Ok(())
    }

    /// The deployment digest under `mac` from every group row, each checked first; `instead`
    /// gives a row to count in place of the stored one (the row a change replaced).
    async fn deployment_digest<'r, D: KeyDb>(
        &self,
        db: &mut D,
        mac: &Wrapper,
        instead: impl Fn(&str) -> Option<&'r ManifestRow>,
    ) -> Result<[u8; 32], Error> {
        let all = rows(db, None, "").await.map_err(store_err)?;
        self.digest_of(db, mac, all, instead).await
    }

    /// The deployment digest under `mac` from the group rows among `all`, each checked first.
    async fn digest_of<'r, D: KeyDb>(
        &self,
        db: &mut D,
        mac: &Wrapper,
        all: Vec<ManifestRow>,
        instead: impl Fn(&str) -> Option<&'r ManifestRow>,
    ) -> Result<[u8; 32], Error> {
        let mut cache = HashMap::new();
        let mut acc = [0u8; 32];
        for stored in all {
            if stored.scope == DEPLOYMENT {
                continue;
            }
            let r = instead(&stored.scope).cloned().unwrap_or(stored);
            self.verify_row(db, &r, &mut cache).await?;
            if r.epoch > 0 {
                xor(&mut acc, &mac.manifest_entry(&r.scope, r.epoch, &r.digest));
            }
        }
        Ok(acc)
    }

    /// Re-MACs every group row under `mac` (a rewrap's new deployment wrapping key) before
    /// the old ones are destroyed, each checked under its own key first. The deployment row
    /// moved to `mac` at the rewrap's first change.
    pub(super) async fn manifest_rekey<D: KeyDb>(
        &self,
        db: &mut D,
        mac: &Wrapper,
    ) -> Result<(), Error> {
        let mac_id = i64::from(mac.id.get());
        let all = rows(db, None, D::Backend::UPDATE_LOCK)
            .await
            .map_err(store_err)?;
        let mut cache = HashMap::new();
        for r in all {
            if r.scope == DEPLOYMENT || r.mac_key_id == mac_id {
                continue;
            }
            self.verify_row(db, &r, &mut cache).await?;
            let row = ManifestRow {
                mac: mac.manifest_mac(&r.scope, r.epoch, &r.digest),
                mac_key_id: mac_id,
                ..r
            };
            write_row(db, &row, true).await?;
        }
        Ok(())
    }

    /// Writes the manifest of the records as they are: every group's row at its next epoch
    /// (1 for a new one), rows of groups with no records removed, and the deployment row at
    /// an epoch above every earlier one, the pin and what this process saw. Returns the
    /// groups whose row was missing, unauthenticated or different.
    pub(super) async fn manifest_build<D: KeyDb>(
        &self,
        db: &mut D,
        mac: &Wrapper,
    ) -> Result<(i64, Vec<String>), Error> {
        let mac_id = i64::from(mac.id.get());
        let deployment = rows(db, Some(&[DEPLOYMENT.to_owned()]), D::Backend::UPDATE_LOCK)
            .await
            .map_err(store_err)?
            .pop();
        let mut existing: HashMap<String, ManifestRow> = rows(db, None, D::Backend::UPDATE_LOCK)
            .await
            .map_err(store_err)?
            .into_iter()
            .filter(|r| r.scope != DEPLOYMENT)
            .map(|r| (r.scope.clone(), r))
            .collect();
        let q = Query::sql(format!(
            "SELECT {RECORD_COLS} FROM {KEYS} ORDER BY key_id{}",
            D::Backend::SHARE_LOCK
        ));
        let records = D::Backend::load_records(db, &q).await.map_err(store_err)?;
        let groups = by_scope(&records);
        let mut cache = HashMap::new();
        let mut differing = Vec::new();
        let mut acc = [0u8; 32];
        for (scope, recs) in &groups {
            let digest = group_digest(recs.iter().copied()).to_vec();
            let old = existing.remove(scope);
            let fine = match &old {
                Some(o) => self.verify_row(db, o, &mut cache).await.is_ok() && o.digest == digest,
                None => false,
            };
            if !fine {
                differing.push(describe(scope));
            }
            let epoch = old
                .as_ref()
                .map_or(Some(1), |o| o.epoch.max(0).checked_add(1))
                .ok_or_else(|| refuse(scope, NOT_AUTHENTIC))?;
            let row = ManifestRow {
                mac: mac.manifest_mac(scope, epoch, &digest),
                scope: scope.clone(),
                epoch,
                digest,
                mac_key_id: mac_id,
            };
            write_row(db, &row, old.is_some()).await?;
            xor(
                &mut acc,
                &mac.manifest_entry(&row.scope, epoch, &row.digest),
            );
        }
        for scope in existing.keys() {
            differing.push(describe(scope));
            delete_row(db, scope).await?;
        }
        let floor = deployment
            .as_ref()
            .map_or(0, |d| u64::try_from(d.epoch).unwrap_or(0))
            .max(self.min_epoch.unwrap_or(0))
            .max(self.seen_epoch.load(Ordering::SeqCst));
        let epoch = i64::try_from(floor)
            .ok()
            .and_then(|e| e.checked_add(1))
            .ok_or_else(|| refuse(DEPLOYMENT, NOT_AUTHENTIC))?;
        self.write_deployment(db, mac, epoch, &acc, deployment.is_some())
            .await?;
        differing.sort();
        Ok((epoch, differing))
    }
}

/// What a load checks of the manifest, once the records are authenticated: every row it
/// reads authenticates under a live deployment wrapping key (`macs`); the deployment epoch
/// is at or above the pin and what this process saw; every group of `records` has a row
/// whose digest matches; and, for a full load (`full`), every row that records a change has
/// records and the rows add up to the deployment row. Returns the deployment epoch.
pub(super) fn check<P: KekProvider>(
    store: &KeyStore<P>,
    rows: &[ManifestRow],
    records: &[KeyRecord],
    macs: &HashMap<crate::format::key::KeyId, Arc<Wrapper>>,
    full: bool,
    seen: u64,
) -> Result<Option<i64>, Error> {
    let key = |row: &ManifestRow| {
        u32::try_from(row.mac_key_id)
            .ok()
            .and_then(|id| macs.get(&crate::format::key::KeyId::from(id)))
    };
    let verified = |row: &ManifestRow| {
        key(row)
            .filter(|w| {
                w.manifest_verifies(&row.scope, row.epoch, &row.digest, row.mac_key_id, &row.mac)
            })
            .ok_or_else(|| refuse(&row.scope, NOT_AUTHENTIC))
    };
    let Some(deployment) = rows.iter().find(|r| r.scope == DEPLOYMENT) else {
        // An empty table is new, unless a manifest was pinned or seen (then it was wiped).
        if records.is_empty() && rows.is_empty() && store.min_epoch.is_none() && seen == 0 {
            return Ok(None);
        }
        if store.unmanifested_ok() {
            tracing::warn!(target: "encrypted_types::audit", event = "key_table_unmanifested");
            return Ok(None);
        }
        return Err(refuse(DEPLOYMENT, NO_MANIFEST));
    };
    let dw = verified(deployment)?;
    store.epoch_allowed_since(deployment.epoch, seen)?;
    // Grouped by tenant, not by scope text: no string is built per record (100,000 tenants).
    let mut groups: HashMap<Option<&str>, Vec<&KeyRecord>> = HashMap::new();
    for r in records {
        groups.entry(r.tenant.as_deref()).or_default().push(r);
    }
    let mut by_tenant: HashMap<Option<&str>, &ManifestRow> = HashMap::new();
    let mut unknown: Vec<&str> = Vec::new();
    for r in rows {
        match r.scope.strip_prefix("tenant:") {
            Some(t) => by_tenant.insert(Some(t), r),
            None if r.scope == "none" => by_tenant.insert(None, r),
            None if r.scope == DEPLOYMENT => None,
            // A scope no group has, so no records: "gone" above epoch 0 (as in §6).
            None => {
                if r.epoch > 0 {
                    unknown.push(&r.scope);
                }
                None
            }
        };
    }
    // In scope order ("none" first, then tenants), so the first failure named is the same in
    // every run and in the reference.
    let mut work: Vec<(Option<&str>, Vec<&KeyRecord>)> = groups.into_iter().collect();
    work.sort_unstable_by_key(|(t, _)| *t);
    // Each group's row checked against its records, and (full load) its share of the
    // deployment digest computed in the same pass.
    let outcomes = super::load::parallel_map(&work, |(tenant, recs)| {
        let row = by_tenant
            .get(tenant)
            .ok_or_else(|| refuse(&scope_of(*tenant), NO_ROW))?;
        verified(row)?;
        if group_digest(recs.iter().copied()).as_slice() != row.digest.as_slice() {
            return Err(refuse(&row.scope, DIFFERS));
        }
        Ok((full && row.epoch > 0).then(|| dw.manifest_entry(&row.scope, row.epoch, &row.digest)))
    })
    .ok_or_else(|| Error::Store("a thread checking the key manifest failed".into()))?;
    let mut acc = [0u8; 32];
    for outcome in outcomes {
        if let Some(entry) = outcome? {
            xor(&mut acc, &entry);
        }
    }
    // A row with no records: a group created after the records were read (epoch 0), or one
    // whose records were removed.
    let present: std::collections::HashSet<Option<&str>> = work.iter().map(|(t, _)| *t).collect();
    let mut gone: Vec<&str> = by_tenant
        .iter()
        .filter(|(tenant, row)| row.epoch > 0 && !present.contains(*tenant))
        .map(|(_, row)| row.scope.as_str())
        .chain(unknown)
        .collect();
    gone.sort_unstable();
    if let Some(scope) = gone.first() {
        return Err(refuse(scope, GONE));
    }
    // Every row above epoch 0 has records (just checked), so the pass above saw them all.
    if full && acc.as_slice() != deployment.digest.as_slice() {
        return Err(refuse(DEPLOYMENT, DOES_NOT_ADD_UP));
    }
    Ok(Some(deployment.epoch))
}
