//! Fresh benchmark databases, seeded in bulk with SQL (far faster than one
//! write per user) and analysed before anything is measured.

use anyhow::{Context, Result};
use sqlx::{Connection, Executor, PgConnection, SqliteConnection};
use user_service::store::{ConnectOptions, PgStore, SqliteStore};

/// Which backend a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// SQLite file.
    Sqlite,
}

/// A prepared database.
pub struct Database {
    /// Its URL.
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

/// Seeded users are `user_seed_<n>` with emails `seed<n>@example.org`.
pub fn seed_clerk_id(n: usize) -> String {
    format!("user_seed_{n}")
}

/// Creates an empty database (no schema: the user-service being measured
/// migrates it, so an earlier release gets its own schema).
pub async fn create(backend: Backend, admin_url: &str) -> Result<Database> {
    Ok(match backend {
        Backend::Postgres => {
            let mut admin = PgConnection::connect(admin_url).await.context("connect to PostgreSQL")?;
            admin.execute("drop database if exists userdata_bench with (force)").await?;
            admin.execute("create database userdata_bench").await?;
            let base = admin_url.rsplit_once('/').map_or(admin_url, |(b, _)| b);
            Database { url: format!("{base}/userdata_bench"), _dir: None }
        }
        Backend::Sqlite => {
            let dir = tempfile::tempdir()?;
            let url = format!("sqlite://{}", dir.path().join("bench.db").display());
            Database { url, _dir: Some(dir) }
        }
    })
}

/// Creates an empty, migrated database and seeds `users` users, each with
/// preferences and feature flags, then runs ANALYZE.
pub async fn prepare(backend: Backend, admin_url: &str, users: usize) -> Result<Database> {
    let db = create(backend, admin_url).await?;
    let options = ConnectOptions { max_connections: 2, ..ConnectOptions::default() };
    match backend {
        Backend::Postgres => drop(PgStore::connect(&db.url, &options).await?),
        Backend::Sqlite => drop(SqliteStore::connect(&db.url, &options).await?),
    }
    fill(backend, &db, users).await?;
    Ok(db)
}

/// Seeds `users` users, each with preferences and feature flags, into a
/// migrated database, then runs ANALYZE.
pub async fn fill(backend: Backend, db: &Database, users: usize) -> Result<()> {
    match backend {
        Backend::Postgres => {
            let mut conn = PgConnection::connect(&db.url).await?;
            // Skip triggers while seeding: `users_refuse_deleted` takes one
            // advisory lock per inserted row, and a million locks in one
            // transaction exhaust the lock table. Nothing is deleted here.
            conn.execute("set session_replication_role = replica").await?;
            for sql in [
                "insert into users (id, clerk_id, email, first_name, last_name, created_at, updated_at, source_updated_at) \
                 select gen_random_uuid(), 'user_seed_' || n, 'seed' || n || '@example.org', 'Seed', 'User' || n, \
                        now(), now(), 1700000000000 from generate_series(0, $1 - 1) as n",
                "insert into user_data (user_id, key, value, created_at, updated_at) \
                 select id, 'preferences', '{\"theme\":\"dark\",\"notifications\":true,\"language\":\"en\",\"timezone\":\"UTC\"}', now(), now() from users",
                "insert into user_data (user_id, key, value, created_at, updated_at) \
                 select id, 'feature_flags', '{\"beta\":true,\"checkout.v2\":false}', now(), now() from users",
            ] {
                sqlx::query(sql)
                    .bind(users as i64)
                    .execute(&mut conn)
                    .await
                    .with_context(|| format!("seed: {sql}"))?;
            }
            conn.execute("analyze").await?;
        }
        Backend::Sqlite => {
            let mut conn = SqliteConnection::connect(&db.url).await?;
            conn.execute("pragma journal_mode = wal").await?;
            for sql in [
                "with recursive n(i) as (select 0 union all select i + 1 from n where i + 1 < $1) \
                 insert into users (id, clerk_id, email, first_name, last_name, created_at, updated_at, source_updated_at) \
                 select lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-a' \
                        || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6))), \
                        'user_seed_' || i, 'seed' || i || '@example.org', 'Seed', 'User' || i, \
                        '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00', 1700000000000 from n",
                "insert into user_data (user_id, key, value, created_at, updated_at) \
                 select id, 'preferences', '{\"theme\":\"dark\",\"notifications\":true,\"language\":\"en\",\"timezone\":\"UTC\"}', \
                        '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00' from users",
                "insert into user_data (user_id, key, value, created_at, updated_at) \
                 select id, 'feature_flags', '{\"beta\":true,\"checkout.v2\":false}', \
                        '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00' from users",
            ] {
                sqlx::query(sql)
                    .bind(users as i64)
                    .execute(&mut conn)
                    .await
                    .with_context(|| format!("seed: {sql}"))?;
            }
            conn.execute("analyze").await?;
        }
    }
    Ok(())
}
