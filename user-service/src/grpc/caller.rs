//! Who is calling: the identity the middleware attached to the request, as
//! the change log records it.

use tonic::Request;

use crate::{
    auth::Client,
    domain::change::{ANONYMOUS, Actor},
    middleware::RequestId,
};

/// The change-log actor of a call: the authenticated client's name (or
/// `anonymous` when authentication is off) and the call's request id.
pub fn actor<T>(request: &Request<T>) -> Actor {
    let client = request.extensions().get::<Client>().map_or(ANONYMOUS, Client::name);
    let request_id = request.extensions().get::<RequestId>().map(|id| id.as_str().to_owned());
    Actor::new(client, request_id)
}
