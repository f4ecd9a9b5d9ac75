//! user-service, as the gateway calls it: the channel (TLS, token, balancing
//! over replicas) and the client that turns verified Clerk events into gRPC
//! calls and their results into outcomes.

pub mod channel;
pub mod sync;

pub use channel::{
    Authorization, Failover, HEALTH_CHECK_METHOD, ReplicaWatcher, Replicas, Upstream, UpstreamChannel,
};
pub use sync::*;
