//! `userdata.v1.UserService`: each RPC parses its request, calls the store and
//! converts the answer back.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use userdata_proto::v1::{self as pb, user_service_server::UserService};

use super::{access, caller::Caller, convert::users as convert};
use crate::{
    auth::{Principal, Scope},
    domain,
    store::Store,
};

/// The `UserService` implementation over any [`Store`].
#[derive(Clone)]
pub struct UsersApi {
    store: Arc<dyn Store>,
}

impl UsersApi {
    /// Serves users from `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// `CreateUser` for `caller`; also one write of `ApplyEvents`.
    pub(super) async fn create(
        &self,
        caller: &Caller,
        message: pb::CreateUserRequest,
    ) -> domain::error::Result<pb::CreateUserResponse> {
        if message.user.as_ref().is_some_and(|u| u.role != 0 || u.status != 0) {
            access::require_scope(&caller.principal, Scope::Admin, "setting role or status")?;
        }
        let cmd = convert::create_user(message, caller.actor())?;
        let result = self.store.create_user(cmd).await?;
        Ok(convert::create_response(result))
    }

    /// `UpdateUser` for `caller`; also one write of `ApplyEvents`.
    pub(super) async fn update(
        &self,
        caller: &Caller,
        message: pb::UpdateUserRequest,
    ) -> domain::error::Result<pb::UpdateUserResponse> {
        let cmd = convert::update_user(message, caller.actor())?;
        if cmd.patch.role.is_some() || cmd.patch.status.is_some() {
            access::require_scope(&caller.principal, Scope::Admin, "changing role or status")?;
        }
        access::authorize(&*self.store, &caller.principal, &cmd.key).await?;
        let result = self.store.update_user(cmd).await?;
        Ok(convert::update_response(result))
    }

    /// `DeleteUser` for `caller`; also one write of `ApplyEvents`.
    pub(super) async fn delete(
        &self,
        caller: &Caller,
        message: &pb::DeleteUserRequest,
    ) -> domain::error::Result<pb::DeleteUserResponse> {
        let cmd = convert::delete_user(message, caller.actor())?;
        access::authorize(&*self.store, &caller.principal, &cmd.key).await?;
        let result = self.store.delete_user(cmd).await?;
        Ok(convert::delete_response(result))
    }
}

#[tonic::async_trait]
impl UserService for UsersApi {
    #[tracing::instrument(skip_all)]
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(self.create(&caller, request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let key = convert::get_user(request.get_ref())?;
        access::authorize(&*self.store, Principal::of(&request)?, &key).await?;
        let user = self.store.get_user(&key).await?;
        Ok(Response::new(pb::GetUserResponse { user: Some(user.into()) }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let query = convert::list_users(request.get_ref())?;
        // One extra row tells whether another page exists, so the last page
        // never carries a token that leads to an empty page.
        let mut users = self.store.list_users(&query.filter, query.after, query.page_size + 1).await?;
        let next_page_token = if users.len() > query.page_size as usize {
            users.truncate(query.page_size as usize);
            users.last().map(|u| super::page_token::encode(u.id, &query.filter)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListUsersResponse {
            users: users.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UpdateUserResponse>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(self.update(&caller, request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(self.delete(&caller, &request.into_inner()).await?))
    }
}
