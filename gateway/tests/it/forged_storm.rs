//! Storms of deliveries at once: forged ones must all be refused before
//! user-service (counted on the fake upstream), and one genuine `svix-id`
//! delivered many times concurrently to a real user-service has one effect.

use futures_free::join_all;
use http::{HeaderMap, HeaderValue};
use user_service::testing::{Db, TestServer};
use userdata_proto::v1::{self as pb, user_data_service_client::UserDataServiceClient};

use crate::support::{
    FOREIGN_SECRET, FakeUpstream, Gateway, SECOND_SECRET, SECRET, config, deleted_event, now, signed, url_of,
    user_event,
};

/// `join_all` without a futures dependency: spawn each and await in order.
mod futures_free {
    pub async fn join_all<T: Send + 'static>(
        futures: impl IntoIterator<Item = impl std::future::Future<Output = T> + Send + 'static>,
    ) -> Vec<T> {
        let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
        let mut out = Vec::with_capacity(handles.len());
        for handle in handles {
            out.push(handle.await.expect("task"));
        }
        out
    }
}

/// Every way we know to forge a delivery of `body`, as (what, headers, body).
fn forgeries(body: &str) -> Vec<(&'static str, HeaderMap, String)> {
    let t = now();
    let genuine = signed(SECRET, "msg_storm", t, body);
    let mut out = Vec::new();
    let mut unsigned = genuine.clone();
    unsigned.remove("svix-signature");
    out.push(("unsigned", unsigned, body.to_owned()));
    let mut no_headers = HeaderMap::new();
    no_headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    out.push(("no svix headers", no_headers, body.to_owned()));
    out.push(("foreign secret", signed(FOREIGN_SECRET, "msg_storm", t, body), body.to_owned()));
    out.push(("old timestamp (replay)", signed(SECRET, "msg_storm", t - 301, body), body.to_owned()));
    out.push(("much older timestamp", signed(SECRET, "msg_storm", t - 86_400, body), body.to_owned()));
    // Well past the 300 s tolerance: the storm itself takes time, and a
    // future timestamp moves into the window as it runs.
    out.push(("future timestamp", signed(SECRET, "msg_storm", t + 400, body), body.to_owned()));
    out.push(("tampered body", genuine.clone(), body.replacen("user_victim", "user_victin", 1)));
    out.push(("appended body", genuine.clone(), format!("{body} ")));
    let mut other_id = genuine.clone();
    other_id.insert("svix-id", HeaderValue::from_static("msg_other"));
    out.push(("signature of another svix-id", other_id, body.to_owned()));
    let mut other_time = genuine.clone();
    other_time.insert("svix-timestamp", HeaderValue::from(t - 1));
    out.push(("signature of another timestamp", other_time, body.to_owned()));
    let mut v2 = genuine.clone();
    let sig = genuine["svix-signature"].to_str().unwrap().replacen("v1,", "v2,", 1);
    v2.insert("svix-signature", HeaderValue::from_str(&sig).unwrap());
    out.push(("signature under another scheme", v2, body.to_owned()));
    let mut empty = genuine.clone();
    empty.insert("svix-signature", HeaderValue::from_static("v1,"));
    out.push(("empty signature", empty, body.to_owned()));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_storm_of_forgeries_never_reaches_user_service() {
    let upstream = FakeUpstream::start().await;
    let gateway = std::sync::Arc::new(Gateway::start(&upstream).await);
    let bodies = [user_event("user.updated", "user_victim"), deleted_event("user_victim", Some(1))];
    assert!(bodies.iter().all(|b| b.contains("user_victim")), "the tampering below needs the id");
    let mut requests = Vec::new();
    for round in 0..10 {
        for body in &bodies {
            for (what, headers, body) in forgeries(body) {
                let gateway = gateway.clone();
                requests.push(async move { (round, what, gateway.post(headers, body).await) });
            }
        }
    }
    let total = requests.len();
    let answers = join_all(requests).await;
    for (round, what, answer) in &answers {
        assert!(
            matches!(answer.status.as_u16(), 400 | 401),
            "round {round}, {what}: {} {}",
            answer.status,
            answer.json
        );
    }
    assert_eq!(answers.len(), total);
    upstream.assert_not_called();

    // The same gateway still applies a genuine delivery: exactly one call.
    let answer = gateway.post_signed("msg_genuine_after_storm", &bodies[0]).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(upstream.calls().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_out_secret_is_refused_and_the_new_one_accepted() {
    let upstream = FakeUpstream::start().await;
    // After rotation only the second secret is configured.
    let gateway = Gateway::start_with(config(upstream.url(), SECOND_SECRET)).await;
    let body = user_event("user.updated", "user_rotated");
    let t = now();

    let old = gateway.post(signed(SECRET, "msg_rotated_old", t, &body), body.clone()).await;
    assert_eq!(old.status, 401);
    assert_eq!(old.json["field"], "svix-signature");
    upstream.assert_not_called();

    // Svix signs with both during a rotation; one valid entry is enough.
    let mut both = signed(SECOND_SECRET, "msg_rotated_both", t, &body);
    let old_sig = signed(SECRET, "msg_rotated_both", t, &body)["svix-signature"].to_str().unwrap().to_owned();
    let new_sig = both["svix-signature"].to_str().unwrap().to_owned();
    both.insert("svix-signature", HeaderValue::from_str(&format!("{old_sig} {new_sig}")).unwrap());
    let answer = gateway.post(both, body.clone()).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(upstream.calls().len(), 1);
}

async fn real_gateway(server: &TestServer) -> Gateway {
    Gateway::start_with(config(url_of(server.addr), SECRET)).await
}

/// One `svix-id`, delivered 48 times at once through the real gateway to a
/// real user-service, for each kind of event the gateway applies: one effect.
async fn one_svix_id_delivered_concurrently_has_one_effect(db: Db) {
    let server = TestServer::start(db).await;
    let gateway = std::sync::Arc::new(real_gateway(&server).await);
    let clerk_id = "user_concurrent";

    async fn storm(gateway: &std::sync::Arc<Gateway>, msg_id: &'static str, body: String) -> Vec<String> {
        let posts = (0..48).map(|_| {
            let (gateway, body) = (gateway.clone(), body.clone());
            async move { gateway.post_signed(msg_id, &body).await }
        });
        let answers = join_all(posts).await;
        let mut outcomes: Vec<String> = answers
            .iter()
            .map(|a| {
                assert_eq!(a.status, 200, "{msg_id}: {}", a.json);
                a.json["outcome"].as_str().unwrap_or_default().to_owned()
            })
            .collect();
        outcomes.sort();
        outcomes
    }

    let created = storm(&gateway, "msg_conc_create", user_event("user.created", clerk_id)).await;
    assert_eq!(created.iter().filter(|o| *o == "applied").count(), 1, "{created:?}");
    assert!(created.iter().all(|o| matches!(o.as_str(), "applied" | "duplicate" | "already_exists")));

    let mut renamed: serde_json::Value = serde_json::from_str(&user_event("user.updated", clerk_id)).unwrap();
    renamed["data"]["first_name"] = "Renamed".into();
    renamed["data"]["updated_at"] = (1_750_000_999_000_i64).into();
    let updated = storm(&gateway, "msg_conc_update", renamed.to_string()).await;
    assert_eq!(updated.iter().filter(|o| *o == "applied").count(), 1, "{updated:?}");

    let session = serde_json::json!({
        "type": "session.created", "object": "event", "timestamp": 1_750_001_000_000_i64,
        "data": {"id": "sess_conc", "user_id": clerk_id, "status": "active",
                 "created_at": 1_750_001_000_000_i64, "updated_at": 1_750_001_000_000_i64,
                 "last_active_at": 1_750_001_000_000_i64}
    });
    let logins = storm(&gateway, "msg_conc_session", session.to_string()).await;
    assert_eq!(logins.iter().filter(|o| *o == "applied").count(), 1, "{logins:?}");

    let mut data = UserDataServiceClient::new(server.channel().await);
    let history = data
        .get_user_history(pb::GetUserHistoryRequest { clerk_id: clerk_id.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.name_history.len(), 1, "{:?}", history.name_history);
    let activity = data
        .get_activity(pb::GetActivityRequest { clerk_id: clerk_id.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .activity
        .unwrap_or_default();
    assert_eq!(activity.session_count, 1);
    assert_eq!(activity.login_history.len(), 1);

    let deleted = storm(&gateway, "msg_conc_delete", deleted_event(clerk_id, Some(1_750_002_000_000))).await;
    assert_eq!(deleted.iter().filter(|o| *o == "applied").count(), 1, "{deleted:?}");
    let mut users = server.users().await;
    let gone = users.get_user(pb::GetUserRequest { clerk_id: clerk_id.into(), ..Default::default() }).await;
    assert_eq!(gone.map(|_| ()).unwrap_err().code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_svix_id_delivered_concurrently_has_one_effect_on_postgres() {
    one_svix_id_delivered_concurrently_has_one_effect(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_svix_id_delivered_concurrently_has_one_effect_on_sqlite() {
    one_svix_id_delivered_concurrently_has_one_effect(Db::Sqlite).await;
}
