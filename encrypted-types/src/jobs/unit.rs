//! The job table: planning a job's units, claiming, releasing and reopening them.

#[allow(clippy::wildcard_imports)] // the job engine's parts share its imports and types
use super::*;

/// Errors inside a batch's transaction.
pub(super) enum TxError {
    Lib(Error),
    /// Another worker holds the unit now: this batch is rolled back.
    LeaseLost,
    Db(diesel::result::Error),
}

impl From<diesel::result::Error> for TxError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(e)
    }
}

impl From<Error> for TxError {
    fn from(e: Error) -> Self {
        Self::Lib(e)
    }
}

/// A unit of this run's scope: its name, its pass, and its key range.
pub(super) type Planned = (String, usize, Option<RowKey>, Option<RowKey>);

/// A unit this worker holds.
pub(super) struct Unit {
    pub(super) name: String,
    pub(super) pass: usize,
    pub(super) from: Option<RowKey>,
    pub(super) to: Option<RowKey>,
    pub(super) last: Option<RowKey>,
    pub(super) rows_done: i64,
}

pub(super) const JOBS: &str = "encrypted_types_jobs";
/// Parts of one job at most: every claim binds the names of the run's units.
pub(super) const MAX_PARTS: u32 = 1024;
pub(super) const UNIT_COLS: &str =
    "unit, operation, target, range_from, range_to, last_key, state, rows_done";

pub(super) fn decode_opt(s: Option<&str>) -> Result<Option<RowKey>, Error> {
    s.map(RowKey::decode).transpose()
}

/// One run of a job: plan or check its units, claim and process them until none is left,
/// then count what remains.
pub(super) struct Run<'a> {
    pub(super) job: &'a str,
    pub(super) worker: String,
    pub(super) options: &'a JobOptions,
    pub(super) keyring: &'a Keyring,
    pub(super) table: Table,
    pub(super) passes: Vec<Pass<'a>>,
    /// This run's units, by name.
    pub(super) units: Vec<String>,
    pub(super) report: JobReport,
    /// [`super::Progress::estimated_total`], counted when the run begins.
    pub(super) estimated_total: Option<u64>,
}

impl Run<'_> {
    pub(super) fn lease_secs(&self) -> i64 {
        i64::try_from(self.options.lease.as_secs().max(1)).unwrap_or(i64::MAX)
    }

    pub(super) fn units_in<B: crate::db::Exec>(&self, q: &mut Query) -> String {
        let phs: Vec<String> = self
            .units
            .iter()
            .map(|u| q.bind::<B>(Param::Text(u.clone())))
            .collect();
        format!("unit IN ({})", phs.join(", "))
    }

    pub(super) async fn list<D: JobDb>(&self, db: &mut D) -> Result<Vec<UnitRow>, Error> {
        let mut q = Query::new();
        let j = q.bind::<D::Backend>(Param::Text(self.job.to_owned()));
        q.sql = format!("SELECT {UNIT_COLS} FROM {JOBS} WHERE job = {j}");
        D::Backend::load_units(db, &q).await.map_err(job_err)
    }

    /// The unit names of this run's scope for pass `p`, with their ranges.
    pub(super) async fn wanted<D: JobDb>(
        &self,
        db: &mut D,
        existing: &[UnitRow],
    ) -> Result<Vec<Planned>, Error> {
        let mut out = Vec::new();
        match &self.options.scope {
            Scope::All => {
                for (p, pass) in self.passes.iter().enumerate() {
                    out.push((format!("{}#all", self.prefix(pass)), p, None, None));
                }
            }
            Scope::Range { from, to } => {
                let tag = range_tag(from.as_ref(), to.as_ref());
                for (p, pass) in self.passes.iter().enumerate() {
                    out.push((
                        format!("{}#r{tag}", self.prefix(pass)),
                        p,
                        from.clone(),
                        to.clone(),
                    ));
                }
            }
            Scope::Parts(n) => {
                // The first worker's plan stands: later workers take the parts it recorded.
                let planned: Vec<(usize, &UnitRow)> = existing
                    .iter()
                    .filter(|u| u.unit.contains("#p"))
                    .filter_map(|u| self.pass_of(&u.unit).map(|p| (p, u)))
                    .collect();
                if let Some(&(first, _)) = planned.first() {
                    // The recorded ranges, from one pass; a pass with no units yet (a column
                    // or index added under the same job name) gets the same ranges.
                    let mut ranges = Vec::new();
                    for (p, u) in &planned {
                        let (from, to) = (
                            decode_opt(u.range_from.as_deref())?,
                            decode_opt(u.range_to.as_deref())?,
                        );
                        if *p == first {
                            let part = u.unit.rsplit('#').next().unwrap_or("").to_owned();
                            ranges.push((part, from.clone(), to.clone()));
                        }
                        out.push((u.unit.clone(), *p, from, to));
                    }
                    for (p, pass) in self.passes.iter().enumerate() {
                        if planned.iter().any(|(q, _)| *q == p) {
                            continue;
                        }
                        for (part, from, to) in &ranges {
                            out.push((
                                format!("{}#{part}", self.prefix(pass)),
                                p,
                                from.clone(),
                                to.clone(),
                            ));
                        }
                    }
                    return Ok(out);
                }
                let bounds = self.boundaries(db, (*n).max(1)).await?;
                for (p, pass) in self.passes.iter().enumerate() {
                    let mut from: Option<RowKey> = None;
                    for (i, b) in bounds.iter().map(Some).chain([None]).enumerate() {
                        out.push((
                            format!("{}#p{i:04}", self.prefix(pass)),
                            p,
                            from.clone(),
                            b.cloned(),
                        ));
                        from = b.cloned();
                    }
                }
            }
        }
        Ok(out)
    }

    /// `n - 1` key tuples splitting the table's current rows into `n` ranges of about equal
    /// size (found with `OFFSET` once, when the job is planned).
    pub(super) async fn boundaries<D: JobDb>(
        &self,
        db: &mut D,
        n: u32,
    ) -> Result<Vec<RowKey>, Error> {
        let t = &self.table;
        let total = D::Backend::count_q(
            db,
            &Query {
                sql: format!("SELECT COUNT(*) AS n FROM {}", t.quoted),
                params: Vec::new(),
            },
        )
        .await
        .map_err(job_err)?;
        let mut out: Vec<RowKey> = Vec::new();
        for i in 1..i64::from(n) {
            let offset = total.saturating_mul(i) / i64::from(n);
            let sql = format!(
                "SELECT {}, NULL AS v, NULL AS i, NULL AS t FROM {} ORDER BY {} LIMIT 1 OFFSET {offset}",
                key_selects::<D::Backend>(t),
                t.quoted,
                t.qkey.join(", ")
            );
            let rows = D::Backend::load_rows(
                db,
                &Query {
                    sql,
                    params: Vec::new(),
                },
            )
            .await
            .map_err(job_err)?;
            if let Some(r) = rows.into_iter().next() {
                let k = RowKey(r.key);
                if out.last() != Some(&k) {
                    out.push(k);
                }
            }
        }
        Ok(out)
    }

    /// A unit's name before its range: `table.column`.
    pub(super) fn prefix(&self, pass: &Pass<'_>) -> String {
        format!("{}.{}", self.table.name, pass.writes)
    }

    /// The pass of this run a unit belongs to, if any (other units of the same job name are
    /// other tables' or columns' work).
    pub(super) fn pass_of(&self, unit: &str) -> Option<usize> {
        let prefix = unit.split('#').next().unwrap_or("");
        self.passes.iter().position(|p| self.prefix(p) == prefix)
    }

    pub(super) fn our_pass(&self, unit: &str) -> Result<usize, Error> {
        self.pass_of(unit)
            .ok_or_else(|| Error::Job(format!("unit {unit} is not this run's")))
    }

    pub(super) fn describe(&self) -> String {
        let targets: Vec<&str> = self.passes.iter().map(|p| p.target.as_str()).collect();
        targets.join("; ")
    }

    /// Checks the recorded identity of the job's units and records the missing ones of this
    /// run's scope; returns whether every one of them was already done.
    pub(super) async fn plan<D: JobDb>(&mut self, db: &mut D) -> Result<bool, Error> {
        for attempt in 0..=RETRIES {
            let result = transaction(db, async |db| -> Result<bool, TxError> {
                // Write first: on SQLite this takes the write lock before the read below, so
                // two planners queue instead of deadlocking on a lock upgrade; elsewhere it
                // serializes planners of the same job.
                let mut w = Query::new();
                let j = w.bind::<D::Backend>(Param::Text(self.job.to_owned()));
                w.sql = format!("UPDATE {JOBS} SET updated_at = updated_at WHERE job = {j}");
                db.exec(&w).await?;
                let existing = self.list(db).await?;
                let op = self.passes.first().map_or("", |p| p.op.name());
                for u in &existing {
                    if u.operation != op {
                        return Err(TxError::Lib(Error::JobMismatch {
                            job: self.job.to_owned(),
                            found: format!("{} of {}", u.operation, u.target),
                            wanted: format!("{op} of {}", self.describe()),
                        }));
                    }
                    let Some(pass) = self.pass_of(&u.unit).and_then(|p| self.passes.get(p)) else {
                        continue;
                    };
                    if u.target != pass.target {
                        return Err(TxError::Lib(Error::JobMismatch {
                            job: self.job.to_owned(),
                            found: u.target.clone(),
                            wanted: pass.target.clone(),
                        }));
                    }
                }
                let wanted = self.wanted(db, &existing).await?;
                let mut all_done = true;
                let mut names = Vec::new();
                for (name, p, from, to) in wanted {
                    names.push(name.clone());
                    if let Some(u) = existing.iter().find(|u| u.unit == name) {
                        all_done &= u.state == "done";
                        continue;
                    }
                    all_done = false;
                    let pass = self
                        .passes
                        .get(p)
                        .ok_or_else(|| Error::Job("pass".into()))?;
                    let mut q = Query::new();
                    let vals = [
                        q.bind::<D::Backend>(Param::Text(self.job.to_owned())),
                        q.bind::<D::Backend>(Param::Text(name.clone())),
                        q.bind::<D::Backend>(Param::Text(pass.op.name().to_owned())),
                        q.bind::<D::Backend>(Param::Text(pass.target.clone())),
                    ];
                    let mut bound = |k: &Option<RowKey>| match k {
                        Some(k) => q.bind::<D::Backend>(Param::Text(k.encode())),
                        None => "NULL".to_owned(),
                    };
                    let (f, t) = (bound(&from), bound(&to));
                    q.sql = format!(
                        "INSERT INTO {JOBS} (job, unit, operation, target, range_from, range_to, \
                         last_key, state, rows_done, lease_owner, lease_until, updated_at) \
                         VALUES ({}, {f}, {t}, NULL, 'pending', 0, NULL, NULL, {})",
                        vals.join(", "),
                        D::Backend::now()
                    );
                    db.exec(&q).await?;
                }
                self.units = names;
                Ok(all_done)
            })
            .await;
            match result {
                Ok(done) => return Ok(done),
                // Another worker planned the same units at the same moment: read its plan.
                Err(TxError::Db(diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::UniqueViolation,
                    _,
                ))) if attempt < RETRIES => {}
                Err(e) if is_deadlock(&e) && attempt < RETRIES => backoff(db, attempt).await,
                Err(e) => return Err(tx_err(e)),
            }
        }
        Err(Error::Contended)
    }

    /// Claims a pending unit of this run whose lease is free, expired or already this worker's.
    pub(super) async fn claim<D: JobDb>(&self, db: &mut D) -> Result<Option<Unit>, TxError> {
        let now = D::Backend::now();
        let lease = self.lease_secs();
        transaction(db, async |db| -> Result<Option<Unit>, TxError> {
            let mut q = Query::new();
            // `?` placeholders bind in the order they appear in the text.
            let j = q.bind::<D::Backend>(Param::Text(self.job.to_owned()));
            let ours = self.units_in::<D::Backend>(&mut q);
            let me = q.bind::<D::Backend>(Param::Text(self.worker.clone()));
            let free = format!(
                "job = {j} AND {ours} AND state = 'pending' AND \
                 (lease_owner IS NULL OR lease_owner = {me} OR lease_until < {now})"
            );
            let name = if D::Backend::SKIP_LOCKED {
                q.sql = format!(
                    "SELECT {UNIT_COLS} FROM {JOBS} WHERE {free} ORDER BY unit LIMIT 1 \
                     FOR UPDATE SKIP LOCKED"
                );
                let Some(u) = D::Backend::load_units(db, &q).await?.into_iter().next() else {
                    return Ok(None);
                };
                let mut q = Query::new();
                let me = q.bind::<D::Backend>(Param::Text(self.worker.clone()));
                let l = q.bind::<D::Backend>(Param::Int(lease));
                let j = q.bind::<D::Backend>(Param::Text(self.job.to_owned()));
                let un = q.bind::<D::Backend>(Param::Text(u.unit.clone()));
                q.sql = format!(
                    "UPDATE {JOBS} SET lease_owner = {me}, lease_until = {now} + {l} \
                     WHERE job = {j} AND unit = {un}"
                );
                db.exec(&q).await?;
                u.unit
            } else {
                // One writer at a time: a single UPDATE claims atomically.
                let mut u = Query::new();
                let me2 = u.bind::<D::Backend>(Param::Text(self.worker.clone()));
                let l = u.bind::<D::Backend>(Param::Int(lease));
                let jj = u.bind::<D::Backend>(Param::Text(self.job.to_owned()));
                let sub_j = u.bind::<D::Backend>(Param::Text(self.job.to_owned()));
                let sub_ours = self.units_in::<D::Backend>(&mut u);
                let sub_me = u.bind::<D::Backend>(Param::Text(self.worker.clone()));
                u.sql = format!(
                    "UPDATE {JOBS} SET lease_owner = {me2}, lease_until = {now} + {l} \
                     WHERE job = {jj} AND unit = (SELECT unit FROM {JOBS} WHERE job = {sub_j} \
                     AND {sub_ours} AND state = 'pending' AND (lease_owner IS NULL OR \
                     lease_owner = {sub_me} OR lease_until < {now}) ORDER BY unit LIMIT 1)"
                );
                if db.exec(&u).await? == 0 {
                    return Ok(None);
                }
                let mut s = Query::new();
                let j = s.bind::<D::Backend>(Param::Text(self.job.to_owned()));
                let me = s.bind::<D::Backend>(Param::Text(self.worker.clone()));
                let ours = self.units_in::<D::Backend>(&mut s);
                s.sql = format!(
                    "SELECT {UNIT_COLS} FROM {JOBS} WHERE job = {j} AND lease_owner = {me} AND \
                     state = 'pending' AND {ours} ORDER BY unit LIMIT 1"
                );
                let Some(row) = D::Backend::load_units(db, &s).await?.into_iter().next() else {
                    return Ok(None);
                };
                row.unit
            };
            let rows = self.list(db).await?;
            let row = rows
                .into_iter()
                .find(|r| r.unit == name)
                .ok_or_else(|| Error::Job("claimed unit vanished".into()))?;
            Ok(Some(Unit {
                pass: self.our_pass(&row.unit)?,
                from: decode_opt(row.range_from.as_deref())?,
                to: decode_opt(row.range_to.as_deref())?,
                last: decode_opt(row.last_key.as_deref())?,
                rows_done: row.rows_done,
                name,
            }))
        })
        .await
    }

    /// [`Run::claim`], again after a deadlock (two claimers on InnoDB).
    pub(super) async fn claim_retrying<D: JobDb>(&self, db: &mut D) -> Result<Option<Unit>, Error> {
        let mut attempt = 0;
        loop {
            match self.claim(db).await {
                Err(e) if is_deadlock(&e) && attempt < RETRIES => {
                    backoff(db, attempt).await;
                    attempt += 1;
                }
                other => return other.map_err(tx_err),
            }
        }
    }

    pub(super) async fn pending<D: JobDb>(&self, db: &mut D) -> Result<i64, Error> {
        let mut q = Query::new();
        let j = q.bind::<D::Backend>(Param::Text(self.job.to_owned()));
        let ours = self.units_in::<D::Backend>(&mut q);
        q.sql = format!(
            "SELECT COUNT(*) AS n FROM {JOBS} WHERE job = {j} AND {ours} AND state = 'pending'"
        );
        D::Backend::count_q(db, &q).await.map_err(job_err)
    }

    /// Ends this worker's hold on a unit: done, or released for another worker.
    pub(super) async fn release<D: JobDb>(
        &self,
        db: &mut D,
        unit: &str,
        done: bool,
    ) -> Result<(), Error> {
        let mut q = Query::new();
        let j = q.bind::<D::Backend>(Param::Text(self.job.to_owned()));
        let u = q.bind::<D::Backend>(Param::Text(unit.to_owned()));
        let me = q.bind::<D::Backend>(Param::Text(self.worker.clone()));
        let state = if done { "state = 'done', " } else { "" };
        q.sql = format!(
            "UPDATE {JOBS} SET {state}lease_owner = NULL, lease_until = NULL, updated_at = {} \
             WHERE job = {j} AND unit = {u} AND lease_owner = {me}",
            D::Backend::now()
        );
        for attempt in 0..RETRIES {
            match transaction(db, async |db| Ok(db.exec(&q).await?)).await {
                Err(e) if is_deadlock(&e) => backoff(db, attempt).await,
                other => return other.map(|_| ()).map_err(tx_err),
            }
        }
        Err(Error::Contended)
    }

    /// Sets this run's done units back to pending, from their start.
    pub(super) async fn reopen<D: JobDb>(&self, db: &mut D) -> Result<(), Error> {
        let mut q = Query::new();
        let j = q.bind::<D::Backend>(Param::Text(self.job.to_owned()));
        let ours = self.units_in::<D::Backend>(&mut q);
        q.sql = format!(
            "UPDATE {JOBS} SET state = 'pending', last_key = NULL, lease_owner = NULL, \
             lease_until = NULL, updated_at = {} WHERE job = {j} AND {ours} AND state = 'done'",
            D::Backend::now()
        );
        for attempt in 0..RETRIES {
            match transaction(db, async |db| Ok(db.exec(&q).await?)).await {
                Err(e) if is_deadlock(&e) => backoff(db, attempt).await,
                other => return other.map(|_| ()).map_err(tx_err),
            }
        }
        Err(Error::Contended)
    }
}
