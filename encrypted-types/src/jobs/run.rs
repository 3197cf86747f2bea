//! Running a job: a claimed unit processed batch by batch with compare-and-swap writes, under
//! its lease, then the closing count.

#[allow(clippy::wildcard_imports)] // the job engine's parts share its imports and types
use super::*;

impl Run<'_> {
    /// Processes a claimed unit batch by batch. Returns `false` when `max_batches` stopped it
    /// (or its lease was lost).
    pub(super) async fn work<D: JobDb, F: FnMut(&Progress)>(
        &mut self,
        db: &mut D,
        mut unit: Unit,
        on_batch: &mut F,
    ) -> Result<bool, Error> {
        let pass = self
            .passes
            .get(unit.pass)
            .ok_or_else(|| Error::Job("pass".into()))?;
        let t = &self.table;
        let index = pass.index();
        let more = pass.more();
        let mut deadlocks = 0u32;
        loop {
            if self
                .options
                .max_batches
                .is_some_and(|max| self.report.batches >= max)
            {
                self.release(db, &unit.name, false).await?;
                return Ok(false);
            }
            let mut q = Query::new();
            let mut conds = range_conds::<D::Backend>(
                &mut q,
                t,
                unit.from.as_ref(),
                unit.to.as_ref(),
                unit.last.as_ref(),
            )?;
            conds.push(pass.todo_cond::<D::Backend>());
            select::<D::Backend>(
                t,
                &pass.read_expr::<D::Backend>(),
                &more,
                index,
                &conds,
                &mut q,
                Some(self.options.batch.max(1)),
            );
            let rows = D::Backend::load_rows(db, &q).await.map_err(job_err)?;
            let Some(last) = rows.last().map(|r| RowKey(r.key.clone())) else {
                self.release(db, &unit.name, true).await?;
                return Ok(true);
            };
            // Opening and sealing run outside the transaction: they are pure computation.
            let mut writes = Vec::new();
            let mut skips: BTreeMap<SkipReason, u64> = BTreeMap::new();
            for row in rows {
                let bind = match t.binding(&row) {
                    Ok(b) => b,
                    Err(r) => {
                        *skips.entry(r).or_default() += 1;
                        continue;
                    }
                };
                let old = Zeroizing::new(row.v.unwrap_or_default());
                match prepare(
                    self.keyring,
                    t,
                    pass,
                    &old,
                    &row.more,
                    row.i.as_deref(),
                    row.t.as_deref(),
                    bind.as_ref(),
                )? {
                    Outcome::Write(sets) => writes.push(Write {
                        key: row.key,
                        old,
                        more: row.more,
                        sets,
                    }),
                    Outcome::Nothing => {}
                    Outcome::Skip(r) => *skips.entry(r).or_default() += 1,
                }
            }
            if let Some(hook) = self.options.before_write {
                hook();
            }
            let outcome = transaction(db, async |db| -> Result<(u64, u64), TxError> {
                self.fence(db, &unit.name).await?;
                let (mut ok, mut missed) = (0u64, 0u64);
                for w in &writes {
                    match self.cas_retrying(db, pass, w).await? {
                        Cas::Written => ok += 1,
                        Cas::Superseded => missed += 1,
                        // Left for the closing check, which counts it independently.
                        Cas::Unsettled => {}
                    }
                }
                let mut q = Query::new();
                let lk = q.bind::<D::Backend>(Param::Text(last.encode()));
                let n = q.bind::<D::Backend>(Param::Int(i64::try_from(ok).unwrap_or(i64::MAX)));
                let j = q.bind::<D::Backend>(Param::Text(self.job.to_owned()));
                let u = q.bind::<D::Backend>(Param::Text(unit.name.clone()));
                q.sql = format!(
                    "UPDATE {JOBS} SET last_key = {lk}, rows_done = rows_done + {n} \
                     WHERE job = {j} AND unit = {u}"
                );
                db.exec(&q).await?;
                Ok((ok, missed))
            })
            .await;
            drop(writes);
            let (ok, missed) = match outcome {
                Ok(v) => v,
                Err(TxError::LeaseLost) => return Ok(false),
                // A deadlock victim (InnoDB) was rolled back whole: read the batch again.
                Err(e) if is_deadlock(&e) && deadlocks < RETRIES => {
                    backoff(db, deadlocks).await;
                    deadlocks += 1;
                    continue;
                }
                Err(e) => return Err(tx_err(e)),
            };
            deadlocks = 0;
            // Counted once the batch is committed: a rolled-back batch is read again.
            for (r, n) in skips {
                *self.report.skipped.entry(r).or_default() += n;
            }
            unit.last = Some(last);
            unit.rows_done = unit
                .rows_done
                .saturating_add(i64::try_from(ok).unwrap_or(0));
            self.report.batches += 1;
            self.report.written += ok;
            self.report.conflicts += missed;
            report_batch(
                self.job,
                on_batch,
                Progress {
                    column: pass.writes,
                    rows_done: u64::try_from(unit.rows_done).unwrap_or(0),
                    conflicts: self.report.conflicts,
                    last_key: unit.last.clone(),
                    written: self.report.written,
                    estimated_total: self.estimated_total,
                },
            );
        }
    }

    /// Renews this worker's lease on `unit`, first thing in a batch's transaction (it locks
    /// the unit's row): a worker that lost the unit writes nothing.
    pub(super) async fn fence<D: JobDb>(&self, db: &mut D, unit: &str) -> Result<(), TxError> {
        let mut q = Query::new();
        let l = q.bind::<D::Backend>(Param::Int(self.lease_secs()));
        let j = q.bind::<D::Backend>(Param::Text(self.job.to_owned()));
        let u = q.bind::<D::Backend>(Param::Text(unit.to_owned()));
        let me = q.bind::<D::Backend>(Param::Text(self.worker.clone()));
        let now = D::Backend::now();
        q.sql = format!(
            "UPDATE {JOBS} SET lease_until = {now} + {l}, updated_at = {now} \
             WHERE job = {j} AND unit = {u} AND lease_owner = {me} AND state = 'pending'"
        );
        if db.exec(&q).await? == 1 {
            Ok(())
        } else {
            Err(TxError::LeaseLost)
        }
    }

    /// Compare-and-swap of one value; on a miss, reads the row again and retries, so a value
    /// another job re-sealed meanwhile is still processed.
    pub(super) async fn cas_retrying<D: JobDb>(
        &self,
        db: &mut D,
        pass: &Pass<'_>,
        w: &Write,
    ) -> Result<Cas, TxError> {
        let t = &self.table;
        let mut sets = w.sets.clone();
        let mut old: Zeroizing<Vec<u8>> = w.old.clone();
        let mut more = w.more.clone();
        let fields = pass.more();
        for attempt in 0..4 {
            let mut q = Query::new();
            let assigns: Vec<String> = sets
                .iter()
                .map(|(c, v)| {
                    let ph = match v {
                        Some(v) => q.bind::<D::Backend>(Param::Bytes(v.clone())),
                        None => "NULL".to_owned(),
                    };
                    format!("{} = {ph}", D::Backend::quote(c))
                })
                .collect();
            let k = key_eq::<D::Backend>(&mut q, t, &w.key)?;
            // A compound index is compared on every field it was computed from; any other
            // pass on the one value it read.
            let same = if fields.is_empty() {
                let o = q.bind::<D::Backend>(Param::Bytes(old.to_vec()));
                format!("{} = {o}", pass.read_expr::<D::Backend>())
            } else {
                let conds: Vec<String> = fields
                    .iter()
                    .zip(&more)
                    .map(|(c, v)| match v {
                        Some(v) => {
                            let o = q.bind::<D::Backend>(Param::Bytes(v.to_vec()));
                            format!("{} = {o}", D::Backend::quote(c))
                        }
                        None => format!("{} IS NULL", D::Backend::quote(c)),
                    })
                    .collect();
                conds.join(" AND ")
            };
            q.sql = format!(
                "UPDATE {} SET {} WHERE {k} AND {same}",
                t.quoted,
                assigns.join(", "),
            );
            let changed = db.exec(&q).await?;
            // The bound copy of the old value may be legacy plaintext.
            for p in &mut q.params {
                if let Param::Bytes(b) = p {
                    zeroize::Zeroize::zeroize(b);
                }
            }
            if changed > 0 {
                return Ok(Cas::Written);
            }
            if attempt == 3 {
                break;
            }
            let mut r = Query::new();
            let k = key_eq::<D::Backend>(&mut r, t, &w.key)?;
            select::<D::Backend>(
                t,
                &pass.read_expr::<D::Backend>(),
                &fields,
                pass.index(),
                &[k],
                &mut r,
                Some(1),
            );
            if D::Backend::SKIP_LOCKED {
                // A locking read sees the latest committed row, not the transaction's snapshot
                // (MySQL's REPEATABLE READ would return the bytes that just missed).
                r.sql.push_str(" FOR UPDATE");
            }
            let Some(row) = D::Backend::load_rows(db, &r).await?.into_iter().next() else {
                return Ok(Cas::Superseded); // deleted meanwhile
            };
            let Ok(bind) = t.binding(&row) else {
                return Ok(Cas::Superseded);
            };
            // A compound index's first field may be NULL; any other pass reads a value.
            let v = match row.v {
                Some(v) => v,
                None if !fields.is_empty() => Vec::new(),
                None => return Ok(Cas::Superseded),
            };
            old = Zeroizing::new(v);
            more = row.more;
            match prepare(
                self.keyring,
                t,
                pass,
                &old,
                &more,
                row.i.as_deref(),
                row.t.as_deref(),
                bind.as_ref(),
            )? {
                Outcome::Write(s) => sets = s,
                Outcome::Nothing | Outcome::Skip(_) => return Ok(Cas::Superseded),
            }
        }
        Ok(Cas::Unsettled)
    }

    /// This run's key range: all of it, or the range of [`Scope::Range`].
    fn range(&self) -> (Option<RowKey>, Option<RowKey>) {
        match &self.options.scope {
            Scope::Range { from, to } => (from.clone(), to.clone()),
            _ => (None, None),
        }
    }

    /// Values of `pass`'s column in `from..to` on a retired key or an older suite, in SQL.
    async fn rotate_count<D: JobDb>(
        &self,
        db: &mut D,
        pass: &Pass<'_>,
        range: (Option<&RowKey>, Option<&RowKey>),
        retired: &[KeyId],
        older: &[[u8; 2]],
    ) -> Result<u64, Error> {
        let col = D::Backend::quote(pass.column.column);
        let cond = rotate_cond::<D::Backend>(&col, retired, older);
        count_where(db, &self.table, range.0, range.1, cond).await
    }

    /// The job's work at the start of this run, for progress: exact in SQL where that is
    /// cheap (rotation, backfill), otherwise the values stored in the column (an upper bound
    /// that decrypts nothing).
    async fn estimate<D: JobDb>(&self, db: &mut D) -> Result<u64, Error> {
        let (from, to) = self.range();
        let mut total = 0u64;
        for pass in &self.passes {
            total += match &pass.op {
                Op::Rotate { retired, older } => {
                    self.rotate_count(db, pass, (from.as_ref(), to.as_ref()), retired, older)
                        .await?
                }
                Op::Backfill { legacy } => {
                    count_not_null(db, &self.table, legacy.column, from.as_ref(), to.as_ref())
                        .await?
                }
                _ => {
                    count_not_null(
                        db,
                        &self.table,
                        pass.column.column,
                        from.as_ref(),
                        to.as_ref(),
                    )
                    .await?
                }
            };
        }
        Ok(total)
    }

    /// Values in this run's scope still to do, counted independently of the work: values on
    /// a retired key (in SQL, from the header bytes) or legacy values (by [`format::classify`]).
    pub(super) async fn remaining<D: JobDb>(&self, db: &mut D) -> Result<u64, Error> {
        let t = &self.table;
        let (from, to) = self.range();
        let mut total = 0u64;
        for pass in &self.passes {
            match &pass.op {
                Op::Rotate { retired, older } => {
                    total += self
                        .rotate_count(db, pass, (from.as_ref(), to.as_ref()), retired, older)
                        .await?;
                }
                Op::Backfill { legacy } => {
                    total +=
                        count_not_null(db, t, legacy.column, from.as_ref(), to.as_ref()).await?;
                }
                Op::Encrypt => {
                    total +=
                        scan_legacy(db, self.keyring, t, pass.column, from.as_ref(), to.as_ref())
                            .await?;
                }
                // Every compound index recomputed from its decrypted fields (NULL when one is).
                Op::Compound { params, .. } => {
                    let fields = pass.more();
                    walk(
                        db,
                        t,
                        pass.column.column,
                        &fields,
                        Some(params.index_column),
                        &[],
                        from.as_ref(),
                        to.as_ref(),
                        |mut row| {
                            // The first field again, possibly legacy plaintext: wiped.
                            drop(Zeroizing::new(row.v.take()));
                            let Ok(bind) = t.binding(&row) else {
                                return;
                            };
                            if fresh_compound(
                                self.keyring,
                                t,
                                params,
                                &row.more,
                                row.t.as_deref(),
                                bind.as_ref(),
                            )
                            .is_ok_and(|new| row.i != new)
                            {
                                total += 1;
                            }
                        },
                    )
                    .await?;
                }
                // Every index recomputed from its decrypted value and compared with the stored
                // one; rows that cannot be opened were reported as skipped.
                Op::Reindex { params } => {
                    total += scan(
                        db,
                        t,
                        pass.column.column,
                        Some(params.index_column),
                        from.as_ref(),
                        to.as_ref(),
                        |row, v| {
                            let Ok(bind) = t.binding(row) else {
                                return false;
                            };
                            fresh_index(
                                self.keyring,
                                t,
                                pass.column,
                                params,
                                v,
                                row.t.as_deref(),
                                bind.as_ref(),
                            )
                            .is_ok_and(|new| row.i.as_deref() != Some(new.as_slice()))
                        },
                    )
                    .await?;
                }
            }
        }
        Ok(total)
    }

    pub(super) async fn run<D: JobDb, F: FnMut(&Progress)>(
        mut self,
        db: &mut D,
        on_batch: &mut F,
    ) -> Result<JobReport, Error> {
        self.report.already_finished = match self.plan(db).await {
            Ok(done) => done,
            Err(e) => {
                return Err(crate::store::migrated::explain(
                    db,
                    crate::store::migrated::JOB_TABLE,
                    e,
                )
                .await);
            }
        };
        // Best effort: a count that fails leaves the estimate out, never the job.
        self.estimated_total = self.estimate(db).await.ok();
        let mut stopped = false;
        // A model with nothing for this job to do (a reindex of a model without indexes).
        while !self.units.is_empty() {
            if self
                .options
                .max_batches
                .is_some_and(|max| self.report.batches >= max)
            {
                stopped = true;
                break;
            }
            match self.claim_retrying(db).await? {
                Some(unit) => {
                    if !self.work(db, unit, on_batch).await?
                        && self
                            .options
                            .max_batches
                            .is_some_and(|max| self.report.batches >= max)
                    {
                        stopped = true;
                        break;
                    }
                }
                None => {
                    if self.pending(db).await? == 0 {
                        break;
                    }
                    // Every unit left is held by another live worker: wait for it to finish
                    // or for its lease to run out.
                    db.sleep(self.options.lease.min(Duration::from_millis(500)) / 2)
                        .await;
                }
            }
        }
        if stopped {
            self.report.finished = false;
            return Ok(self.report);
        }
        let remaining = self.remaining(db).await?;
        self.report.remaining += remaining;
        self.report.finished = self.report.remaining == 0;
        if remaining > 0 {
            // Every unit passed, yet values are left: written behind the units since (an
            // application still on the old keyring or the legacy column) or skipped. The next
            // run of this job walks the units again instead of calling itself finished.
            self.reopen(db).await?;
        }
        Ok(self.report)
    }
}

pub(super) enum Cas {
    Written,
    /// A fresh read showed nothing left to do (an application write won).
    Superseded,
    /// The row kept changing under every retry.
    Unsettled,
}

/// Whether the database rolled the transaction back as a deadlock victim (InnoDB) or a
/// serialization failure: the whole transaction may run again.
pub(super) fn is_deadlock(e: &TxError) -> bool {
    matches!(
        e,
        TxError::Db(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::SerializationFailure,
            _,
        )) | TxError::Lib(Error::Contended)
    )
}

/// Retries of one transaction the database rolled back; then [`Error::Contended`].
pub(super) const RETRIES: u32 = 12;

/// A random pause before retry `attempt` (from 0): workers that collided do not collide again
/// in step. Grows from about 5 ms to at most about 1 s.
pub(super) async fn backoff<D: JobDb>(db: &mut D, attempt: u32) {
    let mut r = [0u8; 2];
    let jitter = match getrandom::fill(&mut r) {
        Ok(()) => u64::from(u16::from_le_bytes(r)),
        Err(_) => 32_768,
    };
    let base = 5u64.saturating_mul(1 << attempt.min(8)).min(1_000);
    // base/2 .. base*3/2
    let ms = base / 2 + base * jitter / 65_536;
    db.sleep(Duration::from_millis(ms)).await;
}

/// A job transaction. On MySQL/MariaDB a top-level one runs at `READ COMMITTED`: InnoDB's
/// next-key (gap) locks of `REPEATABLE READ` are what makes workers on neighbouring ranges,
/// or planners inserting into an empty job, deadlock; every read of the jobs that decides a
/// write is a locking read or a compare-and-swap, so the snapshot level adds nothing. Inside
/// a caller's transaction the caller's level stands.
pub(super) async fn transaction<D: JobDb, T>(
    db: &mut D,
    f: impl AsyncFnOnce(&mut D) -> Result<T, TxError>,
) -> Result<T, TxError> {
    if let Some(sql) = D::Backend::BEFORE_TRANSACTION
        && db.depth()? == 0
    {
        db.exec(&Query::sql(sql)).await?;
    }
    crate::db::transaction(db, TxError::Db, f).await
}

pub(super) fn tx_err(e: TxError) -> Error {
    match e {
        TxError::Lib(e) => e,
        TxError::LeaseLost => Error::Job("lease lost".into()),
        TxError::Db(e) => job_err(e),
    }
}

/// A short stable tag of a range, for unit names.
pub(super) fn range_tag(from: Option<&RowKey>, to: Option<&RowKey>) -> String {
    use sha2::Digest;
    let text = format!(
        "{}..{}",
        from.map(RowKey::encode).unwrap_or_default(),
        to.map(RowKey::encode).unwrap_or_default()
    );
    let d = sha2::Sha256::digest(text.as_bytes());
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

pub(super) fn worker_name(options: &JobOptions) -> Result<String, Error> {
    if let Some(w) = &options.worker {
        // The job table's lease_owner column holds 100 bytes.
        if w.is_empty() || w.len() > 100 {
            return Err(Error::Job("a worker name is 1 to 100 bytes".into()));
        }
        return Ok(w.clone());
    }
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).map_err(|_| Error::Rng)?;
    let tag: String = r.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("pid{}-{tag}", std::process::id()))
}

pub(super) async fn start<'a, D>(
    db: &mut D,
    model: &ModelInfo,
    job: &'a str,
    options: &'a JobOptions,
    keyring: &'a Keyring,
    passes: Vec<Pass<'a>>,
) -> Result<Run<'a>, Error>
where
    D: JobDb,
{
    if job.is_empty() || job.len() > 150 {
        return Err(Error::Job("a job name is 1 to 150 bytes".into()));
    }
    if let Scope::Parts(n) = options.scope
        && !(1..=MAX_PARTS).contains(&n)
    {
        return Err(Error::Job(format!(
            "Scope::Parts takes 1 to {MAX_PARTS} parts"
        )));
    }
    Ok(Run {
        job,
        worker: worker_name(options)?,
        options,
        keyring,
        table: Table {
            bind_unbound: options.bind_unbound,
            ..inspect(db, model).await?
        },
        passes,
        units: Vec::new(),
        report: JobReport::default(),
        estimated_total: None,
    })
}
