//! Who is calling, as the change log records it: the identity the auth
//! layer attached to the request, and the call's request id.

use tonic::{Request, Status};

use crate::{auth::Principal, domain::change::Actor, middleware::RequestId};

/// The change-log actor of a call: [`Principal::actor`] (the client's name,
/// `user:<clerk_id>` or `anonymous`) and the request id.
pub fn actor<T>(request: &Request<T>) -> Result<Actor, Status> {
    let principal = Principal::of(request)?;
    let request_id = request.extensions().get::<RequestId>().map(|id| id.as_str().to_owned());
    Ok(Actor::new(principal.actor(), request_id))
}
