//! Who is calling, as the change log records it: the identity the auth
//! layer attached to the request, and the call's request id.

use tonic::{Request, Status};

use crate::{auth::Principal, domain::change::Actor, middleware::RequestId};

/// The change-log actor of a call: [`Principal::actor`] (the client's name,
/// `user:<clerk_id>` or `anonymous`) and the request id.
pub fn actor<T>(request: &Request<T>) -> Result<Actor, Status> {
    Ok(Caller::of(request)?.actor())
}

/// The caller of one write: who, and the request id its change records. An
/// `ApplyEvents` call is one caller per write, each with the request id of
/// the webhook it stands for.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who, as the auth layer found it.
    pub principal: Principal,
    /// The request id of the call (or of the write, in a batch).
    pub request_id: Option<RequestId>,
}

impl Caller {
    /// The caller of `request`.
    pub fn of<T>(request: &Request<T>) -> Result<Self, Status> {
        Ok(Self {
            principal: Principal::of(request)?.clone(),
            request_id: request.extensions().get::<RequestId>().cloned(),
        })
    }

    /// The same caller, for a write that carries its own `request_id`: used
    /// when it is a valid request id, else the call's stays.
    #[must_use]
    pub fn for_write(&self, request_id: &str) -> Self {
        let own = (!request_id.is_empty()).then(|| RequestId::parse(request_id)).flatten();
        Self { principal: self.principal.clone(), request_id: own.or_else(|| self.request_id.clone()) }
    }

    /// The change-log actor.
    pub fn actor(&self) -> Actor {
        Actor::new(self.principal.actor(), self.request_id.as_ref().map(|id| id.as_str().to_owned()))
    }
}
