//! `UserDataService` messages ⇄ the typed user data values and entries.

use chrono::{DateTime, Utc};
use prost_types::FieldMask;
use serde_json::Value;
use userdata_proto::v1 as pb;
use uuid::Uuid;

use super::{each, parse_event, parse_expected_version, parse_user, time_from_proto, timestamp};
use crate::{
    domain::{
        change::Actor,
        data::{
            DataEntry, activity, flags,
            history::NameEntry,
            onboarding::{self, Step},
            preferences::{self, PreferencesPatch, Theme},
        },
        error::Result,
        keys,
        time::{iso, parse_time},
        user::{ClerkId, SignupSource, UserKey, etag_for, parse_user_id, truncate},
        validation::Violations,
        write::EventContext,
    },
    store::UserValue,
};

/// Most users or flags one hot-path check may name.
pub const MAX_BATCH: usize = 1000;

/// The etag of a stored entry; empty when the key is unset.
pub fn etag_of(entry: Option<&DataEntry>) -> String {
    entry.map(|e| etag_for(e.version)).unwrap_or_default()
}

fn find<'a>(entries: &'a [DataEntry], key: &str) -> Option<&'a DataEntry> {
    entries.iter().find(|e| e.key == key)
}

fn theme_to_proto(theme: Theme) -> pb::Theme {
    match theme {
        Theme::Light => pb::Theme::Light,
        Theme::Dark => pb::Theme::Dark,
        Theme::System => pb::Theme::System,
    }
}

/// Stored preferences (defaults when unset) as sent.
pub fn preferences_to_proto(entry: Option<&DataEntry>) -> pb::Preferences {
    let p = preferences::read(entry.map(|e| &e.value));
    pb::Preferences {
        theme: theme_to_proto(p.theme) as i32,
        notifications: p.notifications,
        language: p.language,
        timezone: p.timezone,
    }
}

fn step_to_proto(step: Step) -> pb::OnboardingStep {
    match step {
        Step::Welcome => pb::OnboardingStep::Welcome,
        Step::Profile => pb::OnboardingStep::Profile,
        Step::Preferences => pb::OnboardingStep::Preferences,
        Step::Complete => pb::OnboardingStep::Complete,
    }
}

/// Stored onboarding (or "not started") as sent.
pub fn onboarding_to_proto(entry: Option<&DataEntry>) -> pb::OnboardingStatus {
    let stored = onboarding::read(entry.map(|e| &e.value));
    let progress = onboarding::Progress::from_value(stored.as_ref());
    pb::OnboardingStatus {
        step: step_to_proto(progress.step) as i32,
        completed: progress.step == Step::Complete,
        started_at: progress.started_at.map(timestamp),
        completed_at: progress.completed_at.map(timestamp),
    }
}

/// The activity keys among `entries` as sent.
pub fn activity_to_proto(entries: &[DataEntry]) -> pb::Activity {
    let value = |key| find(entries, key).map(|e| &e.value);
    let a = activity::ActivityValue::from_values(
        value(keys::SESSION_COUNT),
        value(keys::LAST_ACTIVE),
        value(keys::LOGIN_HISTORY),
    );
    pb::Activity {
        session_count: i64::try_from(a.session_count).unwrap_or(i64::MAX),
        last_active: a.last_active.map(timestamp),
        login_history: a
            .login_history
            .into_iter()
            .map(|l| pb::LoginRecord {
                timestamp: parse_time(&l.timestamp).ok().map(timestamp),
                device: l.device,
                ip: l.ip,
                success: l.success,
            })
            .collect(),
    }
}

/// Paths of a preferences update: the mask's, `*` for all, or every field that
/// is set when the mask is empty.
fn preference_patch(v: &mut Violations, p: &pb::Preferences, mask: Option<&FieldMask>) -> PreferencesPatch {
    const ALL: [&str; 4] = ["theme", "notifications", "language", "timezone"];
    let paths: Vec<String> = match mask.map(|m| m.paths.as_slice()) {
        Some(paths) if paths.iter().any(|p| p == "*") => ALL.iter().map(|s| (*s).to_owned()).collect(),
        Some(paths) if !paths.is_empty() => paths.to_vec(),
        _ => {
            let set = [p.theme != 0, p.notifications, !p.language.is_empty(), !p.timezone.is_empty()];
            ALL.iter().zip(set).filter(|(_, s)| *s).map(|(n, _)| (*n).to_owned()).collect()
        }
    };
    let mut patch = PreferencesPatch::default();
    for path in paths {
        match path.as_str() {
            "theme" => {
                patch.theme = match pb::Theme::try_from(p.theme) {
                    Ok(pb::Theme::Light) => Some(Theme::Light),
                    Ok(pb::Theme::Dark) => Some(Theme::Dark),
                    Ok(pb::Theme::System) => Some(Theme::System),
                    Ok(pb::Theme::Unspecified) => {
                        v.add("preferences.theme", "must be LIGHT, DARK or SYSTEM when named in update_mask");
                        None
                    }
                    Err(_) => {
                        v.add("preferences.theme", format!("unknown Theme value {}", p.theme));
                        None
                    }
                }
            }
            "notifications" => patch.notifications = Some(p.notifications),
            "language" => {
                patch.language = v.check("preferences.language", preferences::parse_language(&p.language))
            }
            "timezone" => {
                patch.timezone = v.check("preferences.timezone", preferences::parse_timezone(&p.timezone))
            }
            other => v.add("update_mask", format!("unknown field {:?}", truncate(other))),
        }
    }
    patch
}

fn onboarding_step(v: &mut Violations, step: i32) -> Option<Step> {
    match pb::OnboardingStep::try_from(step) {
        Ok(pb::OnboardingStep::Welcome) => Some(Step::Welcome),
        Ok(pb::OnboardingStep::Profile) => Some(Step::Profile),
        Ok(pb::OnboardingStep::Preferences) => Some(Step::Preferences),
        Ok(pb::OnboardingStep::Complete) => Some(Step::Complete),
        Ok(pb::OnboardingStep::Unspecified) => {
            v.add("step", "is required");
            None
        }
        Err(_) => {
            v.add("step", format!("unknown OnboardingStep value {step}"));
            None
        }
    }
}

fn login_entry(v: &mut Violations, login: Option<&pb::LoginRecord>) -> Option<activity::LoginEntry> {
    let Some(login) = login else {
        v.add("login", "is required");
        return None;
    };
    let time = match &login.timestamp {
        None => Some(Utc::now()),
        Some(ts) => v.check("login.timestamp", time_from_proto(ts)),
    };
    let device = login.device.as_deref().and_then(|d| v.check("login.device", activity::parse_device(d)));
    let ip = login.ip.as_deref().and_then(|ip| v.check("login.ip", activity::parse_ip(ip)));
    Some(activity::LoginEntry { timestamp: iso(time?), device, ip, success: login.success })
}

/// A parsed `UpdatePreferencesRequest`: the user, the patch and the etag's
/// version.
pub fn update_preferences(
    req: &pb::UpdatePreferencesRequest,
) -> Result<(UserKey, PreferencesPatch, Option<i64>)> {
    let mut v = Violations::default();
    let user = parse_user(&mut v, "user_id", &req.user_id, &req.clerk_id);
    let prefs = req.preferences.clone().unwrap_or_default();
    let patch = preference_patch(&mut v, &prefs, req.update_mask.as_ref());
    let expected = parse_expected_version(&mut v, &req.etag);
    let user = v.finish_parsed(user)?;
    Ok((user, patch, expected))
}

/// A parsed `GetFeatureFlagRequest`: the user and the flag key.
pub fn get_feature_flag(req: &pb::GetFeatureFlagRequest) -> Result<(UserKey, String)> {
    let mut v = Violations::default();
    let user = parse_user(&mut v, "user_id", &req.user_id, &req.clerk_id);
    let flag = v.check("flag_key", flags::parse_flag_key(&req.flag_key));
    v.finish_parsed(user.zip(flag))
}

/// A parsed `UpdateFeatureFlagsRequest`.
#[derive(Debug)]
pub struct FlagsUpdate {
    /// Whose flags.
    pub user: UserKey,
    /// Flags to set.
    pub set: flags::Flags,
    /// Flags to remove.
    pub clear: Vec<String>,
    /// The etag's version, when given.
    pub expected: Option<i64>,
}

/// Parses an `UpdateFeatureFlagsRequest`.
pub fn update_feature_flags(req: &pb::UpdateFeatureFlagsRequest) -> Result<FlagsUpdate> {
    let mut v = Violations::default();
    let user = parse_user(&mut v, "user_id", &req.user_id, &req.clerk_id);
    if req.set.len() > MAX_BATCH || req.clear.len() > MAX_BATCH {
        v.add("set", format!("at most {MAX_BATCH} flags may be set and {MAX_BATCH} cleared per call"));
    }
    let mut set = flags::Flags::new();
    for (key, enabled) in &req.set {
        if let Some(key) = v.check(&format!("set[{}]", truncate(key)), flags::parse_flag_key(key)) {
            set.insert(key, *enabled);
        }
    }
    let clear = each(&mut v, "clear", &req.clear, flags::parse_flag_key);
    if let Some(both) = clear.iter().find(|k| set.contains_key(*k)) {
        v.add("clear", format!("{both:?} is both set and cleared"));
    }
    let expected = parse_expected_version(&mut v, &req.etag);
    let user = v.finish_parsed(user)?;
    Ok(FlagsUpdate { user, set, clear, expected })
}

/// A parsed `CheckFeatureFlagForUsersRequest`.
#[derive(Debug)]
pub struct FlagForUsers {
    /// The flag to check.
    pub flag: String,
    /// Users named by id, in request order.
    pub ids: Vec<Uuid>,
    /// Users named by Clerk id, in request order.
    pub clerk_ids: Vec<String>,
}

/// Parses a `CheckFeatureFlagForUsersRequest`.
pub fn flag_for_users(req: &pb::CheckFeatureFlagForUsersRequest) -> Result<FlagForUsers> {
    let mut v = Violations::default();
    let flag = v.check("flag_key", flags::parse_flag_key(&req.flag_key));
    if req.user_ids.len() + req.clerk_ids.len() > MAX_BATCH {
        v.add("user_ids", format!("at most {MAX_BATCH} users per call"));
    }
    let ids = each(&mut v, "user_ids", &req.user_ids, parse_user_id);
    let clerk_ids =
        each(&mut v, "clerk_ids", &req.clerk_ids, |id| ClerkId::parse(id).map(ClerkId::into_inner));
    v.finish(|| FlagForUsers { flag: flag.unwrap_or_default(), ids, clerk_ids })
}

/// The answer to a `CheckFeatureFlagForUsersRequest`: one value per user
/// named, ids first, each as the request spelled it.
pub fn flag_values(
    req: &pb::CheckFeatureFlagForUsersRequest,
    query: &FlagForUsers,
    found: &[UserValue],
) -> Vec<pb::UserFlagValue> {
    use std::collections::HashMap;
    let value_of = |found: Option<&&UserValue>, user: &String| {
        let flag_value =
            found.and_then(|f| f.value.as_ref()).and_then(|m| m.get(&query.flag)).and_then(Value::as_bool);
        pb::UserFlagValue {
            user: user.clone(),
            user_found: found.is_some(),
            is_set: flag_value.is_some(),
            enabled: flag_value.unwrap_or(false),
        }
    };
    // Up to 1000 users each way: look them up by key, not by scanning.
    let by_id: HashMap<Uuid, &UserValue> = found.iter().map(|f| (f.id, f)).collect();
    let by_clerk_id: HashMap<&str, &UserValue> = found.iter().map(|f| (f.clerk_id.as_str(), f)).collect();
    req.user_ids
        .iter()
        .zip(&query.ids)
        .map(|(given, id)| value_of(by_id.get(id), given))
        .chain(query.clerk_ids.iter().map(|c| value_of(by_clerk_id.get(c.as_str()), c)))
        .collect()
}

/// A parsed `CheckFeatureFlagsRequest`: the user and the flags asked for.
pub fn check_feature_flags(req: &pb::CheckFeatureFlagsRequest) -> Result<(UserKey, Vec<String>)> {
    let mut v = Violations::default();
    let user = parse_user(&mut v, "user_id", &req.user_id, &req.clerk_id);
    if req.flag_keys.len() > MAX_BATCH {
        v.add("flag_keys", format!("at most {MAX_BATCH} flags per call"));
    }
    let wanted = each(&mut v, "flag_keys", &req.flag_keys, flags::parse_flag_key);
    let user = v.finish_parsed(user)?;
    Ok((user, wanted))
}

/// A parsed `AdvanceOnboardingRequest`: the user, the step and the etag's
/// version.
pub fn advance_onboarding(req: &pb::AdvanceOnboardingRequest) -> Result<(UserKey, Step, Option<i64>)> {
    let mut v = Violations::default();
    let user = parse_user(&mut v, "user_id", &req.user_id, &req.clerk_id);
    let step = onboarding_step(&mut v, req.step);
    let expected = parse_expected_version(&mut v, &req.etag);
    let (user, step) = v.finish_parsed(user.zip(step))?;
    Ok((user, step, expected))
}

/// A parsed `RecordLoginRequest` made by `actor`.
pub fn record_login(
    req: &pb::RecordLoginRequest,
    actor: &Actor,
) -> Result<(UserKey, activity::LoginEntry, Option<EventContext>)> {
    let mut v = Violations::default();
    let user = parse_user(&mut v, "user_id", &req.user_id, &req.clerk_id);
    let entry = login_entry(&mut v, req.login.as_ref());
    let event = parse_event(&mut v, req.event_context.as_ref(), actor, "RecordLogin");
    let (user, entry) = v.finish_parsed(user.zip(entry))?;
    Ok((user, entry, event))
}

/// A parsed `RecordActivityRequest` made by `actor`.
pub fn record_activity(
    req: &pb::RecordActivityRequest,
    actor: &Actor,
) -> Result<(UserKey, DateTime<Utc>, Option<EventContext>)> {
    let mut v = Violations::default();
    let user = parse_user(&mut v, "user_id", &req.user_id, &req.clerk_id);
    let at = match &req.active_at {
        None => Some(Utc::now()),
        Some(ts) => v.check("active_at", time_from_proto(ts)),
    };
    let event = parse_event(&mut v, req.event_context.as_ref(), actor, "RecordActivity");
    let (user, at) = v.finish_parsed(user.zip(at))?;
    Ok((user, at, event))
}

/// The answer to `GetUserHistory` from the history keys among `found`.
pub fn history_to_proto(found: &[DataEntry]) -> pb::GetUserHistoryResponse {
    let value = |key| find(found, key).map(|e| &e.value);
    let time = |key| value(key).and_then(Value::as_str).and_then(|t| parse_time(t).ok()).map(timestamp);
    let names: Vec<NameEntry> =
        value(keys::NAME_HISTORY).and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
    let signup_source = match value(keys::SIGNUP_SOURCE).and_then(Value::as_str).and_then(SignupSource::parse)
    {
        Some(SignupSource::Clerk) => pb::SignupSource::Clerk,
        Some(SignupSource::Invite) => pb::SignupSource::Invite,
        Some(SignupSource::Admin) => pb::SignupSource::Admin,
        None => pb::SignupSource::Unspecified,
    };
    pb::GetUserHistoryResponse {
        name_history: names
            .into_iter()
            .map(|n| pb::NameChange {
                first_name: n.first_name,
                last_name: n.last_name,
                timestamp: parse_time(&n.timestamp).ok().map(timestamp),
                changed_by: n.changed_by,
                claimed_by: n.claimed_by,
            })
            .collect(),
        signup_date: time(keys::SIGNUP_DATE),
        signup_source: signup_source as i32,
        last_clerk_sync: time(keys::LAST_CLERK_SYNC),
    }
}

/// The history keys `GetUserHistory` reads.
pub const HISTORY_KEYS: [&str; 4] =
    [keys::NAME_HISTORY, keys::SIGNUP_DATE, keys::SIGNUP_SOURCE, keys::LAST_CLERK_SYNC];
