//! Tower layers around every call, outermost first:
//!
//! 0. [`BrowserCorsLayer`] and tonic-web's `GrpcWebLayer`: CORS for the
//!    configured origins, and gRPC-Web turned into gRPC for the layers below;
//! 1. [`RequestIdLayer`]: takes or makes the request id, opens the tracing
//!    span every log line of the call is written in, echoes the id back;
//! 2. [`ObserveLayer`]: one log line and the metrics per call, with the final
//!    gRPC code (from the response headers or, after the body, its trailers);
//! 3. [`AuthLayer`]: the caller's credential, and the method's scope or
//!    end-user rule;
//! 4. [`LimitLayer`]: concurrency limit with load shedding, and a timeout.
//!
//! Errors these layers produce are gRPC responses carrying a
//! `google.rpc.ErrorInfo`, like the service's own errors.

mod auth;
mod cors;
mod limit;
pub mod methods;
mod observe;
mod request_id;

use std::{collections::HashMap, convert::Infallible, future::Future, pin::Pin};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub use self::{
    auth::AuthLayer,
    cors::BrowserCorsLayer,
    limit::LimitLayer,
    observe::ObserveLayer,
    request_id::{REQUEST_ID_HEADER, RequestId, RequestIdLayer},
};
use crate::grpc::ERROR_DOMAIN;

/// A gRPC call as the layers see it.
pub type GrpcRequest = http::Request<tonic::body::Body>;
/// A gRPC response as the layers see it.
pub type GrpcResponse = http::Response<tonic::body::Body>;
/// The future each layer returns.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<GrpcResponse, Infallible>> + Send>>;

/// A status with an `ErrorInfo` of `reason`.
fn error_status(code: Code, message: impl Into<String>, reason: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(code, message, details)
}

/// A trailers-only error response with an `ErrorInfo` of `reason`.
fn error_response(code: Code, message: impl Into<String>, reason: &str) -> GrpcResponse {
    error_status(code, message, reason).into_http()
}
