//! PostgreSQL store: the production backend.

use std::{collections::BTreeMap, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{
    PgConnection, PgPool, Postgres, Transaction,
    postgres::{PgConnectOptions, PgPoolOptions},
    types::Json,
};
use uuid::Uuid;

use super::{
    ConnectOptions, DataEdit, DataEntry, DataSet, DataWrite, Store, UserFilter, UserValue, migrate_error,
};
use crate::{
    domain::{
        user::{Profile, Role, Status, User, UserKey},
        write::{
            self, Change, CreateUser, DeleteUser, EventContext, Existing, NAME_HISTORY_LIMIT, Plan,
            UpdateUser, WriteResult, keys,
        },
    },
    error::{Error, Result},
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

const USER_COLUMNS: &str = "id, clerk_id, email, first_name, last_name, username, image_url, \
     role, status, created_at, updated_at, source_updated_at, version";

/// A [`Store`] on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects (failing fast if the server is unreachable) and migrates.
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Self> {
        let connect: PgConnectOptions =
            url.parse().map_err(|e| Error::Unavailable(format!("invalid DATABASE_URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await?;
        if options.migrate {
            MIGRATOR.run(&pool).await.map_err(migrate_error)?;
        }
        Ok(Self { pool })
    }

    /// Wraps an existing pool (already migrated), e.g. from `#[sqlx::test]`.
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The migrator, for tests that prepare their own databases.
    pub fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    clerk_id: String,
    email: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    username: Option<String>,
    image_url: Option<String>,
    role: String,
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    source_updated_at: Option<i64>,
    version: i64,
}

impl TryFrom<UserRow> for User {
    type Error = Error;

    fn try_from(row: UserRow) -> Result<Self> {
        Ok(Self {
            id: row.id,
            clerk_id: row.clerk_id,
            profile: Profile {
                email: row.email,
                first_name: row.first_name,
                last_name: row.last_name,
                username: row.username,
                image_url: row.image_url,
            },
            role: Role::parse(&row.role)
                .ok_or_else(|| Error::Internal(format!("bad role {:?}", row.role)))?,
            status: Status::parse(&row.status)
                .ok_or_else(|| Error::Internal(format!("bad status {:?}", row.status)))?,
            created_at: row.created_at,
            updated_at: row.updated_at,
            source_updated_at: row.source_updated_at,
            version: row.version,
        })
    }
}

/// Serialises all writes for one `clerk_id`, including for users that do not
/// exist yet (a row lock cannot cover a missing row): a concurrent create and
/// delete of the same id must not interleave.
async fn lock_clerk_id(tx: &mut PgConnection, clerk_id: &str) -> Result<()> {
    sqlx::query("select pg_advisory_xact_lock(hashtextextended($1, 0))").bind(clerk_id).execute(tx).await?;
    Ok(())
}

async fn recorded_result(
    tx: &mut PgConnection,
    event: &EventContext,
    clerk_id: &str,
) -> Result<Option<WriteResult>> {
    let row: Option<(String, Option<Json<WriteResult>>)> =
        sqlx::query_as("select clerk_id, result from processed_events where idempotency_key = $1")
            .bind(&event.idempotency_key)
            .fetch_optional(tx)
            .await?;
    super::replay(row.map(|(c, r)| (c, r.map(|j| j.0))), clerk_id)
}

async fn record_event(
    tx: &mut PgConnection,
    event: &EventContext,
    clerk_id: &str,
    result: &WriteResult,
) -> Result<()> {
    sqlx::query(
        "insert into processed_events (idempotency_key, clerk_id, outcome, result, processed_at) \
         values ($1, $2, $3, $4, now()) on conflict do nothing",
    )
    .bind(&event.idempotency_key)
    .bind(clerk_id)
    .bind(result.outcome.map_or("none", write::Outcome::as_str))
    .bind(Json(result))
    .execute(tx)
    .await?;
    Ok(())
}

async fn load_existing(tx: &mut PgConnection, key: &UserKey) -> Result<Existing> {
    let row: Option<UserRow> = match key {
        UserKey::Id(id) => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "select {USER_COLUMNS} from users where id = $1 for update"
            )))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        }
        UserKey::ClerkId(clerk_id) => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "select {USER_COLUMNS} from users where clerk_id = $1 for update"
            )))
            .bind(clerk_id)
            .fetch_optional(&mut *tx)
            .await?
        }
    };
    if let Some(row) = row {
        return Ok(Existing::Present(row.try_into()?));
    }
    let deleted = match key {
        UserKey::Id(id) => {
            sqlx::query("select 1 from deleted_users where user_id = $1").bind(id).fetch_optional(tx).await?
        }
        UserKey::ClerkId(c) => {
            sqlx::query("select 1 from deleted_users where clerk_id = $1").bind(c).fetch_optional(tx).await?
        }
    };
    Ok(if deleted.is_some() { Existing::Deleted } else { Existing::Missing })
}

async fn upsert_data(
    tx: &mut PgConnection,
    user_id: Uuid,
    data: &[(&'static str, Value)],
    now: DateTime<Utc>,
) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = data.iter().map(|(k, _)| *k).collect();
    let values: Vec<Json<&Value>> = data.iter().map(|(_, v)| Json(v)).collect();
    sqlx::query(
        "insert into user_data (user_id, key, value, created_at, updated_at) \
         select $1, k, v, $4, $4 from unnest($2::text[], $3::jsonb[]) as t(k, v) \
         on conflict (user_id, key) do update \
         set value = excluded.value, updated_at = excluded.updated_at, version = user_data.version + 1",
    )
    .bind(user_id)
    .bind(keys)
    .bind(values)
    .bind(now)
    .execute(tx)
    .await?;
    Ok(())
}

async fn append_name_history(
    tx: &mut PgConnection,
    user_id: Uuid,
    entry: &Value,
    now: DateTime<Utc>,
) -> Result<()> {
    // Append in SQL so concurrent writers cannot lose entries, dropping the
    // oldest past the limit.
    sqlx::query(
        "insert into user_data (user_id, key, value, created_at, updated_at) \
         values ($1, $2, jsonb_build_array($3::jsonb), $4, $4) \
         on conflict (user_id, key) do update set \
           value = case when jsonb_typeof(user_data.value) <> 'array' then excluded.value \
                        when jsonb_array_length(user_data.value) >= $5 \
                          then (user_data.value - 0) || excluded.value \
                        else user_data.value || excluded.value end, \
           updated_at = excluded.updated_at, version = user_data.version + 1",
    )
    .bind(user_id)
    .bind(keys::NAME_HISTORY)
    .bind(Json(entry))
    .bind(now)
    .bind(NAME_HISTORY_LIMIT as i32)
    .execute(tx)
    .await?;
    Ok(())
}

async fn apply(tx: &mut PgConnection, change: &Change, now: DateTime<Utc>) -> Result<()> {
    match change {
        Change::None => {}
        Change::Insert { user, data } => {
            sqlx::query(
                "insert into users (id, clerk_id, email, first_name, last_name, username, image_url, \
                 role, status, created_at, updated_at, source_updated_at, version) \
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            )
            .bind(user.id)
            .bind(&user.clerk_id)
            .bind(&user.profile.email)
            .bind(&user.profile.first_name)
            .bind(&user.profile.last_name)
            .bind(&user.profile.username)
            .bind(&user.profile.image_url)
            .bind(user.role.as_str())
            .bind(user.status.as_str())
            .bind(user.created_at)
            .bind(user.updated_at)
            .bind(user.source_updated_at)
            .bind(user.version)
            .execute(&mut *tx)
            .await
            .map_err(|e| super::unique_violation(e, &user.clerk_id))?;
            upsert_data(tx, user.id, data, now).await?;
        }
        Change::Update { user, data, name_entry } => {
            sqlx::query(
                "update users set email = $2, first_name = $3, last_name = $4, username = $5, \
                 image_url = $6, role = $7, status = $8, updated_at = $9, source_updated_at = $10, \
                 version = $11 where id = $1",
            )
            .bind(user.id)
            .bind(&user.profile.email)
            .bind(&user.profile.first_name)
            .bind(&user.profile.last_name)
            .bind(&user.profile.username)
            .bind(&user.profile.image_url)
            .bind(user.role.as_str())
            .bind(user.status.as_str())
            .bind(user.updated_at)
            .bind(user.source_updated_at)
            .bind(user.version)
            .execute(&mut *tx)
            .await?;
            upsert_data(tx, user.id, data, now).await?;
            if let Some(entry) = name_entry {
                append_name_history(tx, user.id, entry, now).await?;
            }
        }
        Change::Delete { user_id, clerk_id } => {
            if let Some(id) = user_id {
                sqlx::query("delete from users where id = $1").bind(id).execute(&mut *tx).await?;
            }
            sqlx::query(
                "insert into deleted_users (clerk_id, user_id, deleted_at) values ($1, $2, $3) \
                 on conflict (clerk_id) do nothing",
            )
            .bind(clerk_id)
            .bind(user_id)
            .bind(now)
            .execute(tx)
            .await?;
        }
    }
    Ok(())
}

/// The `where` clause and its one bind value for a user key. Both arms hit an
/// index (the cast is on the parameter, not the column).
fn user_where(key: &UserKey) -> (&'static str, String) {
    match key {
        UserKey::Id(id) => ("u.id = $1::text::uuid", id.to_string()),
        UserKey::ClerkId(clerk_id) => ("u.clerk_id = $1", clerk_id.clone()),
    }
}

type EntryRow = (String, Json<Value>, i64, DateTime<Utc>);

fn entry((key, value, version, updated_at): EntryRow) -> DataEntry {
    DataEntry { key, value: value.0, version, updated_at }
}

async fn is_tombstoned(tx: &mut PgConnection, key: &UserKey) -> Result<bool> {
    let found = match key {
        UserKey::Id(id) => {
            sqlx::query("select 1 from deleted_users where user_id = $1").bind(id).fetch_optional(tx).await?
        }
        UserKey::ClerkId(c) => {
            sqlx::query("select 1 from deleted_users where clerk_id = $1").bind(c).fetch_optional(tx).await?
        }
    };
    Ok(found.is_some())
}

async fn write_changes(
    tx: &mut PgConnection,
    user_id: Uuid,
    changes: BTreeMap<String, Option<Value>>,
    mut entries: BTreeMap<String, DataEntry>,
    now: DateTime<Utc>,
) -> Result<BTreeMap<String, DataEntry>> {
    for (key, change) in changes {
        match change {
            Some(value) => {
                let row: EntryRow = sqlx::query_as(
                    "insert into user_data (user_id, key, value, created_at, updated_at) values ($1, $2, $3, $4, $4) \
                     on conflict (user_id, key) do update \
                     set value = excluded.value, updated_at = excluded.updated_at, version = user_data.version + 1 \
                     returning key, value, version, updated_at",
                )
                .bind(user_id)
                .bind(&key)
                .bind(Json(&value))
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                entries.insert(key, entry(row));
            }
            None => {
                sqlx::query("delete from user_data where user_id = $1 and key = $2")
                    .bind(user_id)
                    .bind(&key)
                    .execute(&mut *tx)
                    .await?;
                entries.remove(&key);
            }
        }
    }
    Ok(entries)
}

impl PgStore {
    /// Runs one user write: lock, replay check, decide, apply, record, commit.
    async fn write(
        &self,
        key: &UserKey,
        event: Option<&EventContext>,
        decide: impl FnOnce(Existing, DateTime<Utc>) -> Result<Plan> + Send,
    ) -> Result<WriteResult> {
        let mut tx: Transaction<'_, Postgres> = self.pool.begin().await?;
        if let UserKey::ClerkId(clerk_id) = key {
            lock_clerk_id(&mut tx, clerk_id).await?;
            if let Some(event) = event
                && let Some(replayed) = recorded_result(&mut tx, event, clerk_id).await?
            {
                return Ok(replayed);
            }
        }
        let existing = load_existing(&mut tx, key).await?;
        let now = super::now();
        let plan = decide(existing, now)?;
        apply(&mut tx, &plan.change, now).await?;
        if let (Some(event), UserKey::ClerkId(clerk_id)) = (event, key) {
            record_event(&mut tx, event, clerk_id, &plan.result).await?;
        }
        tx.commit().await?;
        Ok(plan.result)
    }
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn create_user(&self, cmd: CreateUser) -> Result<WriteResult> {
        let key = UserKey::ClerkId(cmd.clerk_id.clone());
        let event = cmd.event.clone();
        self.write(&key, event.as_ref(), |existing, now| write::plan_create(cmd, existing, now)).await
    }

    async fn get_user(&self, key: &UserKey) -> Result<User> {
        let row: Option<UserRow> = match key {
            UserKey::Id(id) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!("select {USER_COLUMNS} from users where id = $1")))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?
            }
            UserKey::ClerkId(c) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "select {USER_COLUMNS} from users where clerk_id = $1"
                )))
                .bind(c)
                .fetch_optional(&self.pool)
                .await?
            }
        };
        row.ok_or_else(|| Error::NotFound { resource: "user", key: key.to_string() })?.try_into()
    }

    async fn list_users(&self, filter: &UserFilter, after: Option<Uuid>, limit: u32) -> Result<Vec<User>> {
        let rows: Vec<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select {USER_COLUMNS} from users \
             where ($1::uuid is null or id > $1) and ($2::text is null or status = $2) \
               and ($3::text is null or role = $3) and ($4::text is null or lower(email) = lower($4)) \
             order by id limit $5"
        )))
        .bind(after)
        .bind(filter.status.map(Status::as_str))
        .bind(filter.role.map(Role::as_str))
        .bind(&filter.email)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(User::try_from).collect()
    }

    async fn update_user(&self, cmd: UpdateUser) -> Result<WriteResult> {
        let key = cmd.key.clone();
        let event = cmd.event.clone();
        self.write(&key, event.as_ref(), |existing, now| write::plan_update(cmd, existing, now)).await
    }

    async fn delete_user(&self, cmd: DeleteUser) -> Result<WriteResult> {
        let key = cmd.key.clone();
        let event = cmd.event.clone();
        self.write(&key, event.as_ref(), |existing, _| write::plan_delete(cmd, existing)).await
    }

    async fn read_data(&self, user: &UserKey, keys: &[&str]) -> Result<Vec<DataEntry>> {
        let (filter, bind) = user_where(user);
        let rows: Vec<(Uuid, Option<String>, Option<Json<Value>>, Option<i64>, Option<DateTime<Utc>>)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "select u.id, d.key, d.value, d.version, d.updated_at from users u \
                 left join user_data d on d.user_id = u.id and d.key = any($2) where {filter}"
            )))
            .bind(bind)
            .bind(keys)
            .fetch_all(&self.pool)
            .await?;
        if rows.is_empty() {
            return Err(Error::NotFound { resource: "user", key: user.to_string() });
        }
        Ok(rows
            .into_iter()
            .filter_map(|(_, key, value, version, at)| Some(entry((key?, value?, version?, at?))))
            .collect())
    }

    async fn list_data(&self, user: &UserKey, after: Option<&str>, limit: u32) -> Result<Vec<DataEntry>> {
        let (filter, bind) = user_where(user);
        let id: Option<(Uuid,)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("select u.id from users u where {filter}")))
                .bind(bind)
                .fetch_optional(&self.pool)
                .await?;
        let (id,) = id.ok_or_else(|| Error::NotFound { resource: "user", key: user.to_string() })?;
        let rows: Vec<EntryRow> = sqlx::query_as(
            "select key, value, version, updated_at from user_data \
             where user_id = $1 and ($2::text is null or key > $2) order by key limit $3",
        )
        .bind(id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(entry).collect())
    }

    async fn edit_data(
        &self,
        user: &UserKey,
        keys: &[&str],
        event: Option<&EventContext>,
        edit: DataEdit,
    ) -> Result<DataWrite> {
        let mut tx = self.pool.begin().await?;
        let (filter, bind) = user_where(user);
        let locked: Option<(Uuid, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select u.id, u.clerk_id from users u where {filter} for update"
        )))
        .bind(bind)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((user_id, clerk_id)) = locked else {
            return match event {
                Some(_) if is_tombstoned(&mut tx, user).await? => {
                    Ok(DataWrite { outcome: Some(write::Outcome::UserDeleted), ..Default::default() })
                }
                _ => Err(Error::NotFound { resource: "user", key: user.to_string() }),
            };
        };
        let rows: Vec<EntryRow> = sqlx::query_as(
            "select key, value, version, updated_at from user_data where user_id = $1 and key = any($2)",
        )
        .bind(user_id)
        .bind(keys)
        .fetch_all(&mut *tx)
        .await?;
        let mut set = DataSet::new(rows.into_iter().map(entry));
        if let Some(event) = event
            && recorded_result(&mut tx, event, &clerk_id).await?.is_some()
        {
            let (entries, _) = set.into_changes();
            return Ok(DataWrite { entries, outcome: Some(write::Outcome::Applied), replayed: true });
        }
        edit(&mut set)?;
        let (current, changes) = set.into_changes();
        let entries = write_changes(&mut tx, user_id, changes, current, super::now()).await?;
        let outcome = event.map(|_| write::Outcome::Applied);
        if let Some(event) = event {
            let result = WriteResult { user: None, outcome, replayed: false };
            record_event(&mut tx, event, &clerk_id, &result).await?;
        }
        tx.commit().await?;
        Ok(DataWrite { entries, outcome, replayed: false })
    }

    async fn data_for_users(&self, ids: &[Uuid], clerk_ids: &[String], key: &str) -> Result<Vec<UserValue>> {
        let rows: Vec<(Uuid, String, Option<Json<Value>>)> = sqlx::query_as(
            "select u.id, u.clerk_id, d.value from users u \
             left join user_data d on d.user_id = u.id and d.key = $3 \
             where u.id = any($1) or u.clerk_id = any($2)",
        )
        .bind(ids)
        .bind(clerk_ids)
        .bind(key)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, clerk_id, value)| UserValue { id, clerk_id, value: value.map(|v| v.0) })
            .collect())
    }

    async fn prune_processed_events(&self, age: Duration) -> Result<u64> {
        let cutoff = Utc::now() - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
        let done = sqlx::query("delete from processed_events where processed_at < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
