//! The users user-service holds, read once with `ListUsers` before Clerk is
//! read, as the profiles the planner compares.
//!
//! Reading the local side first is what makes `--delete-missing` safe while
//! webhooks keep arriving: a user in this snapshot existed in Clerk before the
//! Clerk listing began, so it is in that listing unless Clerk deleted it.

use std::{collections::HashMap, time::Duration};

use tonic::Code;
use userdata_kit::grpc_code;
use userdata_proto::v1::{ListUsersRequest, User, user_service_client::UserServiceClient};

use crate::{
    clerk::Profile,
    reconcile::{progress::Progress, retry::RetryPolicy},
    upstream::UpstreamChannel,
};

/// Users per `ListUsers` page: user-service's maximum.
const PAGE_SIZE: i32 = 1000;

/// Why the local users could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot list user-service's users ({}): {message}{}", grpc_code::name(*code), scope_hint(*code))]
pub struct ListError {
    /// The gRPC code of the last attempt.
    pub code: Code,
    /// Its message.
    pub message: String,
}

/// What to fix when the token lacks a scope: unlike `serve`, which only
/// writes, reconcile also lists users, so the gateway's usual write-only
/// token is not enough.
fn scope_hint(code: Code) -> &'static str {
    match code {
        Code::PermissionDenied => {
            "; gateway reconcile needs a user-service token whose client has the `read` and `write` scopes"
        }
        _ => "",
    }
}

/// The Clerk-owned profile of every local user, by Clerk id.
pub type LocalUsers = HashMap<String, Profile>;

/// The profile fields of a stored user.
pub fn profile_of(user: User) -> Profile {
    Profile {
        clerk_id: user.clerk_id,
        email: user.email,
        first_name: user.first_name,
        last_name: user.last_name,
        username: user.username,
        image_url: user.image_url,
    }
}

/// Lists every user, page by page; transient failures are retried per page.
pub async fn snapshot(
    client: &UserServiceClient<UpstreamChannel>,
    timeout: Duration,
    retry: RetryPolicy,
    progress: &Progress,
) -> Result<LocalUsers, ListError> {
    let mut users = LocalUsers::new();
    let mut page_token = String::new();
    loop {
        let request = ListUsersRequest { page_size: PAGE_SIZE, page_token, ..ListUsersRequest::default() };
        let page = list_page(client, request, timeout, retry).await?;
        progress.advance(page.users.len() as u64);
        for user in page.users {
            users.insert(user.clerk_id.clone(), profile_of(user));
        }
        if page.next_page_token.is_empty() {
            return Ok(users);
        }
        page_token = page.next_page_token;
    }
}

async fn list_page(
    client: &UserServiceClient<UpstreamChannel>,
    request: ListUsersRequest,
    timeout: Duration,
    retry: RetryPolicy,
) -> Result<userdata_proto::v1::ListUsersResponse, ListError> {
    let mut failed = 0;
    loop {
        let mut call = tonic::Request::new(request.clone());
        call.set_timeout(timeout);
        let status = match tokio::time::timeout(timeout, client.clone().list_users(call)).await {
            Ok(Ok(response)) => return Ok(response.into_inner()),
            Ok(Err(status)) => status,
            Err(_) => tonic::Status::deadline_exceeded("user-service did not answer within the deadline"),
        };
        failed += 1;
        let transient = matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
                | Code::Aborted
                | Code::Unknown
        );
        if !transient || !retry.may_retry(failed) {
            return Err(ListError { code: status.code(), message: status.message().to_owned() });
        }
        tracing::warn!(code = grpc_code::name(status.code()), attempt = failed, "ListUsers failed; retrying");
        tokio::time::sleep(retry.backoff(failed)).await;
    }
}
