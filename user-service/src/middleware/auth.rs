//! Authenticates each call and applies the method's access rule, once per
//! call, before any handler runs.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use http::header::AUTHORIZATION;
use tonic::Code;
use tower::{Layer, Service};

use super::{
    GrpcRequest, GrpcResponse, ResponseFuture, error_response,
    methods::{self, Access, UserRule},
};
use crate::auth::{Authenticator, Principal, Scope};

/// Authenticates calls with an [`Authenticator`]; without one lets every
/// call in as [`Principal::Anonymous`].
///
/// A call without a valid credential gets UNAUTHENTICATED. A service client
/// that lacks the method's scope, or a signed-in user calling a method the
/// end-user rules refuse, gets PERMISSION_DENIED. An admitted call carries
/// its [`Principal`] in the request extensions, and its actor on the call's
/// span (`client`). Whether a signed-in user names their own data is checked
/// by the handlers, which read the request.
#[derive(Debug, Clone, Default)]
pub struct AuthLayer {
    authenticator: Option<Arc<Authenticator>>,
}

impl AuthLayer {
    /// Checks calls with `authenticator`; `None` turns authentication off.
    pub fn new(authenticator: Option<Arc<Authenticator>>) -> Self {
        Self { authenticator }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, authenticator: self.authenticator.clone() }
    }
}

/// The service of [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Option<Arc<Authenticator>>,
}

impl<S> Service<GrpcRequest> for AuthService<S>
where
    S: Service<GrpcRequest, Response = GrpcResponse, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = GrpcResponse;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: GrpcRequest) -> Self::Future {
        let Some(authenticator) = self.authenticator.clone() else {
            request.extensions_mut().insert(Principal::Anonymous);
            return Box::pin(self.inner.call(request));
        };
        let path = request.uri().path();
        let Access::Scope(needed) = methods::access(path) else {
            return Box::pin(self.inner.call(request));
        };
        let rule = methods::user_rule(path);
        let method = methods::label(path);
        // The ready service goes into the future; a fresh clone stays here
        // for the next call (tower's rule for services used across an await).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let principal = match authenticator.authenticate(request.headers().get(AUTHORIZATION)).await {
                Ok(principal) => principal,
                Err(rejection) => {
                    let message = rejection.message();
                    tracing::warn!(reason = %message, "call rejected: not authenticated");
                    return Ok(error_response(rejection.code(), message, rejection.reason()));
                }
            };
            tracing::Span::current().record("client", principal.actor());
            if let Some(refusal) = refuse(&principal, needed, rule, method) {
                return Ok(refusal);
            }
            request.extensions_mut().insert(principal);
            inner.call(request).await
        })
    }
}

/// The PERMISSION_DENIED answer for a caller the method's rule refuses.
fn refuse(principal: &Principal, needed: Scope, rule: UserRule, method: &str) -> Option<GrpcResponse> {
    match (principal, rule) {
        (Principal::User(_), UserRule::Denied(reason)) => {
            tracing::warn!(method, "call rejected: not allowed for signed-in users");
            Some(error_response(
                Code::PermissionDenied,
                format!("a signed-in user may not call {method}: {reason}"),
                "NOT_ALLOWED_FOR_USERS",
            ))
        }
        (Principal::User(_), _) => None,
        (principal, _) if !principal.has_scope(needed) => {
            tracing::warn!(scope = needed.as_str(), "call rejected: missing scope");
            Some(error_response(
                Code::PermissionDenied,
                format!("this call needs the `{needed}` scope"),
                "MISSING_SCOPE",
            ))
        }
        _ => None,
    }
}
