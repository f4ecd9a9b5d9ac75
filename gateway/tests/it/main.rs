//! Integration tests: the real gateway over HTTP against a fake user-service
//! over gRPC, both on 127.0.0.1:0.

mod cli;
mod forged;
mod health;
mod lifecycle;
mod support;
mod upstream;
mod webhook;
