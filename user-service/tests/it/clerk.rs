//! Clerk session tokens through the real server: real RSA keys, a JWKS on a
//! local port, and every check Clerk documents failing on its own.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tonic::{Code, Status};
use tonic_types::StatusExt;
use userdata_proto::v1 as pb;

use crate::{
    helpers::{Db, TestServer},
    session::{self, Clerk, NEVER, SigningKey, claims},
};

const ALICE: &str = "user_alice";

/// Reads Alice's own record with `token`.
async fn get_alice(server: &TestServer, token: String) -> Result<pb::User, Status> {
    let (mut users, _) = session::clients(server, Some(token)).await;
    users
        .get_user(pb::GetUserRequest { clerk_id: ALICE.into(), ..Default::default() })
        .await
        .map(|response| response.into_inner().user.expect("user"))
}

/// A server knowing Alice, with session tokens from `clerk`.
async fn with_alice(clerk: &Clerk, tweak: impl FnOnce(&mut user_service::config::Config)) -> TestServer {
    let (server, file) = session::server(Db::Sqlite, clerk, tweak).await;
    // The tokens file is read at startup; it may go now.
    drop(file);
    session::create_user(&server, ALICE).await;
    server
}

fn assert_unauthenticated(result: Result<pb::User, Status>, says: &str) {
    let status = result.expect_err("the token must be refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains(says), "expected {says:?} in {:?}", status.message());
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "UNAUTHENTICATED");
}

/// Alice's claims with `change` applied.
fn alice_claims(change: impl FnOnce(&mut Value)) -> Value {
    let mut claims = claims(ALICE);
    change(&mut claims);
    claims
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_session_token_reads_the_users_own_record() {
    let clerk = Clerk::start().await;
    let server = with_alice(&clerk, |_| {}).await;
    let user = get_alice(&server, clerk.token(ALICE)).await.unwrap();
    assert_eq!(user.clerk_id, ALICE);
    assert_eq!(clerk.fetches(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pem_key_verifies_tokens_without_fetching_the_jwks() {
    let clerk = Clerk::start().await;
    let pem = clerk.key.public_pem.clone();
    let server = with_alice(&clerk, |config| {
        config.clerk_jwks_url = None;
        config.clerk_jwt_key = Some(pem);
    })
    .await;
    assert_eq!(get_alice(&server, clerk.token(ALICE)).await.unwrap().clerk_id, ALICE);
    assert_eq!(clerk.fetches(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_unauthenticated() {
    let clerk = Clerk::start().await;
    let server = with_alice(&clerk, |_| {}).await;
    let token = clerk.key.sign(&alice_claims(|c| {
        c["iat"] = json!(now() - 120);
        c["nbf"] = json!(now() - 120);
        c["exp"] = json!(now() - 60);
    }));
    assert_unauthenticated(get_alice(&server, token).await, "expired (exp)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_not_valid_yet_is_unauthenticated() {
    let clerk = Clerk::start().await;
    let server = with_alice(&clerk, |_| {}).await;
    let token = clerk.key.sign(&alice_claims(|c| {
        c["nbf"] = json!(now() + 60);
        c["exp"] = json!(now() + 120);
    }));
    assert_unauthenticated(get_alice(&server, token).await, "not valid yet (nbf)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_checks_tolerate_five_seconds_of_clock_skew_and_no_more() {
    let clerk = Clerk::start().await;
    let server = with_alice(&clerk, |_| {}).await;
    let expired = |ago: i64| {
        clerk.key.sign(&alice_claims(|c| {
            c["nbf"] = json!(now() - 120);
            c["exp"] = json!(now() - ago);
        }))
    };
    let early = |ahead: i64| {
        clerk.key.sign(&alice_claims(|c| {
            c["nbf"] = json!(now() + ahead);
            c["exp"] = json!(now() + 120);
        }))
    };
    assert_eq!(get_alice(&server, expired(2)).await.unwrap().clerk_id, ALICE, "exp 2 s ago");
    assert_unauthenticated(get_alice(&server, expired(10)).await, "expired (exp)");
    assert_eq!(get_alice(&server, early(2)).await.unwrap().clerk_id, ALICE, "nbf 2 s ahead");
    assert_unauthenticated(get_alice(&server, early(10)).await, "not valid yet (nbf)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_opened_with_a_session_token_ends_when_the_token_expires() {
    use tokio_stream::StreamExt;
    let clerk = Clerk::start().await;
    let server = with_alice(&clerk, |_| {}).await;
    // Accepted within the clock skew, so it runs out a moment after opening.
    let token = clerk.key.sign(&alice_claims(|c| c["exp"] = json!(now() - 3)));
    let mut changes = pb::change_service_client::ChangeServiceClient::with_interceptor(
        server.channel().await,
        session::Bearer(Some(token)),
    );
    let mut stream = changes.watch_changes(pb::WatchChangesRequest::default()).await.unwrap().into_inner();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.next().await {
                Some(Ok(_heartbeat)) => continue,
                Some(Err(status)) => break status,
                None => panic!("the stream ended without saying why"),
            }
        }
    })
    .await
    .expect("the stream ends when the token does");
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("expired (exp)"), "{ended:?}");
    assert!(stream.next().await.is_none(), "nothing follows the expiry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_another_issuer_is_unauthenticated() {
    let clerk = Clerk::start().await;
    let server = with_alice(&clerk, |_| {}).await;
    let token = clerk.key.sign(&alice_claims(|c| c["iss"] = json!("https://clerk.elsewhere.test")));
    assert_unauthenticated(get_alice(&server, token).await, "issuer (iss)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_an_unauthorized_party_is_unauthenticated() {
    let clerk = Clerk::start().await;
    let server = with_alice(&clerk, |_| {}).await;
    let token = clerk.key.sign(&alice_claims(|c| c["azp"] = json!("https://evil.test")));
    assert_unauthenticated(get_alice(&server, token).await, "authorized party (azp)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_azp_is_accepted_as_clerk_documents() {
    let clerk = Clerk::start().await;
    let server = with_alice(&clerk, |_| {}).await;
    let token = clerk.key.sign(&alice_claims(|c| {
        c.as_object_mut().unwrap().remove("azp");
    }));
    assert_eq!(get_alice(&server, token).await.unwrap().clerk_id, ALICE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_refetches_the_jwks_then_fails() {
    let clerk = Clerk::start().await;
    let server = with_alice(&clerk, |config| config.clerk_jwks_min_refresh = Duration::ZERO).await;
    get_alice(&server, clerk.token(ALICE)).await.unwrap();
    assert_eq!(clerk.fetches(), 1);
    let stranger = SigningKey::generate("ins_key_unknown");
    assert_unauthenticated(get_alice(&server, stranger.sign(&claims(ALICE))).await, "key id (kid)");
    assert_eq!(clerk.fetches(), 2, "an unknown kid fetches the JWKS again before failing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_refetches_are_rate_bounded() {
    let clerk = Clerk::start().await;
    let server = with_alice(&clerk, |config| config.clerk_jwks_min_refresh = NEVER).await;
    get_alice(&server, clerk.token(ALICE)).await.unwrap();
    let stranger = SigningKey::generate("ins_key_unknown");
    for n in 0..5 {
        let token = stranger.sign_as(&format!("ins_made_up_{n}"), &claims(ALICE));
        assert_unauthenticated(get_alice(&server, token).await, "key id (kid)");
    }
    assert_eq!(clerk.fetches(), 1, "made-up kids must not each cost a fetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_into_the_jwks_is_picked_up() {
    let clerk = Clerk::start().await;
    let server = with_alice(&clerk, |config| config.clerk_jwks_min_refresh = Duration::ZERO).await;
    get_alice(&server, clerk.token(ALICE)).await.unwrap();
    let next = clerk.rotate_in("ins_key_2");
    assert_eq!(get_alice(&server, next.sign(&claims(ALICE))).await.unwrap().clerk_id, ALICE);
    assert_eq!(clerk.fetches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_alg_none_token_is_unauthenticated() {
    let clerk = Clerk::start().await;
    let server = with_alice(&clerk, |_| {}).await;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"ins_key_1"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims(ALICE).to_string());
    assert_unauthenticated(get_alice(&server, format!("{header}.{payload}.")).await, "algorithm (alg)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hs256_token_signed_with_the_public_key_is_unauthenticated() {
    let clerk = Clerk::start().await;
    let pem = clerk.key.public_pem.clone();
    let server = with_alice(&clerk, |config| {
        config.clerk_jwks_url = None;
        config.clerk_jwt_key = Some(pem.clone());
    })
    .await;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("ins_key_1".into());
    let forged =
        jsonwebtoken::encode(&header, &claims(ALICE), &EncodingKey::from_secret(pem.as_bytes()).unwrap())
            .unwrap();
    assert_unauthenticated(get_alice(&server, forged).await, "algorithm (alg)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_payload_is_unauthenticated() {
    let clerk = Clerk::start().await;
    let server = with_alice(&clerk, |_| {}).await;
    let token = clerk.token("user_mallory");
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(claims(ALICE).to_string());
    assert_unauthenticated(get_alice(&server, parts.join(".")).await, "signature");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_a_subject_is_unauthenticated() {
    let clerk = Clerk::start().await;
    let server = with_alice(&clerk, |_| {}).await;
    let token = clerk.key.sign(&alice_claims(|c| {
        c.as_object_mut().unwrap().remove("sub");
    }));
    assert_unauthenticated(get_alice(&server, token).await, "`sub` claim");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_clerk_keys_are_unavailable_not_unauthenticated() {
    let clerk = Clerk::start().await;
    // A port that was free a moment ago: nothing answers there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let server = with_alice(&clerk, |config| {
        config.clerk_jwks_url = Some(format!("http://{closed}/.well-known/jwks.json"));
    })
    .await;
    let status = get_alice(&server, clerk.token(ALICE)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("retry later"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_bearer_token_is_unauthenticated_without_a_fetch() {
    let clerk = Clerk::start().await;
    let server = with_alice(&clerk, |_| {}).await;
    assert_unauthenticated(get_alice(&server, "not-a-token-at-all".into()).await, "invalid bearer token");
    assert_unauthenticated(get_alice(&server, "e30.e30.e30".into()).await, "well-formed JWT");
    assert_eq!(clerk.fetches(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_calls_share_one_jwks_fetch() {
    let clerk = Clerk::start().await;
    let server = with_alice(&clerk, |config| config.clerk_jwks_min_refresh = Duration::ZERO).await;
    let calls = (0..20).map(|_| get_alice(&server, clerk.token(ALICE)));
    for result in futures::future::join_all(calls).await {
        assert_eq!(result.unwrap().clerk_id, ALICE);
    }
    assert_eq!(clerk.fetches(), 1, "callers waiting for a fetch use its result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_is_not_pem_stops_startup_naming_the_variable() {
    let clerk = Clerk::start().await;
    let database = user_service::testing::TestDatabase::create(Db::Sqlite).await;
    let started = TestServer::try_start(database, "127.0.0.1:0".parse().unwrap(), |config| {
        clerk.configure(config);
        config.clerk_jwks_url = None;
        config.clerk_jwt_key = Some("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----".into());
    })
    .await;
    let message = started.err().expect("startup must fail").to_string();
    assert!(message.contains("CLERK_JWT_KEY"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clerk_alone_turns_authentication_on_for_every_call() {
    let clerk = Clerk::start().await;
    let database = user_service::testing::TestDatabase::create(Db::Sqlite).await;
    let server =
        TestServer::try_start(database, "127.0.0.1:0".parse().unwrap(), |config| clerk.configure(config))
            .await
            .expect("start with Clerk only");
    let (mut users, _) = session::clients(&server, None).await;
    let status = users.list_users(pb::ListUsersRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}
