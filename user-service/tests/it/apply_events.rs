//! `EventService.ApplyEvents`: many event writes in one call, each answered
//! at its own position exactly as its single call would be.

use tonic::{Code, Request, transport::Channel};
use userdata_proto::v1::{
    self as pb, change_service_client::ChangeServiceClient, event_service_client::EventServiceClient,
    event_write::Write, event_write_result::Result as WriteResult,
};

use crate::helpers::*;

crate::on_both_backends!(
    each_write_is_answered_at_its_position_and_a_redelivery_replays,
    a_bad_write_fails_alone,
    writes_of_one_user_apply_in_the_order_given,
    a_write_without_an_event_context_or_without_a_write_fails_alone,
    each_change_records_the_request_id_of_its_write,
);

type Events = EventServiceClient<Channel>;

async fn events(server: &TestServer) -> Events {
    EventServiceClient::new(server.channel().await)
}

fn write(write: Write) -> pb::EventWrite {
    pb::EventWrite { request_id: String::new(), write: Some(write) }
}

fn clerk_delete(clerk_id: &str, key: &str, ms: i64) -> pb::DeleteUserRequest {
    pb::DeleteUserRequest { clerk_id: clerk_id.into(), event_context: event(key, ms), ..Default::default() }
}

fn clerk_login(clerk_id: &str, key: &str, ms: i64) -> pb::RecordLoginRequest {
    pb::RecordLoginRequest {
        clerk_id: clerk_id.into(),
        login: Some(pb::LoginRecord { success: true, ..Default::default() }),
        event_context: event(key, ms),
        ..Default::default()
    }
}

/// Sends `writes` and returns their results in request order, checking that
/// the stream answered each write exactly once.
async fn apply(client: &mut Events, writes: Vec<pb::EventWrite>) -> Vec<WriteResult> {
    let count = writes.len();
    let mut stream =
        client.apply_events(pb::ApplyEventsRequest { writes }).await.expect("ApplyEvents").into_inner();
    let mut results: Vec<Option<WriteResult>> = vec![None; count];
    while let Some(message) = stream.message().await.expect("the stream of results") {
        for result in message.results {
            let slot = &mut results[result.index as usize];
            assert!(slot.is_none(), "write {} answered twice", result.index);
            *slot = Some(result.result.expect("a result"));
        }
    }
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|| panic!("write {i} never answered")))
        .collect()
}

/// Each result as (what it is, outcome, replayed), or the error's code and
/// message.
fn summary(result: &WriteResult) -> (&'static str, i32, bool) {
    match result {
        WriteResult::CreateUser(r) => ("create", r.outcome, r.replayed),
        WriteResult::UpdateUser(r) => ("update", r.outcome, r.replayed),
        WriteResult::DeleteUser(r) => ("delete", r.outcome, r.replayed),
        WriteResult::RecordLogin(r) => ("login", r.outcome, r.replayed),
        WriteResult::RecordActivity(r) => ("activity", r.outcome, r.replayed),
        WriteResult::Error(e) => ("error", e.code, false),
    }
}

const APPLIED: i32 = pb::EventOutcome::Applied as i32;

async fn each_write_is_answered_at_its_position_and_a_redelivery_replays(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = events(&server).await;
    let batch = vec![
        write(Write::CreateUser(clerk_create("user_a", "Ann", "msg_a1", 1_000))),
        write(Write::CreateUser(clerk_create("user_b", "Bob", "msg_b1", 1_000))),
        write(Write::UpdateUser(clerk_update("user_a", "Ada", "L", "msg_a2", 2_000))),
        write(Write::RecordLogin(clerk_login("user_b", "msg_b2", 2_000))),
    ];

    let results = apply(&mut client, batch.clone()).await;

    let summaries: Vec<_> = results.iter().map(summary).collect();
    assert_eq!(
        summaries,
        [
            ("create", APPLIED, false),
            ("create", APPLIED, false),
            ("update", APPLIED, false),
            ("login", APPLIED, false)
        ]
    );
    let mut users = server.users().await;
    assert_eq!(get_by_clerk_id(&mut users, "user_a").await.unwrap().first_name.as_deref(), Some("Ada"));
    assert_eq!(get_by_clerk_id(&mut users, "user_b").await.unwrap().first_name.as_deref(), Some("Bob"));

    let again = apply(&mut client, batch).await;
    assert!(again.iter().map(summary).all(|(_, outcome, replayed)| outcome == APPLIED && replayed));
}

async fn a_bad_write_fails_alone(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = events(&server).await;
    let mut bad = clerk_create("user_bad", "Bad", "msg_bad", 1_000);
    if let Some(user) = bad.user.as_mut() {
        user.email = Some("not an email".into());
    }

    let results = apply(
        &mut client,
        vec![
            write(Write::CreateUser(clerk_create("user_ok1", "One", "msg_ok1", 1_000))),
            write(Write::CreateUser(bad)),
            write(Write::CreateUser(clerk_create("user_ok2", "Two", "msg_ok2", 1_000))),
        ],
    )
    .await;

    let WriteResult::Error(error) = &results[1] else { panic!("the bad write must fail: {results:?}") };
    assert_eq!(error.code, Code::InvalidArgument as i32);
    assert!(error.message.contains("user.email"), "{}", error.message);
    assert!(!error.message.contains("not an email"), "the value must not be echoed: {}", error.message);
    assert_eq!(summary(&results[0]), ("create", APPLIED, false));
    assert_eq!(summary(&results[2]), ("create", APPLIED, false));
    let mut users = server.users().await;
    assert!(get_by_clerk_id(&mut users, "user_ok1").await.is_ok());
    assert!(get_by_clerk_id(&mut users, "user_ok2").await.is_ok());
    assert_eq!(get_by_clerk_id(&mut users, "user_bad").await.unwrap_err().code(), Code::NotFound);
}

async fn writes_of_one_user_apply_in_the_order_given(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = events(&server).await;

    // In this order every write applies; in any other, the delete would make
    // a later write `user_deleted` or the update would be `stale`.
    let results = apply(
        &mut client,
        vec![
            write(Write::CreateUser(clerk_create("user_seq", "Ann", "msg_s1", 1_000))),
            write(Write::UpdateUser(clerk_update("user_seq", "Bea", "L", "msg_s2", 2_000))),
            write(Write::CreateUser(clerk_create("user_other", "Oz", "msg_o1", 1_000))),
            write(Write::DeleteUser(clerk_delete("user_seq", "msg_s3", 3_000))),
            write(Write::UpdateUser(clerk_update("user_seq", "Cy", "L", "msg_s4", 4_000))),
        ],
    )
    .await;

    let outcomes: Vec<i32> = results.iter().map(|r| summary(r).1).collect();
    let deleted = pb::EventOutcome::UserDeleted as i32;
    assert_eq!(outcomes, [APPLIED, APPLIED, APPLIED, APPLIED, deleted], "{results:?}");
    let mut users = server.users().await;
    assert_eq!(get_by_clerk_id(&mut users, "user_seq").await.unwrap_err().code(), Code::NotFound);
    assert!(get_by_clerk_id(&mut users, "user_other").await.is_ok());
}

async fn a_write_without_an_event_context_or_without_a_write_fails_alone(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = events(&server).await;
    let plain = pb::CreateUserRequest { user: Some(new_user("user_plain")), ..Default::default() };

    let results = apply(
        &mut client,
        vec![
            write(Write::CreateUser(plain)),
            pb::EventWrite::default(),
            write(Write::CreateUser(clerk_create("user_fine", "Fi", "msg_f", 1_000))),
        ],
    )
    .await;

    for (position, field) in [(0, "event_context"), (1, "write")] {
        let WriteResult::Error(error) = &results[position] else { panic!("{results:?}") };
        assert_eq!(error.code, Code::InvalidArgument as i32);
        assert!(error.message.contains(field), "{}", error.message);
    }
    assert_eq!(summary(&results[2]), ("create", APPLIED, false));
    let mut users = server.users().await;
    assert_eq!(get_by_clerk_id(&mut users, "user_plain").await.unwrap_err().code(), Code::NotFound);
}

async fn each_change_records_the_request_id_of_its_write(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = events(&server).await;
    let with_id = |id: &str, clerk_id: &str| pb::EventWrite {
        request_id: id.into(),
        write: Some(Write::CreateUser(clerk_create(clerk_id, "Id", &format!("msg_{clerk_id}"), 1_000))),
    };
    let mut request = Request::new(pb::ApplyEventsRequest {
        writes: vec![
            with_id("req-write-1", "user_own"),
            with_id("", "user_none"),
            with_id("bad id", "user_odd"),
        ],
    });
    request.metadata_mut().insert("x-request-id", "req-call-9".parse().unwrap());

    let mut stream = client.apply_events(request).await.unwrap().into_inner();
    while stream.message().await.unwrap().is_some() {}

    let mut changes = ChangeServiceClient::new(server.channel().await);
    for (clerk_id, request_id) in
        [("user_own", "req-write-1"), ("user_none", "req-call-9"), ("user_odd", "req-call-9")]
    {
        let page = changes
            .list_changes(pb::ListChangesRequest { clerk_id: clerk_id.into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        let actor = page.changes.first().and_then(|c| c.actor.clone()).expect("a change with an actor");
        assert_eq!(actor.request_id, request_id, "{clerk_id}");
        assert_eq!(actor.event_id, format!("msg_{clerk_id}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_512_writes_are_refused_as_a_whole() {
    let server = TestServer::start(Db::Sqlite).await;
    let mut client = events(&server).await;
    let writes = (0..513)
        .map(|n| {
            write(Write::CreateUser(clerk_create(
                &format!("user_many_{n}"),
                "M",
                &format!("msg_m{n}"),
                1_000,
            )))
        })
        .collect();

    let error = client.apply_events(pb::ApplyEventsRequest { writes }).await.unwrap_err();

    assert_field_violation(&error, "writes");
    let mut users = server.users().await;
    assert_eq!(get_by_clerk_id(&mut users, "user_many_0").await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_call_answers_no_results() {
    let server = TestServer::start(Db::Sqlite).await;
    assert!(apply(&mut events(&server).await, Vec::new()).await.is_empty());
}

/// PostgreSQL only (SQLite has no row locks): a write whose user is locked by
/// another transaction delays its own result, not its neighbours', which
/// are streamed as soon as they commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_held_up_elsewhere_delays_only_its_own_result_postgres() {
    use sqlx::{Connection, PgConnection};

    let server = TestServer::start(Db::Postgres).await;
    let mut client = events(&server).await;
    apply(&mut client, vec![write(Write::CreateUser(clerk_create("user_held", "Ann", "msg_h1", 1_000)))])
        .await;
    let mut holder = PgConnection::connect(&server.database.url).await.unwrap();
    sqlx::raw_sql("begin; select 1 from users where clerk_id = 'user_held' for update")
        .execute(&mut holder)
        .await
        .unwrap();

    let writes = vec![
        write(Write::UpdateUser(clerk_update("user_held", "Bea", "L", "msg_h2", 2_000))),
        write(Write::CreateUser(clerk_create("user_free", "Fay", "msg_f1", 1_000))),
    ];
    let mut stream = client.apply_events(pb::ApplyEventsRequest { writes }).await.unwrap().into_inner();

    let first = stream.message().await.unwrap().expect("a first message");
    let answered: Vec<u32> = first.results.iter().map(|r| r.index).collect();
    assert_eq!(answered, [1], "only the free user's write is done while the other is locked");
    sqlx::raw_sql("commit").execute(&mut holder).await.unwrap();
    let second = stream.message().await.unwrap().expect("the held write's result");
    assert_eq!(second.results.iter().map(|r| r.index).collect::<Vec<_>>(), [0]);
    assert_eq!(summary(second.results[0].result.as_ref().unwrap()), ("update", APPLIED, false));
    assert!(stream.message().await.unwrap().is_none());
}
