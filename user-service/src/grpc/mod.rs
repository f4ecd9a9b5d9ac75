//! The gRPC transport: our services plus standard health and reflection.

pub mod access;
mod caller;
mod changes;
mod convert;
mod events;
mod expiry;
mod json;
mod page_token;
mod status;
mod user_data;
mod users;

use std::{sync::Arc, time::Duration};

use tonic::service::Routes;
use tonic_health::{ServingStatus, server::HealthReporter};
use userdata_proto::v1::{
    change_service_server::{ChangeServiceServer, SERVICE_NAME as CHANGE_SERVICE},
    event_service_server::{EventServiceServer, SERVICE_NAME as EVENT_SERVICE},
    user_data_service_server::{SERVICE_NAME as USER_DATA_SERVICE, UserDataServiceServer},
    user_service_server::{SERVICE_NAME as USER_SERVICE, UserServiceServer},
};

pub use self::{
    changes::ChangesApi,
    events::{EventsApi, MAX_EVENT_WRITES},
    status::ERROR_DOMAIN,
    user_data::UserDataApi,
    users::UsersApi,
};
use crate::{feed::Feed, store::Store};

/// Largest request or response message accepted, in bytes.
pub const MAX_MESSAGE_SIZE: usize = 1024 * 1024;

/// Builds every gRPC service this server exposes (reflection only when
/// `reflection` is true; change streams end after `max_stream_age`), and
/// returns the health reporter so the caller can keep it in step with the
/// database.
pub fn routes(
    store: Arc<dyn Store>,
    feed: Arc<Feed>,
    reflection: bool,
    max_stream_age: Duration,
) -> Result<(Routes, HealthReporter), tonic_reflection::server::Error> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let descriptor_sets = [
        userdata_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_types::pb::FILE_DESCRIPTOR_SET,
    ];
    let mut v1 = tonic_reflection::server::Builder::configure();
    let mut v1alpha = tonic_reflection::server::Builder::configure();
    for set in descriptor_sets {
        v1 = v1.register_encoded_file_descriptor_set(set);
        v1alpha = v1alpha.register_encoded_file_descriptor_set(set);
    }
    let (users_api, data_api) = (UsersApi::new(store.clone()), UserDataApi::new(store.clone()));
    let events = EventServiceServer::new(EventsApi::new(users_api.clone(), data_api.clone()))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let users = UserServiceServer::new(users_api)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let data = UserDataServiceServer::new(data_api)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let changes = ChangeServiceServer::new(ChangesApi::new(store, feed, max_stream_age))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let mut routes =
        Routes::new(health).add_service(users).add_service(data).add_service(changes).add_service(events);
    if reflection {
        routes = routes.add_service(v1.build_v1()?).add_service(v1alpha.build_v1alpha()?);
    }
    Ok((routes, health_reporter))
}

/// Reports SERVING while the database answers and NOT_SERVING while it does
/// not, for the whole server (`""`) and for each of our services. Runs until
/// the process ends.
pub async fn watch_database(store: Arc<dyn Store>, reporter: HealthReporter, every: Duration) {
    let mut last = None;
    loop {
        let status = match tokio::time::timeout(every, store.ping()).await {
            Ok(Ok(())) => ServingStatus::Serving,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "database health check failed");
                ServingStatus::NotServing
            }
            Err(_) => ServingStatus::NotServing,
        };
        if last != Some(status) {
            tracing::info!(?status, "health status changed");
            for service in ["", USER_SERVICE, USER_DATA_SERVICE, CHANGE_SERVICE, EVENT_SERVICE] {
                reporter.set_service_status(service, status).await;
            }
            last = Some(status);
        }
        tokio::time::sleep(every).await;
    }
}
