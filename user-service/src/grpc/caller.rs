//! Who is calling: the identity the middleware attached to the request, as
//! the change log records it.

use tonic::Request;

use crate::{
    auth::Principal,
    domain::change::{ANONYMOUS, Actor},
    middleware::RequestId,
};

/// The change-log actor of a call: [`Principal::actor`] (the service
/// client's name, `user:<clerk_id>` for a signed-in user, `anonymous` when
/// authentication is off) and the call's request id.
pub fn actor<T>(request: &Request<T>) -> Actor {
    let client =
        request.extensions().get::<Principal>().map_or_else(|| ANONYMOUS.to_owned(), Principal::actor);
    let request_id = request.extensions().get::<RequestId>().map(|id| id.as_str().to_owned());
    Actor::new(client, request_id)
}
