//! `userdata.v1.UserDataService`: typed and generic user data. Each RPC
//! parses its request (`convert::data`), authorizes the caller, calls the
//! store and converts the answer back.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use userdata_proto::v1::{self as pb, user_data_service_server::UserDataService};

use super::{
    access,
    caller::{self, Caller},
    convert::{
        data::{self as convert, etag_of},
        entries, only_user, outcome_to_proto,
    },
};
use crate::{
    auth::{Principal, Scope},
    domain::{
        change::Actor,
        data::{self, DataEntry, activity, flags, onboarding, preferences},
        error::{Error, Result},
        keys::{DataKey, FEATURE_FLAGS, ONBOARDING_STATUS, PREFERENCES},
        user::UserKey,
        write::EventContext,
    },
    store::{DataEdit, DataWrite, Store},
};

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

    /// Checks that the caller may act on `user` (see [`access::authorize`]).
    async fn authorize(&self, principal: &Principal, user: &UserKey) -> Result<()> {
        access::authorize(&*self.store, principal, user).await
    }

    /// Checks that the caller may write `key` of `user` through the generic
    /// RPCs: a signed-in user their own `custom.*` keys only; onboarding,
    /// which only moves forward through `AdvanceOnboarding`, needs `admin`.
    async fn authorize_generic_write(
        &self,
        principal: &Principal,
        user: &UserKey,
        key: &DataKey,
    ) -> Result<()> {
        access::authorize_key(principal, key.as_str())?;
        if key.as_str() == ONBOARDING_STATUS {
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

    /// The stored entry of `key` for the one user a read request names, once
    /// the caller may read it.
    async fn read_named(
        &self,
        principal: &Principal,
        user_id: &str,
        clerk_id: &str,
        key: &str,
    ) -> Result<Option<DataEntry>> {
        let user = only_user("user_id", user_id, clerk_id)?;
        self.authorize(principal, &user).await?;
        self.read_one(&user, key).await
    }

    /// Edits one key of `user` in one transaction (no event context).
    async fn edit_one(&self, user: &UserKey, key: &str, actor: &Actor, edit: DataEdit) -> Result<DataWrite> {
        self.store.edit_data(user, &[key], None, actor, edit).await
    }

    /// `RecordLogin` for `caller`; also one write of `ApplyEvents`.
    pub(super) async fn login(
        &self,
        caller: &Caller,
        message: &pb::RecordLoginRequest,
    ) -> Result<pb::RecordLoginResponse> {
        let actor = caller.actor();
        let (user, entry, event) = convert::record_login(message, &actor)?;
        self.authorize(&caller.principal, &user).await?;
        let (activity, replayed, outcome) =
            self.activity_edit(user, event, actor, move |a| a.record_login(entry)).await?;
        Ok(pb::RecordLoginResponse { activity, replayed, outcome })
    }

    /// `RecordActivity` for `caller`; also one write of `ApplyEvents`.
    pub(super) async fn activity(
        &self,
        caller: &Caller,
        message: &pb::RecordActivityRequest,
    ) -> Result<pb::RecordActivityResponse> {
        let actor = caller.actor();
        let (user, at, event) = convert::record_activity(message, &actor)?;
        self.authorize(&caller.principal, &user).await?;
        let (activity, replayed, outcome) =
            self.activity_edit(user, event, actor, move |a| a.touch(at)).await?;
        Ok(pb::RecordActivityResponse { activity, replayed, outcome })
    }

    async fn activity_edit(
        &self,
        user: UserKey,
        event: Option<EventContext>,
        actor: Actor,
        change: impl FnOnce(&mut activity::ActivityValue) + Send + 'static,
    ) -> Result<(Option<pb::Activity>, bool, i32)> {
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
        let entries: Vec<DataEntry> = write.entries.values().cloned().collect();
        let activity = convert::activity_to_proto(&entries);
        Ok((Some(activity), write.replayed, outcome_to_proto(write.outcome) as i32))
    }
}

#[tonic::async_trait]
impl UserDataService for UserDataApi {
    #[tracing::instrument(skip_all)]
    async fn get_preferences(
        &self,
        request: Request<pb::GetPreferencesRequest>,
    ) -> Result<Response<pb::GetPreferencesResponse>, Status> {
        let req = request.get_ref();
        let entry =
            self.read_named(Principal::of(&request)?, &req.user_id, &req.clerk_id, PREFERENCES).await?;
        let entry = entry.as_ref();
        let preferences = Some(convert::preferences_to_proto(entry));
        Ok(Response::new(pb::GetPreferencesResponse { preferences, etag: etag_of(entry) }))
    }

    #[tracing::instrument(skip_all)]
    async fn update_preferences(
        &self,
        request: Request<pb::UpdatePreferencesRequest>,
    ) -> Result<Response<pb::UpdatePreferencesResponse>, Status> {
        let actor = caller::actor(&request)?;
        let (user, patch, expected) = convert::update_preferences(request.get_ref())?;
        self.authorize(Principal::of(&request)?, &user).await?;
        let edit: DataEdit = Box::new(move |set| preferences::update(set, patch, expected));
        let write = self.edit_one(&user, PREFERENCES, &actor, edit).await?;
        let entry = write.entries.get(PREFERENCES);
        let preferences = Some(convert::preferences_to_proto(entry));
        Ok(Response::new(pb::UpdatePreferencesResponse { preferences, etag: etag_of(entry) }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_feature_flags(
        &self,
        request: Request<pb::ListFeatureFlagsRequest>,
    ) -> Result<Response<pb::ListFeatureFlagsResponse>, Status> {
        let req = request.get_ref();
        let entry =
            self.read_named(Principal::of(&request)?, &req.user_id, &req.clerk_id, FEATURE_FLAGS).await?;
        let entry = entry.as_ref();
        let flags = flags::from_value(entry.map(|e| &e.value)).into_iter().collect();
        Ok(Response::new(pb::ListFeatureFlagsResponse { flags, etag: etag_of(entry) }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_feature_flag(
        &self,
        request: Request<pb::GetFeatureFlagRequest>,
    ) -> Result<Response<pb::GetFeatureFlagResponse>, Status> {
        let (user, flag) = convert::get_feature_flag(request.get_ref())?;
        self.authorize(Principal::of(&request)?, &user).await?;
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
        let actor = caller::actor(&request)?;
        let update = convert::update_feature_flags(request.get_ref())?;
        self.authorize(Principal::of(&request)?, &update.user).await?;
        let convert::FlagsUpdate { user, set, clear, expected } = update;
        let edit: DataEdit = Box::new(move |data| flags::update(data, &set, &clear, expected));
        let write = self.edit_one(&user, FEATURE_FLAGS, &actor, edit).await?;
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
        let query = convert::flag_for_users(req)?;
        let found = self.store.data_for_users(&query.ids, &query.clerk_ids, FEATURE_FLAGS).await?;
        let values = convert::flag_values(req, &query, &found);
        Ok(Response::new(pb::CheckFeatureFlagForUsersResponse { values }))
    }

    #[tracing::instrument(skip_all)]
    async fn check_feature_flags(
        &self,
        request: Request<pb::CheckFeatureFlagsRequest>,
    ) -> Result<Response<pb::CheckFeatureFlagsResponse>, Status> {
        let (user, wanted) = convert::check_feature_flags(request.get_ref())?;
        self.authorize(Principal::of(&request)?, &user).await?;
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
        let req = request.get_ref();
        let entry =
            self.read_named(Principal::of(&request)?, &req.user_id, &req.clerk_id, ONBOARDING_STATUS).await?;
        let entry = entry.as_ref();
        let status = Some(convert::onboarding_to_proto(entry));
        Ok(Response::new(pb::GetOnboardingResponse { status, etag: etag_of(entry) }))
    }

    #[tracing::instrument(skip_all)]
    async fn advance_onboarding(
        &self,
        request: Request<pb::AdvanceOnboardingRequest>,
    ) -> Result<Response<pb::AdvanceOnboardingResponse>, Status> {
        let actor = caller::actor(&request)?;
        let (user, step, expected) = convert::advance_onboarding(request.get_ref())?;
        self.authorize(Principal::of(&request)?, &user).await?;
        let now = crate::store::now();
        let edit: DataEdit = Box::new(move |set| onboarding::advance_stored(set, step, expected, now));
        let write = self.edit_one(&user, ONBOARDING_STATUS, &actor, edit).await?;
        let entry = write.entries.get(ONBOARDING_STATUS);
        let status = Some(convert::onboarding_to_proto(entry));
        Ok(Response::new(pb::AdvanceOnboardingResponse { status, etag: etag_of(entry) }))
    }

    #[tracing::instrument(skip_all)]
    async fn reset_onboarding(
        &self,
        request: Request<pb::ResetOnboardingRequest>,
    ) -> Result<Response<pb::ResetOnboardingResponse>, Status> {
        let actor = caller::actor(&request)?;
        let req = request.get_ref();
        let user = only_user("user_id", &req.user_id, &req.clerk_id)?;
        self.authorize(Principal::of(&request)?, &user).await?;
        let edit: DataEdit = Box::new(|set| {
            set.remove(ONBOARDING_STATUS);
            Ok(())
        });
        self.edit_one(&user, ONBOARDING_STATUS, &actor, edit).await?;
        Ok(Response::new(pb::ResetOnboardingResponse { status: Some(convert::onboarding_to_proto(None)) }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_activity(
        &self,
        request: Request<pb::GetActivityRequest>,
    ) -> Result<Response<pb::GetActivityResponse>, Status> {
        let req = request.get_ref();
        let user = only_user("user_id", &req.user_id, &req.clerk_id)?;
        self.authorize(Principal::of(&request)?, &user).await?;
        let found = self.store.read_data(&user, &activity::KEYS).await?;
        Ok(Response::new(pb::GetActivityResponse { activity: Some(convert::activity_to_proto(&found)) }))
    }

    #[tracing::instrument(skip_all)]
    async fn record_login(
        &self,
        request: Request<pb::RecordLoginRequest>,
    ) -> Result<Response<pb::RecordLoginResponse>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(self.login(&caller, request.get_ref()).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn record_activity(
        &self,
        request: Request<pb::RecordActivityRequest>,
    ) -> Result<Response<pb::RecordActivityResponse>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(self.activity(&caller, request.get_ref()).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn get_user_history(
        &self,
        request: Request<pb::GetUserHistoryRequest>,
    ) -> Result<Response<pb::GetUserHistoryResponse>, Status> {
        let req = request.get_ref();
        let user = only_user("user_id", &req.user_id, &req.clerk_id)?;
        self.authorize(Principal::of(&request)?, &user).await?;
        let found = self.store.read_data(&user, &convert::HISTORY_KEYS).await?;
        Ok(Response::new(convert::history_to_proto(&found)))
    }

    #[tracing::instrument(skip_all)]
    async fn get_user_data(
        &self,
        request: Request<pb::GetUserDataRequest>,
    ) -> Result<Response<pb::GetUserDataResponse>, Status> {
        let (user, key) = entries::get_user_data(request.get_ref())?;
        self.authorize(Principal::of(&request)?, &user).await?;
        let entry = self.read_one(&user, key.as_str()).await?.ok_or_else(|| Error::NotFound {
            resource: "user data",
            key: format!("key {:?} of {user}", key.as_str()),
        })?;
        Ok(Response::new(pb::GetUserDataResponse { entry: Some(entries::entry_to_proto(&entry)) }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_user_data(
        &self,
        request: Request<pb::ListUserDataRequest>,
    ) -> Result<Response<pb::ListUserDataResponse>, Status> {
        let req = request.get_ref();
        let query = entries::list_user_data(req)?;
        self.authorize(Principal::of(&request)?, &query.user).await?;
        let after = query.after.as_ref().map(DataKey::as_str);
        // One extra row tells whether another page exists.
        let found = self.store.list_data(&query.user, after, query.page_size + 1).await?;
        Ok(Response::new(entries::list_user_data_response(req, query.page_size, found)))
    }

    #[tracing::instrument(skip_all)]
    async fn set_user_data(
        &self,
        request: Request<pb::SetUserDataRequest>,
    ) -> Result<Response<pb::SetUserDataResponse>, Status> {
        let actor = caller::actor(&request)?;
        let (user, key, value, expected) = entries::set_user_data(request.get_ref())?;
        self.authorize_generic_write(Principal::of(&request)?, &user, &key).await?;
        let edited = key.clone();
        let edit: DataEdit = Box::new(move |set| data::set_value(set, &edited, value, expected));
        let write = self.edit_one(&user, key.as_str(), &actor, edit).await?;
        let entry =
            write.entries.get(key.as_str()).ok_or_else(|| Error::Internal("value vanished".into()))?;
        Ok(Response::new(pb::SetUserDataResponse { entry: Some(entries::entry_to_proto(entry)) }))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_user_data(
        &self,
        request: Request<pb::DeleteUserDataRequest>,
    ) -> Result<Response<pb::DeleteUserDataResponse>, Status> {
        let actor = caller::actor(&request)?;
        let (user, key, expected) = entries::delete_user_data(request.get_ref())?;
        self.authorize_generic_write(Principal::of(&request)?, &user, &key).await?;
        let edited = key.clone();
        let edit: DataEdit = Box::new(move |set| data::delete_value(set, &edited, expected));
        self.edit_one(&user, key.as_str(), &actor, edit).await?;
        Ok(Response::new(pb::DeleteUserDataResponse {}))
    }
}
