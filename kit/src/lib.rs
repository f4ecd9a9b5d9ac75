//! The plumbing user-service and the gateway share, so that the two binaries
//! start, log, parse their flags, serve metrics and stop the same way.
//!
//! Each module holds one thing: [`shutdown`] (SIGTERM or Ctrl-C),
//! [`logging`] (the `--log-format` flag and the tracing subscriber),
//! [`duration`] (the one grammar of every duration flag), [`metrics_http`]
//! (`GET /metrics` on its own listener), [`json_error`] (serde_json errors
//! without the values they quote) and [`grpc_code`] (gRPC code names).

pub mod duration;
pub mod grpc_code;
pub mod json_error;
pub mod logging;
pub mod metrics_http;
pub mod shutdown;
