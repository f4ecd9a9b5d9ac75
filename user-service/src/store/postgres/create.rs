//! The one-statement create of new users: what almost every `user.created`
//! is, alone or many in a group.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, Postgres, postgres::PgArguments, query::QueryScalar, types::Json};
use uuid::Uuid;

use crate::{
    domain::error::Result,
    domain::{
        change::{Actor, user_value},
        user::User,
        write::{self, Change, CreateUser, EventContext, Existing, WriteResult},
    },
};

/// Inserts new users, each with its initial data, its event record and its
/// change, in one statement (one row per user in every array). A user is
/// skipped, and so not returned, when its `clerk_id` exists (the unique
/// index) or is deleted (the `users_refuse_deleted` trigger); an event
/// recorded for another user fails the statement (the primary key).
pub(super) const INSERT_NEW_USERS: &str = "with i as (select * from unnest($1::uuid[], $2::text[], \
         $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], \
         $10::timestamptz[], $11::timestamptz[], $12::bigint[], $13::bigint[], \
         $14::text[], $15::text[], $16::jsonb[], $17::text[], $18::text[], \
         $19::jsonb[], $20::text[], $21::text[], $22::text[], $23::text[], $24::text[]) with ordinality \
         as t(id, clerk_id, email, first_name, last_name, username, image_url, role, status, \
             created_at, updated_at, source_updated_at, version, \
             event_key, outcome, result, source, kind, \
             after, client, event_id, event_type, changed_by, request_id, n)), \
     u as (insert into users (id, clerk_id, email, first_name, last_name, username, image_url, role, \
             status, created_at, updated_at, source_updated_at, version) \
         select id, clerk_id, email, first_name, last_name, username, image_url, role, status, \
             created_at, updated_at, source_updated_at, version from i order by n \
         on conflict (clerk_id) do nothing returning id), \
     d as (insert into user_data (user_id, key, value, created_at, updated_at) \
         select t.user_id, t.k, t.v, $25, $25 \
         from unnest($26::uuid[], $27::text[], $28::jsonb[]) as t(user_id, k, v) join u on u.id = t.user_id), \
     e as (insert into processed_events (idempotency_key, clerk_id, outcome, result, processed_at, source, kind) \
         select i.event_key, i.clerk_id, i.outcome, i.result, now(), i.source, i.kind \
         from i join u using (id) where i.event_key is not null), \
     c as (insert into changes (at, user_id, clerk_id, kind, after, actor_client, actor_event_id, \
             actor_event_type, actor_changed_by, actor_request_id) \
         select $25, i.id, i.clerk_id, 'user_created', i.after, i.client, i.event_id, i.event_type, \
             i.changed_by, i.request_id from i join u using (id) order by i.n) \
     select id from u";

/// The fast path of creates: one round trip for any number of users that
/// are new, which is what almost every `user.created` is. `None` for a user
/// that is not new after all (exists, deleted, raced): the caller runs the
/// full write for it, which decides with the user locked. `None` for all
/// when an event was recorded before (the caller's full write finds it).
pub(super) async fn create_new(
    db: &mut PgConnection,
    cmds: &[&CreateUser],
) -> Result<Vec<Option<WriteResult>>> {
    let now = crate::store::now();
    let plans: Vec<_> =
        cmds.iter().map(|cmd| write::plan_create((*cmd).clone(), Existing::Missing, now).ok()).collect();
    let mut rows = NewUsers::default();
    for (cmd, plan) in cmds.iter().zip(&plans) {
        if let Some(write::Plan { change: Change::Insert { user, data }, result }) = plan {
            rows.push(cmd, user, data, result);
        }
    }
    if rows.users.is_empty() {
        return Ok(vec![None; cmds.len()]);
    }
    let inserted: Result<Vec<Uuid>, sqlx::Error> =
        rows.bind(sqlx::query_scalar(INSERT_NEW_USERS), now).fetch_all(db).await;
    let inserted = match inserted {
        Ok(ids) => ids,
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => return Ok(vec![None; cmds.len()]),
        Err(e) => return Err(e.into()),
    };
    Ok(plans
        .into_iter()
        .map(|plan| match plan {
            Some(write::Plan { change: Change::Insert { user, .. }, result })
                if inserted.contains(&user.id) =>
            {
                Some(result)
            }
            _ => None,
        })
        .collect())
}

/// The columns of [`INSERT_NEW_USERS`], one entry per user (and one per
/// initial data key in `data_*`).
#[derive(Default)]
struct NewUsers<'a> {
    users: Vec<&'a User>,
    events: Vec<Option<&'a EventContext>>,
    results: Vec<&'a WriteResult>,
    afters: Vec<Json<Value>>,
    actors: Vec<&'a Actor>,
    data_users: Vec<Uuid>,
    data_keys: Vec<&'static str>,
    data_values: Vec<Json<&'a Value>>,
}

impl<'a> NewUsers<'a> {
    fn push(
        &mut self,
        cmd: &'a CreateUser,
        user: &'a User,
        data: &'a [(&'static str, Value)],
        result: &'a WriteResult,
    ) {
        self.users.push(user);
        self.events.push(cmd.event.as_ref());
        self.results.push(result);
        self.afters.push(Json(user_value(user)));
        self.actors.push(&cmd.actor);
        for (key, value) in data {
            self.data_users.push(user.id);
            self.data_keys.push(key);
            self.data_values.push(Json(value));
        }
    }

    fn bind<O>(
        self,
        query: QueryScalar<'a, Postgres, O, PgArguments>,
        now: DateTime<Utc>,
    ) -> QueryScalar<'a, Postgres, O, PgArguments> {
        let users = &self.users;
        let column = |f: fn(&User) -> Option<&str>| users.iter().copied().map(f).collect::<Vec<_>>();
        let event =
            |f: fn(&EventContext) -> &str| self.events.iter().map(|e| (*e).map(f)).collect::<Vec<_>>();
        let actor = |f: fn(&Actor) -> Option<&str>| self.actors.iter().copied().map(f).collect::<Vec<_>>();
        query
            .bind(users.iter().map(|u| u.id).collect::<Vec<_>>())
            .bind(column(|u| Some(&u.clerk_id)))
            .bind(column(|u| u.profile.email.as_deref()))
            .bind(column(|u| u.profile.first_name.as_deref()))
            .bind(column(|u| u.profile.last_name.as_deref()))
            .bind(column(|u| u.profile.username.as_deref()))
            .bind(column(|u| u.profile.image_url.as_deref()))
            .bind(column(|u| Some(u.role.as_str())))
            .bind(column(|u| Some(u.status.as_str())))
            .bind(users.iter().map(|u| u.created_at).collect::<Vec<_>>())
            .bind(users.iter().map(|u| u.updated_at).collect::<Vec<_>>())
            .bind(users.iter().map(|u| u.source_updated_at).collect::<Vec<_>>())
            .bind(users.iter().map(|u| u.version).collect::<Vec<_>>())
            .bind(event(|e| &e.idempotency_key))
            .bind(
                self.results
                    .iter()
                    .map(|r| r.outcome.map_or("none", write::Outcome::as_str))
                    .collect::<Vec<_>>(),
            )
            .bind(self.results.iter().map(|r| Json(*r)).collect::<Vec<_>>())
            .bind(event(|e| &e.source))
            .bind(event(|e| &e.kind))
            .bind(self.afters)
            .bind(actor(|a| Some(&a.client)))
            .bind(actor(|a| a.event_id.as_deref()))
            .bind(actor(|a| a.event_type.as_deref()))
            .bind(actor(|a| a.changed_by.as_deref()))
            .bind(actor(|a| a.request_id.as_deref()))
            .bind(now)
            .bind(self.data_users)
            .bind(self.data_keys)
            .bind(self.data_values)
    }
}
