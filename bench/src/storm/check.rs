//! Comparing what user-service stores with what the delivered events say it
//! should store.
//!
//! Expected state per user: deleted (NOT_FOUND) once its `user.deleted` was
//! delivered, whatever came after; otherwise the newest delivered profile
//! version (or a newer one whose delivery gave up, which may or may not have
//! been applied). Counting rules, each in events or entries:
//!
//! - **lost**: an acknowledged effect is missing: a delivered delete whose user
//!   still exists, a user missing or older than its newest delivered version,
//!   fewer logins than delivered `session.created`, fewer `name_history`
//!   entries than applied updates.
//! - **doubled**: an effect seen twice: one `svix-id` answered `applied` more
//!   than once, more logins or `name_history` entries than could have been
//!   applied, a repeated `name_history` or `login_history` entry.
//! - **wrong**: a state no event describes: a profile field of no version,
//!   `name_history` out of order.

use std::{collections::BTreeMap, future::Future, time::Duration};

use anyhow::{Context, Result};
use futures::StreamExt;
use tonic::{Code, Status, transport::Channel};
use userdata_proto::v1::{
    self as pb, user_data_service_client::UserDataServiceClient, user_service_client::UserServiceClient,
};

use crate::storm::{
    deliver::{Record, Report},
    plan::{self, Kind, Plan, UserPlan},
};

/// The discrepancies found.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Acknowledged effects that are missing.
    pub lost: usize,
    /// Effects applied more than once.
    pub doubled: usize,
    /// States no event describes.
    pub wrong: usize,
    /// One line per discrepancy, for the log.
    pub problems: Vec<String>,
}

impl Verdict {
    fn add(&mut self, other: Verdict) {
        self.lost += other.lost;
        self.doubled += other.doubled;
        self.wrong += other.wrong;
        self.problems.extend(other.problems);
    }

    fn lost(&mut self, n: usize, why: String) {
        self.lost += n;
        self.problems.push(format!("lost {n}: {why}"));
    }

    fn doubled(&mut self, n: usize, why: String) {
        self.doubled += n;
        self.problems.push(format!("doubled {n}: {why}"));
    }

    fn wrong(&mut self, why: String) {
        self.wrong += 1;
        self.problems.push(format!("wrong: {why}"));
    }

    /// True when nothing was lost, doubled or wrong.
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.doubled == 0 && self.wrong == 0
    }
}

/// What the deliveries of one user's messages tell.
#[derive(Default)]
struct Facts<'a> {
    delete: Option<&'a Record>,
    versions: Vec<(u32, &'a Record)>,
    sessions: Vec<&'a Record>,
}

/// Whether a delivered message's answers prove it was applied (`Some(true)`),
/// prove it was not (`Some(false)`), or do not say (`None`: only
/// `duplicate`, i.e. an earlier attempt whose answer was lost did it — or
/// found it stale).
fn applied(record: &Record) -> Option<bool> {
    let mut outcomes = record.outcomes().peekable();
    outcomes.peek()?;
    let mut unknown = true;
    for outcome in outcomes {
        match outcome {
            "applied" => return Some(true),
            "duplicate" | "unspecified" => {}
            _ => unknown = false,
        }
    }
    if unknown { None } else { Some(false) }
}

/// Retries a read while user-service is unavailable (restarting, or its
/// database is), for up to a minute.
async fn read<T, F, Fut>(mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match call().await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status)
                if matches!(
                    status.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Unknown
                ) && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => return Err(status),
        }
    }
}

/// Checks every user of `plan` against user-service at `user_service_url`.
pub async fn check(
    plan: &Plan,
    report: &Report,
    user_service_url: &str,
    concurrency: usize,
) -> Result<Verdict> {
    let channel = Channel::from_shared(user_service_url.to_owned())
        .context("--user-service-url")?
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    let mut facts: Vec<Facts> = plan.users.iter().map(|_| Facts::default()).collect();
    let mut verdict = Verdict::default();
    for (message, record) in plan.messages.iter().zip(&report.records) {
        let applied_answers = record.applied_answers();
        if applied_answers > 1 {
            verdict.doubled(
                applied_answers - 1,
                format!(
                    "{} ({:?} of {}) was answered `applied` {applied_answers} times",
                    message.id, message.kind, plan.users[message.user].clerk_id
                ),
            );
        }
        let f = &mut facts[message.user];
        match message.kind {
            Kind::Deleted => f.delete = Some(record),
            Kind::Session(_) => f.sessions.push(record),
            Kind::Created | Kind::Updated(_) => {
                f.versions.push((message.kind.version().unwrap_or(1), record))
            }
        }
    }
    let users = UserServiceClient::new(channel.clone());
    let data = UserDataServiceClient::new(channel);
    let mut checks = futures::stream::iter(plan.users.iter().zip(facts))
        .map(|(user, facts)| check_user(users.clone(), data.clone(), user, facts))
        .buffer_unordered(concurrency.max(1));
    while let Some(result) = checks.next().await {
        verdict.add(result?);
    }
    Ok(verdict)
}

async fn check_user(
    users: UserServiceClient<Channel>,
    data: UserDataServiceClient<Channel>,
    user: &UserPlan,
    facts: Facts<'_>,
) -> Result<Verdict> {
    let mut v = Verdict::default();
    let id = &user.clerk_id;
    let found = match read(|| {
        let (mut users, clerk_id) = (users.clone(), id.clone());
        async move { users.get_user(pb::GetUserRequest { clerk_id, ..Default::default() }).await }
    })
    .await
    {
        Ok(response) => response.user,
        Err(status) if status.code() == Code::NotFound => None,
        Err(status) => return Err(status).with_context(|| format!("GetUser {id}")),
    };
    let delete_delivered = facts.delete.is_some_and(|r| r.delivered);
    let delete_maybe = facts.delete.is_some_and(|r| r.gave_up);
    if delete_delivered {
        if found.is_some() {
            v.lost(1, format!("{id}: user.deleted was delivered but the user exists"));
        }
        return Ok(v);
    }
    let newest_delivered = facts.versions.iter().filter(|(_, r)| r.delivered).map(|(n, _)| *n).max();
    let maybe_newer: Vec<u32> = facts
        .versions
        .iter()
        .filter(|(n, r)| r.gave_up && newest_delivered.is_none_or(|d| *n > d))
        .map(|(n, _)| *n)
        .collect();
    let Some(stored) = found else {
        if newest_delivered.is_some() && !delete_maybe {
            v.lost(1, format!("{id}: user events were delivered but the user does not exist"));
        }
        return Ok(v);
    };

    // Profile: the newest delivered version (or a newer one that gave up).
    let first = stored.first_name.clone().unwrap_or_default();
    match plan::version_of(user.n, &first) {
        None => v.wrong(format!("{id}: first_name {first:?} belongs to no event")),
        Some(version) if Some(version) == newest_delivered || maybe_newer.contains(&version) => {}
        Some(version) if newest_delivered.is_some_and(|d| version < d) => v.lost(
            1,
            format!(
                "{id}: stored version {version}, but version {} was delivered",
                newest_delivered.unwrap_or(0)
            ),
        ),
        Some(version) => v.wrong(format!("{id}: stored version {version}, which was never delivered")),
    }
    if stored.last_name.as_deref() != Some(plan::expected_last_name(user.n).as_str())
        || stored.email.as_deref() != Some(plan::expected_email(user.n).as_str())
    {
        v.wrong(format!(
            "{id}: last_name {:?} / email {:?} belong to no event",
            stored.last_name, stored.email
        ));
    }

    // name_history: one entry per applied event except the one that created
    // the user; answers lost with a killed process leave a range.
    let history =
        read(|| {
            let (mut data, clerk_id) = (data.clone(), id.clone());
            async move {
                data.get_user_history(pb::GetUserHistoryRequest { clerk_id, ..Default::default() }).await
            }
        })
        .await
        .with_context(|| format!("GetUserHistory {id}"))?;
    let entries = &history.name_history;
    let known = facts.versions.iter().filter(|(_, r)| applied(r) == Some(true)).count();
    let unknown =
        facts.versions.iter().filter(|(_, r)| r.gave_up || (r.delivered && applied(r).is_none())).count();
    let (low, high) = (known.saturating_sub(1), (known + unknown).saturating_sub(1));
    if entries.len() > high {
        v.doubled(
            entries.len() - high,
            format!("{id}: {} name_history entries, at most {high} updates applied", entries.len()),
        );
    } else if entries.len() < low {
        v.lost(
            low - entries.len(),
            format!("{id}: {} name_history entries, {low} updates applied", entries.len()),
        );
    }
    let mut names: Vec<&str> = entries.iter().map(|e| e.first_name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    if names.len() < entries.len() {
        v.doubled(entries.len() - names.len(), format!("{id}: repeated name_history entries"));
    }
    let times: Vec<(i64, i32)> =
        entries.iter().map(|e| e.timestamp.as_ref().map_or((0, 0), |t| (t.seconds, t.nanos))).collect();
    if times.windows(2).any(|w| w[0] >= w[1]) {
        v.wrong(format!("{id}: name_history is not in increasing time order"));
    }

    // Logins: each session.created counts exactly once.
    let activity = read(|| {
        let (mut data, clerk_id) = (data.clone(), id.clone());
        async move { data.get_activity(pb::GetActivityRequest { clerk_id, ..Default::default() }).await }
    })
    .await
    .with_context(|| format!("GetActivity {id}"))?
    .activity
    .unwrap_or_default();
    let delivered = facts.sessions.iter().filter(|r| r.delivered).count();
    let possible = delivered + facts.sessions.iter().filter(|r| r.gave_up).count();
    let count = usize::try_from(activity.session_count).unwrap_or(0);
    if count > possible {
        v.doubled(count - possible, format!("{id}: session_count {count}, {possible} sessions sent"));
    } else if count < delivered {
        v.lost(delivered - count, format!("{id}: session_count {count}, {delivered} sessions delivered"));
    }
    let mut logins: Vec<(i64, i32)> = activity
        .login_history
        .iter()
        .map(|l| l.timestamp.as_ref().map_or((0, 0), |t| (t.seconds, t.nanos)))
        .collect();
    let history_len = logins.len();
    logins.sort_unstable();
    logins.dedup();
    if logins.len() < history_len {
        v.doubled(history_len - logins.len(), format!("{id}: repeated login_history entries"));
    }
    Ok(v)
}

/// How many messages of each kind the plan holds (for reports).
pub fn kinds(plan: &Plan) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for message in &plan.messages {
        let kind = match message.kind {
            Kind::Created => "user.created",
            Kind::Updated(_) => "user.updated",
            Kind::Deleted => "user.deleted",
            Kind::Session(_) => "session.created",
        };
        *counts.entry(kind).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storm::deliver::Attempt;

    fn record(outcomes: &[&str]) -> Record {
        Record {
            attempts: outcomes
                .iter()
                .map(|o| Attempt {
                    at: 0.0,
                    latency: Duration::ZERO,
                    status: Some(200),
                    outcome: Some((*o).to_owned()),
                    duplicate: false,
                })
                .collect(),
            delivered: !outcomes.is_empty(),
            gave_up: outcomes.is_empty(),
        }
    }

    #[test]
    fn answers_tell_whether_a_message_was_applied() {
        assert_eq!(applied(&record(&["applied"])), Some(true));
        assert_eq!(applied(&record(&["stale"])), Some(false));
        assert_eq!(applied(&record(&["duplicate"])), None);
        assert_eq!(applied(&record(&["applied", "duplicate"])), Some(true));
        assert_eq!(applied(&record(&[])), None);
        assert_eq!(record(&["applied", "applied"]).applied_answers(), 2);
    }
}
