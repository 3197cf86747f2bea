//! Where every job stands, read from the job table: what an operator watches while workers run.

use std::collections::BTreeMap;

use super::{JOBS, JobDb, JobTable, job_err};
use crate::Error;
use crate::db::{Query, sync_and_async};

/// One job of the job table, summed over its units ([`status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobStatus {
    /// The job's name.
    pub job: String,
    /// Its operation: `rotate`, `reindex` or `encrypt` (several, comma-separated, if a name
    /// was reused across operations).
    pub operation: String,
    /// Units (one column or index over one key range).
    pub units: u64,
    /// Units done.
    pub done: u64,
    /// Units a worker holds now (an unexpired lease, by the database's clock).
    pub leased: u64,
    /// Values written, over every unit and run.
    pub rows_done: u64,
    /// Unix seconds of the last committed batch or state change.
    pub updated_at: i64,
}

impl JobStatus {
    /// Every unit is done. (The job's own closing count is what proves a finished job; this
    /// is the table's record of it.)
    pub fn complete(&self) -> bool {
        self.done == self.units
    }
}

sync_and_async! {
    /// Every job recorded in the job table, newest first: units done, held by a worker and
    /// pending, and values written. Reads no key values and needs no keyring.
    ///
    /// # Errors
    /// [`Error::Job`] if the job table cannot be read (run the key store's migrations first).
    pub fn status / status_async() -> Result<Vec<JobStatus>, Error> where Backend: JobTable => status_on
}

async fn status_on<D>(db: &mut D) -> Result<Vec<JobStatus>, Error>
where
    D: JobDb,
{
    let q = Query::sql(format!(
        "SELECT job, operation, state, rows_done, lease_until, updated_at, {} AS db_now FROM {JOBS}",
        D::Backend::now()
    ));
    let mut jobs: BTreeMap<String, JobStatus> = BTreeMap::new();
    let units = match D::Backend::load_status(db, &q).await {
        Ok(units) => units,
        Err(e) => {
            let e = job_err(e);
            return Err(
                crate::store::migrated::explain(db, crate::store::migrated::JOB_TABLE, e).await,
            );
        }
    };
    for u in units {
        let j = jobs.entry(u.job.clone()).or_insert_with(|| JobStatus {
            job: u.job.clone(),
            operation: String::new(),
            units: 0,
            done: 0,
            leased: 0,
            rows_done: 0,
            updated_at: i64::MIN,
        });
        if !j.operation.split(',').any(|o| o == u.operation) {
            if !j.operation.is_empty() {
                j.operation.push(',');
            }
            j.operation.push_str(&u.operation);
        }
        j.units += 1;
        j.done += u64::from(u.state == "done");
        j.leased += u64::from(u.state != "done" && u.lease_until.is_some_and(|l| l >= u.db_now));
        j.rows_done += u64::try_from(u.rows_done).unwrap_or(0);
        j.updated_at = j.updated_at.max(u.updated_at);
    }
    let mut out: Vec<JobStatus> = jobs.into_values().collect();
    out.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then(a.job.cmp(&b.job)));
    Ok(out)
}
