//! How the library runs its own SQL (the key table's and the jobs'), on a sync Diesel
//! connection or a diesel-async one, with one implementation of every operation.
//!
//! Each operation is an `async fn` over [`Db`]. A sync connection runs each statement when
//! its future is made and hands back a ready future, so the sync API drives the whole
//! operation with `block_on`, a poll that never waits; a diesel-async connection awaits.

use std::future::Future;
use std::time::Duration;

use diesel::QueryResult;
use diesel::connection::LoadConnection;
use diesel::deserialize::QueryableByName;
use diesel::sql_types::{BigInt, Binary, Nullable, Text};

use crate::Error;

/// A bound parameter.
#[doc(hidden)]
#[derive(Clone)]
pub enum Param {
    /// `BIGINT`.
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// A text or NULL.
    OptText(Option<String>),
    /// A `BIGINT` or NULL.
    OptInt(Option<i64>),
    /// Bytes or NULL.
    OptBytes(Option<Vec<u8>>),
}

// Parameters may hold legacy plaintext or wrapped keys: their Debug shows only kind and size.
impl std::fmt::Debug for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Int(_) | Self::OptInt(_) => f.write_str("Int(..)"),
            Self::Text(s) => write!(f, "Text(<{} bytes>)", s.len()),
            Self::OptText(s) => write!(f, "Text(<{:?} bytes>)", s.as_ref().map(String::len)),
            Self::Bytes(b) => write!(f, "Bytes(<{} bytes>)", b.len()),
            Self::OptBytes(b) => write!(f, "Bytes(<{:?} bytes>)", b.as_ref().map(Vec::len)),
        }
    }
}

/// SQL text with its parameters, numbered as the backend wants them.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct Query {
    pub(crate) sql: String,
    pub(crate) params: Vec<Param>,
}

impl Query {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A statement without parameters.
    pub(crate) fn sql(sql: impl Into<String>) -> Self {
        Self {
            sql: sql.into(),
            params: Vec::new(),
        }
    }

    /// Adds a parameter; returns its placeholder.
    pub(crate) fn bind<B: Exec>(&mut self, p: Param) -> String {
        self.params.push(p);
        B::placeholder(self.params.len())
    }
}

/// Running [`Query`]s on one backend, sync and async. Implemented for Diesel's SQLite,
/// PostgreSQL and MySQL backends, with their features.
pub trait Exec: diesel::backend::Backend + Sized {
    /// `$n` or `?`.
    #[doc(hidden)]
    fn placeholder(n: usize) -> String;
    /// Loads rows.
    #[doc(hidden)]
    fn load_sync<C, R>(conn: &mut C, q: &Query) -> QueryResult<Vec<R>>
    where
        C: LoadConnection<Backend = Self>,
        R: QueryableByName<Self> + 'static;
    /// Runs a statement; returns rows changed.
    #[doc(hidden)]
    fn exec_sync<C: LoadConnection<Backend = Self>>(conn: &mut C, q: &Query) -> QueryResult<usize>;
    /// Loads rows.
    #[cfg(feature = "async")]
    #[doc(hidden)]
    fn load_async<C, R>(
        conn: &mut C,
        q: &Query,
    ) -> impl Future<Output = QueryResult<Vec<R>>> + Send
    where
        C: diesel_async::AsyncConnection<Backend = Self>,
        R: QueryableByName<Self> + Send + 'static;
    /// Runs a statement; returns rows changed.
    #[cfg(feature = "async")]
    #[doc(hidden)]
    fn exec_async<C>(conn: &mut C, q: &Query) -> impl Future<Output = QueryResult<usize>> + Send
    where
        C: diesel_async::AsyncConnection<Backend = Self>;
}

/// A connection the library's operations run on: a sync one (`Blocking`) or a diesel-async one
/// (`NonBlocking`).
pub trait Db {
    type Backend: Exec;
    fn load<R>(&mut self, q: &Query) -> impl Future<Output = QueryResult<Vec<R>>> + Send
    where
        R: QueryableByName<Self::Backend> + Send + 'static;
    fn exec(&mut self, q: &Query) -> impl Future<Output = QueryResult<usize>> + Send;
    /// How many transactions are open on the connection (0: none, 2: a savepoint).
    fn depth(&mut self) -> QueryResult<u32>;
    fn begin(&mut self) -> impl Future<Output = QueryResult<()>> + Send;
    fn commit(&mut self) -> impl Future<Output = QueryResult<()>> + Send;
    fn rollback(&mut self) -> impl Future<Output = QueryResult<()>> + Send;
    /// Waits: the thread sleeps on a sync connection, the task on an async one.
    fn sleep(&mut self, d: Duration) -> impl Future<Output = ()> + Send;
}

fn depth_of(status: &mut diesel::connection::TransactionManagerStatus) -> QueryResult<u32> {
    Ok(status
        .transaction_depth()?
        .map_or(0, std::num::NonZeroU32::get))
}

/// A sync Diesel connection.
pub(crate) struct Blocking<'a, C>(pub(crate) &'a mut C);

impl<C> Db for Blocking<'_, C>
where
    C: LoadConnection,
    C::Backend: Exec,
{
    type Backend = C::Backend;

    fn load<R>(&mut self, q: &Query) -> impl Future<Output = QueryResult<Vec<R>>> + Send
    where
        R: QueryableByName<C::Backend> + Send + 'static,
    {
        std::future::ready(C::Backend::load_sync(self.0, q))
    }

    fn exec(&mut self, q: &Query) -> impl Future<Output = QueryResult<usize>> + Send {
        std::future::ready(C::Backend::exec_sync(self.0, q))
    }

    fn depth(&mut self) -> QueryResult<u32> {
        use diesel::connection::TransactionManager;
        depth_of(C::TransactionManager::transaction_manager_status_mut(
            self.0,
        ))
    }

    fn begin(&mut self) -> impl Future<Output = QueryResult<()>> + Send {
        use diesel::connection::TransactionManager;
        std::future::ready(C::TransactionManager::begin_transaction(self.0))
    }

    fn commit(&mut self) -> impl Future<Output = QueryResult<()>> + Send {
        use diesel::connection::TransactionManager;
        std::future::ready(C::TransactionManager::commit_transaction(self.0))
    }

    fn rollback(&mut self) -> impl Future<Output = QueryResult<()>> + Send {
        use diesel::connection::TransactionManager;
        std::future::ready(C::TransactionManager::rollback_transaction(self.0))
    }

    fn sleep(&mut self, d: Duration) -> impl Future<Output = ()> + Send {
        std::thread::sleep(d);
        std::future::ready(())
    }
}

/// A diesel-async connection.
#[cfg(feature = "async")]
pub(crate) struct NonBlocking<'a, C>(pub(crate) &'a mut C);

#[cfg(feature = "async")]
impl<C> Db for NonBlocking<'_, C>
where
    C: diesel_async::AsyncConnection,
    C::Backend: Exec,
{
    type Backend = C::Backend;

    fn load<R>(&mut self, q: &Query) -> impl Future<Output = QueryResult<Vec<R>>> + Send
    where
        R: QueryableByName<C::Backend> + Send + 'static,
    {
        C::Backend::load_async(self.0, q)
    }

    fn exec(&mut self, q: &Query) -> impl Future<Output = QueryResult<usize>> + Send {
        C::Backend::exec_async(self.0, q)
    }

    fn depth(&mut self) -> QueryResult<u32> {
        use diesel_async::TransactionManager;
        depth_of(C::TransactionManager::transaction_manager_status_mut(
            self.0,
        ))
    }

    fn begin(&mut self) -> impl Future<Output = QueryResult<()>> + Send {
        use diesel_async::TransactionManager;
        C::TransactionManager::begin_transaction(self.0)
    }

    fn commit(&mut self) -> impl Future<Output = QueryResult<()>> + Send {
        use diesel_async::TransactionManager;
        C::TransactionManager::commit_transaction(self.0)
    }

    fn rollback(&mut self) -> impl Future<Output = QueryResult<()>> + Send {
        use diesel_async::TransactionManager;
        C::TransactionManager::rollback_transaction(self.0)
    }

    fn sleep(&mut self, d: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(d)
    }
}

/// Runs `f` in a transaction (a savepoint inside the caller's): committed if it returns
/// `Ok`, rolled back otherwise, as Diesel's `Connection::transaction` does (and a savepoint whose
/// release failed is rolled back, which Diesel leaves open). `err` turns the database's own
/// errors (begin, commit, rollback) into `E`.
pub(crate) async fn transaction<D, T, E>(
    db: &mut D,
    err: impl Fn(diesel::result::Error) -> E,
    f: impl AsyncFnOnce(&mut D) -> Result<T, E>,
) -> Result<T, E>
where
    D: Db,
{
    db.begin().await.map_err(&err)?;
    match f(db).await {
        Ok(value) => {
            let depth = db.depth().map_err(&err)?;
            match db.commit().await {
                Ok(()) => Ok(value),
                Err(commit) => {
                    // diesel-async, and sync Diesel at the top level, close the level on a
                    // failed commit: rolling back then would end the caller's level. Sync
                    // Diesel leaves a failed `RELEASE SAVEPOINT` open: roll that one back.
                    // Either way the commit's own error is the one reported (a serialization
                    // failure is what the jobs retry).
                    if db.depth().ok() == Some(depth) {
                        let _ = db.rollback().await;
                    }
                    Err(err(commit))
                }
            }
        }
        Err(user) => match db.rollback().await {
            Ok(()) | Err(diesel::result::Error::BrokenTransactionManager) => Err(user),
            Err(rollback) => Err(err(rollback)),
        },
    }
}

/// Drives an operation on a [`Blocking`] connection, whose futures are ready when made.
pub(crate) fn block_on<T>(f: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
    use std::task::{Context, Poll, Waker};
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        // Only an async connection's future waits; a sync one never reaches here.
        Poll::Pending => Err(Error::Job(
            "a sync operation waited: an async connection was used through the sync API".into(),
        )),
    }
}

fn boxed<DB>(
    q: &Query,
) -> diesel::query_builder::BoxedSqlQuery<'_, DB, diesel::query_builder::SqlQuery>
where
    DB: diesel::backend::Backend
        + diesel::sql_types::HasSqlType<BigInt>
        + diesel::sql_types::HasSqlType<Text>
        + diesel::sql_types::HasSqlType<Binary>,
    i64: diesel::serialize::ToSql<BigInt, DB>,
    str: diesel::serialize::ToSql<Text, DB>,
    [u8]: diesel::serialize::ToSql<Binary, DB>,
    Option<i64>: diesel::serialize::ToSql<Nullable<BigInt>, DB>,
    Option<String>: diesel::serialize::ToSql<Nullable<Text>, DB>,
    Option<Vec<u8>>: diesel::serialize::ToSql<Nullable<Binary>, DB>,
{
    let mut b = diesel::sql_query(q.sql.as_str()).into_boxed::<DB>();
    for p in &q.params {
        b = match p {
            Param::Int(v) => b.bind::<BigInt, _>(*v),
            Param::Text(s) => b.bind::<Text, _>(s.as_str()),
            Param::Bytes(v) => b.bind::<Binary, _>(v.as_slice()),
            Param::OptInt(v) => b.bind::<Nullable<BigInt>, _>(*v),
            Param::OptText(s) => b.bind::<Nullable<Text>, _>(s.clone()),
            Param::OptBytes(v) => b.bind::<Nullable<Binary>, _>(v.clone()),
        };
    }
    b
}

macro_rules! exec {
    ($db:ty, placeholder = $ph:expr) => {
        impl Exec for $db {
            fn placeholder(n: usize) -> String {
                let f: fn(usize) -> String = $ph;
                f(n)
            }

            fn load_sync<C, R>(conn: &mut C, q: &Query) -> QueryResult<Vec<R>>
            where
                C: LoadConnection<Backend = Self>,
                R: QueryableByName<Self> + 'static,
            {
                use diesel::RunQueryDsl;
                boxed::<Self>(q).load(conn)
            }

            fn exec_sync<C: LoadConnection<Backend = Self>>(
                conn: &mut C,
                q: &Query,
            ) -> QueryResult<usize> {
                use diesel::RunQueryDsl;
                boxed::<Self>(q).execute(conn)
            }

            #[cfg(feature = "async")]
            fn load_async<C, R>(
                conn: &mut C,
                q: &Query,
            ) -> impl Future<Output = QueryResult<Vec<R>>> + Send
            where
                C: diesel_async::AsyncConnection<Backend = Self>,
                R: QueryableByName<Self> + Send + 'static,
            {
                diesel_async::RunQueryDsl::load(boxed::<Self>(q), conn)
            }

            #[cfg(feature = "async")]
            fn exec_async<C>(
                conn: &mut C,
                q: &Query,
            ) -> impl Future<Output = QueryResult<usize>> + Send
            where
                C: diesel_async::AsyncConnection<Backend = Self>,
            {
                diesel_async::RunQueryDsl::execute(boxed::<Self>(q), conn)
            }
        }
    };
}

#[cfg(feature = "sqlite")]
exec!(diesel::sqlite::Sqlite, placeholder = |_| "?".to_owned());
#[cfg(feature = "postgres")]
exec!(diesel::pg::Pg, placeholder = |n| format!("${n}"));
#[cfg(feature = "mysql")]
exec!(diesel::mysql::Mysql, placeholder = |_| "?".to_owned());

/// Writes an operation's sync entry point (on a Diesel connection) and its `_async` twin (on a
/// diesel-async connection), both calling the one implementation `$core`, so the two APIs
/// cannot drift apart. The docs given are the sync one's; the twin points to them.
macro_rules! sync_and_async {
    // A free function; `; $cb` names a trailing progress callback.
    (
        $(#[$attr:meta])*
        pub fn $name:ident / $async_name:ident ($($arg:ident: $ty:ty),* $(; $cb:ident)?)
            -> $ret:ty where Backend: $bound:path => $core:ident
    ) => {
        $(#[$attr])*
        pub fn $name<C>(
            conn: &mut C,
            $($arg: $ty,)*
            $(mut $cb: impl FnMut(&Progress),)?
        ) -> $ret
        where
            C: diesel::connection::LoadConnection,
            C::Backend: $bound,
        {
            $crate::db::block_on($core(&mut $crate::db::Blocking(conn), $($arg,)* $(&mut $cb)?))
        }

        #[doc = concat!("As [`", stringify!($name), "`], on a diesel-async connection.")]
        ///
        /// # Errors
        #[doc = concat!("As [`", stringify!($name), "`].")]
        #[cfg(feature = "async")]
        pub async fn $async_name<C>(
            conn: &mut C,
            $($arg: $ty,)*
            $(mut $cb: impl FnMut(&Progress) + Send,)?
        ) -> $ret
        where
            C: diesel_async::AsyncConnection,
            C::Backend: $bound,
        {
            $core(&mut $crate::db::NonBlocking(conn), $($arg,)* $(&mut $cb)?).await
        }
    };
    // A method taking `&self`.
    (
        $(#[$attr:meta])*
        pub fn $name:ident / $async_name:ident (&self $(, $arg:ident: $ty:ty)*)
            -> $ret:ty where Backend: $bound:path => self.$core:ident
    ) => {
        $(#[$attr])*
        pub fn $name<C>(&self, conn: &mut C, $($arg: $ty),*) -> $ret
        where
            C: diesel::connection::LoadConnection,
            C::Backend: $bound,
        {
            $crate::db::block_on(self.$core(&mut $crate::db::Blocking(conn), $($arg),*))
        }

        #[doc = concat!("As [`KeyStore::", stringify!($name), "`], on a diesel-async connection.")]
        ///
        /// # Errors
        #[doc = concat!("As [`KeyStore::", stringify!($name), "`].")]
        #[cfg(feature = "async")]
        pub async fn $async_name<C>(&self, conn: &mut C, $($arg: $ty),*) -> $ret
        where
            C: diesel_async::AsyncConnection,
            C::Backend: $bound,
        {
            self.$core(&mut $crate::db::NonBlocking(conn), $($arg),*).await
        }
    };
}
pub(crate) use sync_and_async;
