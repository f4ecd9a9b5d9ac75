//! `userdata.v1.UserDataService`: typed and generic user data.

use std::{collections::HashMap, sync::Arc};

use chrono::Utc;
use prost_types::FieldMask;
use tonic::{Request, Response, Status};
use userdata_proto::v1::{self as pb, user_data_service_server::UserDataService};
use uuid::Uuid;

use super::{
    access,
    convert::{outcome_to_proto, parse_event, parse_expected_version, parse_key, timestamp},
    json,
};
use crate::{
    auth::{Principal, Scope},
    domain::{
        change::Actor,
        data::{
            self, DataEntry, activity, flags,
            onboarding::{self, Step},
            preferences::{self, PreferencesPatch, Theme},
        },
        error::{Error, Result},
        keys::{self, FEATURE_FLAGS, ONBOARDING_STATUS, PREFERENCES},
        time::{iso, parse_time},
        user::{SignupSource, UserKey, etag_for, truncate},
        validation::Violations,
        write::EventContext,
    },
    store::{DataWrite, Store},
};

/// Most users or flags one hot-path check may name.
pub const MAX_BATCH: usize = 1000;
/// Default and largest `ListUserData` page.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// The `UserDataService` implementation over any [`Store`].
#[derive(Clone)]
pub struct UserDataApi {
    store: Arc<dyn Store>,
}

impl UserDataApi {
    /// Serves user data from `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

/// Parses the user of a request with nothing else to check.
fn user_only(user_id: &str, clerk_id: &str) -> Result<UserKey> {
    let mut v = Violations::default();
    let key = parse_key(&mut v, "user_id", user_id, clerk_id);
    v.finish_parsed(key)
}

fn etag_of(entry: Option<&DataEntry>) -> String {
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

fn preferences_to_proto(entry: Option<&DataEntry>) -> pb::Preferences {
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

fn onboarding_to_proto(entry: Option<&DataEntry>) -> pb::OnboardingStatus {
    let stored = onboarding::read(entry.map(|e| &e.value));
    let progress = onboarding::Progress::from_value(stored.as_ref());
    pb::OnboardingStatus {
        step: step_to_proto(progress.step) as i32,
        completed: progress.step == Step::Complete,
        started_at: progress.started_at.map(timestamp),
        completed_at: progress.completed_at.map(timestamp),
    }
}

fn activity_to_proto(entries: &[DataEntry]) -> pb::Activity {
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

fn entry_to_proto(e: &DataEntry) -> pb::UserDataEntry {
    pb::UserDataEntry {
        key: e.key.clone(),
        value: Some(json::from_json(&e.value)),
        etag: etag_for(e.version),
        update_time: Some(timestamp(e.updated_at)),
    }
}

fn entries(write: &DataWrite) -> Vec<DataEntry> {
    write.entries.values().cloned().collect()
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

fn parse_flag_keys<'a>(
    v: &mut Violations,
    field: &str,
    keys: impl IntoIterator<Item = &'a String>,
) -> Vec<String> {
    keys.into_iter()
        .enumerate()
        .filter_map(|(i, k)| v.check(&format!("{field}[{i}]"), flags::parse_flag_key(k)))
        .collect()
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
        Some(ts) => v.check("login.timestamp", super::convert::time_from_proto(ts)),
    };
    let device = login.device.as_deref().and_then(|d| v.check("login.device", activity::parse_device(d)));
    let ip = login.ip.as_deref().and_then(|ip| v.check("login.ip", activity::parse_ip(ip)));
    Some(activity::LoginEntry { timestamp: iso(time?), device, ip, success: login.success })
}

fn data_key(v: &mut Violations, key: &str) -> Option<String> {
    v.check("key", data::parse_key(key))
}

/// A key the generic RPCs may write: not one the service keeps itself.
fn writable_key(v: &mut Violations, key: &str) -> Option<String> {
    v.check("key", data::parse_key(key).and_then(|key| data::check_generic_write(&key).map(|()| key)))
}

fn page_token(after: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(after)
}

fn parse_page_token(token: &str) -> Result<String, String> {
    use base64::Engine;
    let bad = || "is not a page token from a previous ListUserData call".to_string();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let key = String::from_utf8(bytes).map_err(|_| bad())?;
    data::parse_key(&key).map_err(|_| bad())
}

impl UserDataApi {
    /// Checks that the caller may act on `user` (see [`access::authorize`]).
    async fn authorize(&self, principal: &Principal, user: &UserKey) -> Result<()> {
        access::authorize(&*self.store, principal, user).await
    }

    /// Checks that the caller may write `key` of `user` through the generic
    /// RPCs: a signed-in user their own `custom.*` keys only; onboarding,
    /// which only moves forward through `AdvanceOnboarding`, needs `admin`.
    async fn authorize_generic_write(&self, principal: &Principal, user: &UserKey, key: &str) -> Result<()> {
        access::authorize_key(principal, key)?;
        if key == ONBOARDING_STATUS {
            access::require_scope(
                principal,
                Scope::Admin,
                "writing onboarding_status with the generic RPCs",
            )?;
        }
        self.authorize(principal, user).await
    }

    /// The stored entry of one key for a user (`NOT_FOUND` for no user).
    async fn read_one(&self, user: &UserKey, key: &str) -> Result<Option<DataEntry>> {
        Ok(self.store.read_data(user, &[key]).await?.into_iter().find(|e| e.key == key))
    }

    async fn activity_edit(
        &self,
        user: UserKey,
        event: Option<EventContext>,
        actor: Actor,
        change: impl FnOnce(&mut activity::ActivityValue) + Send + 'static,
    ) -> Result<(pb::Activity, bool, i32)> {
        let write = self
            .store
            .edit_data(
                &user,
                &activity::KEYS,
                event.as_ref(),
                &actor.with_event(event.as_ref()),
                Box::new(move |set| activity::update(set, change)),
            )
            .await?;
        Ok((activity_to_proto(&entries(&write)), write.replayed, outcome_to_proto(write.outcome) as i32))
    }
}

#[tonic::async_trait]
impl UserDataService for UserDataApi {
    #[tracing::instrument(skip_all)]
    async fn get_preferences(
        &self,
        request: Request<pb::GetPreferencesRequest>,
    ) -> Result<Response<pb::GetPreferencesResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        let req = request.get_ref();
        let user = user_only(&req.user_id, &req.clerk_id)?;
        self.authorize(&principal, &user).await?;
        let entry = self.read_one(&user, PREFERENCES).await?;
        let entry = entry.as_ref();
        Ok(Response::new(pb::GetPreferencesResponse {
            preferences: Some(preferences_to_proto(entry)),
            etag: etag_of(entry),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn update_preferences(
        &self,
        request: Request<pb::UpdatePreferencesRequest>,
    ) -> Result<Response<pb::UpdatePreferencesResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        let actor = super::caller::actor(&request)?;
        let req = request.into_inner();
        let mut v = Violations::default();
        let user = parse_key(&mut v, "user_id", &req.user_id, &req.clerk_id);
        let prefs = req.preferences.unwrap_or_default();
        let patch = preference_patch(&mut v, &prefs, req.update_mask.as_ref());
        let expected = parse_expected_version(&mut v, &req.etag);
        let user = v.finish_parsed(user)?;
        self.authorize(&principal, &user).await?;
        let write = self
            .store
            .edit_data(
                &user,
                &[PREFERENCES],
                None,
                &actor,
                Box::new(move |set| preferences::update(set, patch, expected)),
            )
            .await?;
        let entry = write.entries.get(PREFERENCES);
        Ok(Response::new(pb::UpdatePreferencesResponse {
            preferences: Some(preferences_to_proto(entry)),
            etag: etag_of(entry),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_feature_flags(
        &self,
        request: Request<pb::ListFeatureFlagsRequest>,
    ) -> Result<Response<pb::ListFeatureFlagsResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        let req = request.get_ref();
        let user = user_only(&req.user_id, &req.clerk_id)?;
        self.authorize(&principal, &user).await?;
        let entry = self.read_one(&user, FEATURE_FLAGS).await?;
        let entry = entry.as_ref();
        let flags = flags::from_value(entry.map(|e| &e.value)).into_iter().collect();
        Ok(Response::new(pb::ListFeatureFlagsResponse { flags, etag: etag_of(entry) }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_feature_flag(
        &self,
        request: Request<pb::GetFeatureFlagRequest>,
    ) -> Result<Response<pb::GetFeatureFlagResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        let req = request.get_ref();
        let mut v = Violations::default();
        let user = parse_key(&mut v, "user_id", &req.user_id, &req.clerk_id);
        let flag = v.check("flag_key", flags::parse_flag_key(&req.flag_key));
        let (user, flag) = v.finish_parsed(user.zip(flag))?;
        self.authorize(&principal, &user).await?;
        let entry = self.read_one(&user, FEATURE_FLAGS).await?;
        let flags = flags::from_value(entry.as_ref().map(|e| &e.value));
        let enabled = *flags.get(&flag).ok_or_else(|| Error::NotFound {
            resource: "feature flag",
            key: format!("{flag:?} for {user}"),
        })?;
        Ok(Response::new(pb::GetFeatureFlagResponse { flag_key: flag, enabled }))
    }

    #[tracing::instrument(skip_all)]
    async fn update_feature_flags(
        &self,
        request: Request<pb::UpdateFeatureFlagsRequest>,
    ) -> Result<Response<pb::UpdateFeatureFlagsResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        let actor = super::caller::actor(&request)?;
        let req = request.into_inner();
        let mut v = Violations::default();
        let user = parse_key(&mut v, "user_id", &req.user_id, &req.clerk_id);
        if req.set.len() > MAX_BATCH || req.clear.len() > MAX_BATCH {
            v.add("set", format!("at most {MAX_BATCH} flags may be set and {MAX_BATCH} cleared per call"));
        }
        let mut set = flags::Flags::new();
        for (key, enabled) in &req.set {
            if let Some(key) = v.check(&format!("set[{}]", truncate(key)), flags::parse_flag_key(key)) {
                set.insert(key, *enabled);
            }
        }
        let clear = parse_flag_keys(&mut v, "clear", &req.clear);
        if let Some(both) = clear.iter().find(|k| set.contains_key(*k)) {
            v.add("clear", format!("{both:?} is both set and cleared"));
        }
        let expected = parse_expected_version(&mut v, &req.etag);
        let user = v.finish_parsed(user)?;
        self.authorize(&principal, &user).await?;
        let write = self
            .store
            .edit_data(
                &user,
                &[FEATURE_FLAGS],
                None,
                &actor,
                Box::new(move |data| flags::update(data, &set, &clear, expected)),
            )
            .await?;
        let entry = write.entries.get(FEATURE_FLAGS);
        Ok(Response::new(pb::UpdateFeatureFlagsResponse {
            flags: flags::from_value(entry.map(|e| &e.value)).into_iter().collect(),
            etag: etag_of(entry),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn check_feature_flag_for_users(
        &self,
        request: Request<pb::CheckFeatureFlagForUsersRequest>,
    ) -> Result<Response<pb::CheckFeatureFlagForUsersResponse>, Status> {
        let req = request.get_ref();
        let mut v = Violations::default();
        let flag = v.check("flag_key", flags::parse_flag_key(&req.flag_key));
        if req.user_ids.len() + req.clerk_ids.len() > MAX_BATCH {
            v.add("user_ids", format!("at most {MAX_BATCH} users per call"));
        }
        let ids: Vec<Uuid> = req
            .user_ids
            .iter()
            .enumerate()
            .filter_map(|(i, id)| v.check(&format!("user_ids[{i}]"), crate::domain::user::parse_user_id(id)))
            .collect();
        let clerk_ids: Vec<String> = req
            .clerk_ids
            .iter()
            .enumerate()
            .filter_map(|(i, id)| {
                v.check(&format!("clerk_ids[{i}]"), crate::domain::user::parse_clerk_id(id))
            })
            .collect();
        let flag = v.finish(|| flag.unwrap_or_default())?;
        let found = self.store.data_for_users(&ids, &clerk_ids, FEATURE_FLAGS).await?;
        let value_of = |found: Option<&crate::store::UserValue>, user: String| {
            let flag_value =
                found.and_then(|f| f.value.as_ref()).and_then(|m| m.get(&flag)).and_then(|b| b.as_bool());
            pb::UserFlagValue {
                user,
                user_found: found.is_some(),
                is_set: flag_value.is_some(),
                enabled: flag_value.unwrap_or(false),
            }
        };
        // Up to 1000 users each way: look them up by key, not by scanning.
        let by_id: HashMap<Uuid, &crate::store::UserValue> = found.iter().map(|f| (f.id, f)).collect();
        let by_clerk_id: HashMap<&str, &crate::store::UserValue> =
            found.iter().map(|f| (f.clerk_id.as_str(), f)).collect();
        let values = req
            .user_ids
            .iter()
            .zip(&ids)
            .map(|(given, id)| value_of(by_id.get(id).copied(), given.clone()))
            .chain(clerk_ids.iter().map(|c| value_of(by_clerk_id.get(c.as_str()).copied(), c.clone())))
            .collect();
        Ok(Response::new(pb::CheckFeatureFlagForUsersResponse { values }))
    }

    #[tracing::instrument(skip_all)]
    async fn check_feature_flags(
        &self,
        request: Request<pb::CheckFeatureFlagsRequest>,
    ) -> Result<Response<pb::CheckFeatureFlagsResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        let req = request.get_ref();
        let mut v = Violations::default();
        let user = parse_key(&mut v, "user_id", &req.user_id, &req.clerk_id);
        if req.flag_keys.len() > MAX_BATCH {
            v.add("flag_keys", format!("at most {MAX_BATCH} flags per call"));
        }
        let wanted = parse_flag_keys(&mut v, "flag_keys", &req.flag_keys);
        let user = v.finish_parsed(user)?;
        self.authorize(&principal, &user).await?;
        let entry = self.read_one(&user, FEATURE_FLAGS).await?;
        let all = flags::from_value(entry.as_ref().map(|e| &e.value));
        let flags = wanted.into_iter().filter_map(|k| all.get(&k).map(|on| (k, *on))).collect();
        Ok(Response::new(pb::CheckFeatureFlagsResponse { flags }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_onboarding(
        &self,
        request: Request<pb::GetOnboardingRequest>,
    ) -> Result<Response<pb::GetOnboardingResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        let req = request.get_ref();
        let user = user_only(&req.user_id, &req.clerk_id)?;
        self.authorize(&principal, &user).await?;
        let entry = self.read_one(&user, ONBOARDING_STATUS).await?;
        let entry = entry.as_ref();
        Ok(Response::new(pb::GetOnboardingResponse {
            status: Some(onboarding_to_proto(entry)),
            etag: etag_of(entry),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn advance_onboarding(
        &self,
        request: Request<pb::AdvanceOnboardingRequest>,
    ) -> Result<Response<pb::AdvanceOnboardingResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        let actor = super::caller::actor(&request)?;
        let req = request.get_ref();
        let mut v = Violations::default();
        let user = parse_key(&mut v, "user_id", &req.user_id, &req.clerk_id);
        let step = onboarding_step(&mut v, req.step);
        let expected = parse_expected_version(&mut v, &req.etag);
        let (user, step) = v.finish_parsed(user.zip(step))?;
        self.authorize(&principal, &user).await?;
        let now = crate::store::now();
        let write = self
            .store
            .edit_data(
                &user,
                &[ONBOARDING_STATUS],
                None,
                &actor,
                Box::new(move |set| onboarding::advance_stored(set, step, expected, now)),
            )
            .await?;
        let entry = write.entries.get(ONBOARDING_STATUS);
        Ok(Response::new(pb::AdvanceOnboardingResponse {
            status: Some(onboarding_to_proto(entry)),
            etag: etag_of(entry),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn reset_onboarding(
        &self,
        request: Request<pb::ResetOnboardingRequest>,
    ) -> Result<Response<pb::ResetOnboardingResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        let actor = super::caller::actor(&request)?;
        let req = request.get_ref();
        let user = user_only(&req.user_id, &req.clerk_id)?;
        self.authorize(&principal, &user).await?;
        self.store
            .edit_data(
                &user,
                &[ONBOARDING_STATUS],
                None,
                &actor,
                Box::new(|set| {
                    set.remove(ONBOARDING_STATUS);
                    Ok(())
                }),
            )
            .await?;
        Ok(Response::new(pb::ResetOnboardingResponse { status: Some(onboarding_to_proto(None)) }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_activity(
        &self,
        request: Request<pb::GetActivityRequest>,
    ) -> Result<Response<pb::GetActivityResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        let req = request.get_ref();
        let user = user_only(&req.user_id, &req.clerk_id)?;
        self.authorize(&principal, &user).await?;
        let found = self.store.read_data(&user, &activity::KEYS).await?;
        Ok(Response::new(pb::GetActivityResponse { activity: Some(activity_to_proto(&found)) }))
    }

    #[tracing::instrument(skip_all)]
    async fn record_login(
        &self,
        request: Request<pb::RecordLoginRequest>,
    ) -> Result<Response<pb::RecordLoginResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        let actor = super::caller::actor(&request)?;
        let req = request.get_ref();
        let mut v = Violations::default();
        let user = parse_key(&mut v, "user_id", &req.user_id, &req.clerk_id);
        let entry = login_entry(&mut v, req.login.as_ref());
        let event = parse_event(&mut v, req.event_context.as_ref(), &actor, "RecordLogin");
        let (user, entry) = v.finish_parsed(user.zip(entry))?;
        self.authorize(&principal, &user).await?;
        let (activity, replayed, outcome) =
            self.activity_edit(user, event, actor, move |a| a.record_login(entry)).await?;
        Ok(Response::new(pb::RecordLoginResponse { activity: Some(activity), replayed, outcome }))
    }

    #[tracing::instrument(skip_all)]
    async fn record_activity(
        &self,
        request: Request<pb::RecordActivityRequest>,
    ) -> Result<Response<pb::RecordActivityResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        let actor = super::caller::actor(&request)?;
        let req = request.get_ref();
        let mut v = Violations::default();
        let user = parse_key(&mut v, "user_id", &req.user_id, &req.clerk_id);
        let at = match &req.active_at {
            None => Some(Utc::now()),
            Some(ts) => v.check("active_at", super::convert::time_from_proto(ts)),
        };
        let event = parse_event(&mut v, req.event_context.as_ref(), &actor, "RecordActivity");
        let (user, at) = v.finish_parsed(user.zip(at))?;
        self.authorize(&principal, &user).await?;
        let (activity, replayed, outcome) =
            self.activity_edit(user, event, actor, move |a| a.touch(at)).await?;
        Ok(Response::new(pb::RecordActivityResponse { activity: Some(activity), replayed, outcome }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_user_history(
        &self,
        request: Request<pb::GetUserHistoryRequest>,
    ) -> Result<Response<pb::GetUserHistoryResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        let req = request.get_ref();
        let user = user_only(&req.user_id, &req.clerk_id)?;
        self.authorize(&principal, &user).await?;
        let wanted = [keys::NAME_HISTORY, keys::SIGNUP_DATE, keys::SIGNUP_SOURCE, keys::LAST_CLERK_SYNC];
        let found = self.store.read_data(&user, &wanted).await?;
        let value = |key| find(&found, key).map(|e| &e.value);
        let time = |key| value(key).and_then(|v| v.as_str()).and_then(|t| parse_time(t).ok()).map(timestamp);
        let names: Vec<data::history::NameEntry> = value(keys::NAME_HISTORY)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        let signup_source =
            match value(keys::SIGNUP_SOURCE).and_then(|v| v.as_str()).and_then(SignupSource::parse) {
                Some(SignupSource::Clerk) => pb::SignupSource::Clerk,
                Some(SignupSource::Invite) => pb::SignupSource::Invite,
                Some(SignupSource::Admin) => pb::SignupSource::Admin,
                None => pb::SignupSource::Unspecified,
            };
        Ok(Response::new(pb::GetUserHistoryResponse {
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
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_user_data(
        &self,
        request: Request<pb::GetUserDataRequest>,
    ) -> Result<Response<pb::GetUserDataResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        let req = request.get_ref();
        let mut v = Violations::default();
        let user = parse_key(&mut v, "user_id", &req.user_id, &req.clerk_id);
        let key = data_key(&mut v, &req.key);
        let (user, key) = v.finish_parsed(user.zip(key))?;
        self.authorize(&principal, &user).await?;
        let entry = self.read_one(&user, &key).await?.ok_or_else(|| Error::NotFound {
            resource: "user data",
            key: format!("key {key:?} of {user}"),
        })?;
        Ok(Response::new(pb::GetUserDataResponse { entry: Some(entry_to_proto(&entry)) }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_user_data(
        &self,
        request: Request<pb::ListUserDataRequest>,
    ) -> Result<Response<pb::ListUserDataResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        let req = request.get_ref();
        let mut v = Violations::default();
        let user = parse_key(&mut v, "user_id", &req.user_id, &req.clerk_id);
        let page_size = match req.page_size {
            n if n < 0 => {
                v.add("page_size", "must not be negative");
                0
            }
            0 => DEFAULT_PAGE,
            n => (n as u32).min(MAX_PAGE),
        };
        let after = if req.page_token.is_empty() {
            None
        } else {
            v.check("page_token", parse_page_token(&req.page_token))
        };
        let user = v.finish_parsed(user)?;
        self.authorize(&principal, &user).await?;
        let mut found = self.store.list_data(&user, after.as_deref(), page_size + 1).await?;
        let next_page_token = if found.len() > page_size as usize {
            found.truncate(page_size as usize);
            found.last().map(|e| page_token(&e.key)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListUserDataResponse {
            entries: found.iter().map(entry_to_proto).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn set_user_data(
        &self,
        request: Request<pb::SetUserDataRequest>,
    ) -> Result<Response<pb::SetUserDataResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        let actor = super::caller::actor(&request)?;
        let req = request.get_ref();
        let mut v = Violations::default();
        let user = parse_key(&mut v, "user_id", &req.user_id, &req.clerk_id);
        let key = writable_key(&mut v, &req.key);
        let value = match &req.value {
            None => {
                v.add("value", "is required");
                None
            }
            Some(value) => v.check("value", json::to_json(value)),
        };
        let expected = parse_expected_version(&mut v, &req.etag);
        let ((user, key), value) = v.finish_parsed(user.zip(key).zip(value))?;
        self.authorize_generic_write(&principal, &user, &key).await?;
        let edited = key.clone();
        let write = self
            .store
            .edit_data(
                &user,
                &[key.as_str()],
                None,
                &actor,
                Box::new(move |set| data::set_value(set, &edited, value, expected)),
            )
            .await?;
        let entry = write.entries.get(&key).ok_or_else(|| Error::Internal("value vanished".into()))?;
        Ok(Response::new(pb::SetUserDataResponse { entry: Some(entry_to_proto(entry)) }))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_user_data(
        &self,
        request: Request<pb::DeleteUserDataRequest>,
    ) -> Result<Response<pb::DeleteUserDataResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        let actor = super::caller::actor(&request)?;
        let req = request.get_ref();
        let mut v = Violations::default();
        let user = parse_key(&mut v, "user_id", &req.user_id, &req.clerk_id);
        let key = writable_key(&mut v, &req.key);
        let expected = parse_expected_version(&mut v, &req.etag);
        let (user, key) = v.finish_parsed(user.zip(key))?;
        self.authorize_generic_write(&principal, &user, &key).await?;
        let edited = key.clone();
        self.store
            .edit_data(
                &user,
                &[key.as_str()],
                None,
                &actor,
                Box::new(move |set| data::delete_value(set, &edited, expected)),
            )
            .await?;
        Ok(Response::new(pb::DeleteUserDataResponse {}))
    }
}
