//! Property tests of Clerk-driven writes through the real server, on both
//! backends: random interleavings of create/update/delete events and
//! redeliveries (same idempotency key) with random source times, for a few
//! users. Applied in order, every answer and the final state must match a
//! model of the rules (newest source time wins, deletes are final, a key seen
//! before changes nothing); applied all at once, the final state must be the
//! newest event's (or deleted) and no event may have taken effect twice.
//!
//! One server per property run; every case uses its own Clerk ids.

use std::{
    collections::{BTreeMap, HashSet},
    sync::atomic::{AtomicUsize, Ordering},
};

use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};
use tonic::Code;
use userdata_proto::v1::{self as pb, user_data_service_client::UserDataServiceClient};

use crate::helpers::{
    Client, DataClient, Db, TestServer, clerk_create, clerk_update, event, get_by_clerk_id,
};

/// Cases per property and backend: each case is a few dozen gRPC calls.
const CASES: u32 = 32;

const NAMES: [&str; 4] = ["Ada", "Grace", "Alan", "Edsger"];

/// One delivery.
#[derive(Debug, Clone)]
enum Op {
    /// `user.created` for user `u` with first name `NAMES[name]` at time `t`.
    Create { u: usize, name: usize, t: i64 },
    /// `user.updated`.
    Update { u: usize, name: usize, t: i64 },
    /// `user.deleted`.
    Delete { u: usize, t: i64 },
    /// A redelivery of an earlier op (same key, same payload).
    Repeat(prop::sample::Index),
}

/// Users and the ops in delivery order; source times are distinct.
#[derive(Debug, Clone)]
struct Scenario {
    users: usize,
    ops: Vec<Op>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (1usize..=3).prop_flat_map(|users| {
        let op = prop_oneof![
            3 => (0..users, 0..NAMES.len(), 0i64..50).prop_map(|(u, name, t)| Op::Create { u, name, t }),
            5 => (0..users, 0..NAMES.len(), 0i64..50).prop_map(|(u, name, t)| Op::Update { u, name, t }),
            1 => (0..users, 0i64..50).prop_map(|(u, t)| Op::Delete { u, t }),
            2 => any::<prop::sample::Index>().prop_map(Op::Repeat),
        ];
        prop::collection::vec(op, 1..14).prop_map(move |ops| {
            // Distinct times (ties are a separate rule: equal is stale), still
            // in random order: t * 100 + position.
            let ops = ops
                .into_iter()
                .enumerate()
                .map(|(i, op)| {
                    let distinct = |t: i64| 1_700_000_000_000 + (t * 100 + i as i64) * 1_000;
                    match op {
                        Op::Create { u, name, t } => Op::Create { u, name, t: distinct(t) },
                        Op::Update { u, name, t } => Op::Update { u, name, t: distinct(t) },
                        Op::Delete { u, t } => Op::Delete { u, t: distinct(t) },
                        repeat => repeat,
                    }
                })
                .collect();
            Scenario { users, ops }
        })
    })
}

/// A delivery with its idempotency key: the op itself, never a `Repeat`.
#[derive(Debug, Clone)]
struct Delivery {
    key: String,
    op: Op,
}

/// Resolves `Repeat`s to the earlier delivery they repeat (dropped when there
/// is none yet).
fn deliveries(case: &str, scenario: &Scenario) -> Vec<Delivery> {
    let mut out = Vec::new();
    let mut originals: Vec<Delivery> = Vec::new();
    for op in &scenario.ops {
        match op {
            Op::Repeat(index) => {
                if !originals.is_empty() {
                    out.push(originals[index.index(originals.len())].clone());
                }
            }
            op => {
                let delivery = Delivery { key: format!("msg_{case}_{}", originals.len()), op: op.clone() };
                originals.push(delivery.clone());
                out.push(delivery);
            }
        }
    }
    out
}

fn clerk_id(case: &str, u: usize) -> String {
    format!("user_{case}_{u}")
}

/// What the model expects a user to be.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Missing,
    Present { name: usize, t: i64 },
    Deleted,
}

/// Sends one delivery; returns `(outcome, replayed)`.
async fn send(users: &mut Client, case: &str, delivery: &Delivery) -> Result<(i32, bool), tonic::Status> {
    let key = delivery.key.as_str();
    match delivery.op {
        Op::Create { u, name, t } => users
            .create_user(clerk_create(&clerk_id(case, u), NAMES[name], key, t))
            .await
            .map(|r| (r.get_ref().outcome, r.get_ref().replayed)),
        Op::Update { u, name, t } => users
            // Same last name and email as `clerk_create`, so only names differ.
            .update_user(clerk_update(&clerk_id(case, u), NAMES[name], "Lovelace", key, t))
            .await
            .map(|r| (r.get_ref().outcome, r.get_ref().replayed)),
        Op::Delete { u, t } => users
            .delete_user(pb::DeleteUserRequest {
                clerk_id: clerk_id(case, u),
                event_context: event(key, t),
                ..Default::default()
            })
            .await
            .map(|r| (r.get_ref().outcome, r.get_ref().replayed)),
        Op::Repeat(_) => unreachable!("deliveries() resolves repeats"),
    }
}

fn user_of(op: &Op) -> usize {
    match op {
        Op::Create { u, .. } | Op::Update { u, .. } | Op::Delete { u, .. } => *u,
        Op::Repeat(_) => usize::MAX,
    }
}

/// The stored first names in `name_history`, oldest first, with their times.
async fn name_history(data: &mut DataClient, clerk_id: &str) -> Vec<(String, i64)> {
    let history = data
        .get_user_history(pb::GetUserHistoryRequest { clerk_id: clerk_id.into(), ..Default::default() })
        .await
        .expect("history of a present user")
        .into_inner();
    history
        .name_history
        .into_iter()
        .map(|e| {
            let t = e.timestamp.map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
            (e.first_name, t)
        })
        .collect()
}

/// Delivers in order and checks every answer and the final state against the
/// model.
async fn sequential(server: &TestServer, case: &str, scenario: &Scenario) -> Result<(), TestCaseError> {
    let mut users = server.users().await;
    let mut data = UserDataServiceClient::new(server.channel().await);
    let mut state = vec![State::Missing; scenario.users];
    let mut history: Vec<Vec<(String, i64)>> = vec![Vec::new(); scenario.users];
    let mut first_answer: BTreeMap<String, i32> = BTreeMap::new();
    for delivery in deliveries(case, scenario) {
        let answer = send(&mut users, case, &delivery).await;
        let (outcome, replayed) = answer.map_err(|s| TestCaseError::fail(format!("{delivery:?}: {s:?}")))?;
        if let Some(first) = first_answer.get(&delivery.key) {
            prop_assert!(replayed, "{:?} was applied again", delivery);
            prop_assert_eq!(outcome, *first, "a replay answers like the first delivery");
            continue;
        }
        prop_assert!(!replayed, "{:?} replayed on its first delivery", delivery);
        let u = user_of(&delivery.op);
        let expected = match (&delivery.op, state[u].clone()) {
            (_, State::Deleted) => pb::EventOutcome::UserDeleted,
            (Op::Delete { .. }, _) => {
                state[u] = State::Deleted;
                pb::EventOutcome::Applied
            }
            (Op::Create { name, t, .. } | Op::Update { name, t, .. }, State::Missing) => {
                state[u] = State::Present { name: *name, t: *t };
                pb::EventOutcome::Applied
            }
            (
                Op::Create { name, t, .. } | Op::Update { name, t, .. },
                State::Present { name: old, t: stored },
            ) => {
                if *t <= stored {
                    pb::EventOutcome::Stale
                } else {
                    if *name != old {
                        history[u].push((NAMES[*name].to_owned(), *t));
                    }
                    state[u] = State::Present { name: *name, t: *t };
                    pb::EventOutcome::Applied
                }
            }
            (Op::Repeat(_), _) => unreachable!(),
        };
        prop_assert_eq!(outcome, expected as i32, "answer to {:?}", delivery);
        first_answer.insert(delivery.key.clone(), outcome);
    }
    for (u, expected) in state.iter().enumerate() {
        let id = clerk_id(case, u);
        let stored = get_by_clerk_id(&mut users, &id).await;
        match expected {
            State::Missing | State::Deleted => {
                prop_assert_eq!(stored.map(|_| ()).map_err(|s| s.code()), Err(Code::NotFound), "{}", id);
            }
            State::Present { name, .. } => {
                let user = stored.map_err(|s| TestCaseError::fail(format!("{id}: {s:?}")))?;
                prop_assert_eq!(user.first_name.as_deref(), Some(NAMES[*name]), "{}", id);
                prop_assert_eq!(&name_history(&mut data, &id).await, &history[u], "{} name_history", id);
            }
        }
    }
    Ok(())
}

/// Delivers everything at once (each original and its repeats racing) and
/// checks the order-independent rules.
async fn concurrent(server: &TestServer, case: &str, scenario: &Scenario) -> Result<(), TestCaseError> {
    let users = server.users().await;
    let mut data = UserDataServiceClient::new(server.channel().await);
    let all = deliveries(case, scenario);
    let tasks: Vec<_> = all
        .iter()
        .cloned()
        .map(|delivery| {
            let (mut users, case) = (users.clone(), case.to_owned());
            tokio::spawn(async move { (send(&mut users, &case, &delivery).await, delivery) })
        })
        .collect();
    let mut applied_keys: HashSet<String> = HashSet::new();
    for task in tasks {
        let (answer, delivery) = task.await.map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (outcome, replayed) = answer.map_err(|s| TestCaseError::fail(format!("{delivery:?}: {s:?}")))?;
        if !replayed && outcome == pb::EventOutcome::Applied as i32 {
            prop_assert!(applied_keys.insert(delivery.key.clone()), "{} applied twice", delivery.key);
        }
    }
    let mut users = users;
    for u in 0..scenario.users {
        let id = clerk_id(case, u);
        let ops: Vec<&Op> = all.iter().map(|d| &d.op).filter(|op| user_of(op) == u).collect();
        let deleted = ops.iter().any(|op| matches!(op, Op::Delete { .. }));
        let newest = ops
            .iter()
            .filter_map(|op| match op {
                Op::Create { name, t, .. } | Op::Update { name, t, .. } => Some((*t, *name)),
                _ => None,
            })
            .max();
        let stored = get_by_clerk_id(&mut users, &id).await;
        match (deleted, newest) {
            (true, _) | (false, None) => {
                prop_assert_eq!(stored.map(|_| ()).map_err(|s| s.code()), Err(Code::NotFound), "{}", id);
            }
            (false, Some((t, name))) => {
                let user = stored.map_err(|s| TestCaseError::fail(format!("{id}: {s:?}")))?;
                prop_assert_eq!(user.first_name.as_deref(), Some(NAMES[name]), "{} newest is t={}", id, t);
                // Each entry is one applied event (by its time), in time order,
                // none twice; the newest name change, if any, is last.
                let history = name_history(&mut data, &id).await;
                let times: Vec<i64> = history.iter().map(|(_, t)| *t).collect();
                prop_assert!(times.windows(2).all(|w| w[0] < w[1]), "{} out of order: {:?}", id, history);
                for (entry_name, entry_t) in &history {
                    let source = ops.iter().any(|op| {
                        matches!(op, Op::Create { name, t, .. } | Op::Update { name, t, .. }
                            if t == entry_t && NAMES[*name] == entry_name)
                    });
                    prop_assert!(source, "{} entry {:?} matches no event", id, (entry_name, entry_t));
                }
                if let Some((last_name, _)) = history.last() {
                    prop_assert_eq!(last_name.as_str(), NAMES[name]);
                }
            }
        }
    }
    Ok(())
}

fn run_property(db: Db, concurrently: bool) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let server = runtime.block_on(TestServer::start(db));
    let case = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config { cases: CASES, max_shrink_iters: 64, ..Config::default() });
    let result = runner.run(&scenario(), |scenario| {
        let name = format!("p{}", case.fetch_add(1, Ordering::Relaxed));
        runtime.block_on(async {
            if concurrently {
                concurrent(&server, &name, &scenario).await
            } else {
                sequential(&server, &name, &scenario).await
            }
        })
    });
    runtime.block_on(async move {
        server.stop().await;
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

mod postgres {
    #[test]
    fn in_order_deliveries_match_the_model() {
        super::run_property(super::Db::Postgres, false);
    }

    #[test]
    fn concurrent_deliveries_converge_with_no_double_effect() {
        super::run_property(super::Db::Postgres, true);
    }
}

mod sqlite {
    #[test]
    fn in_order_deliveries_match_the_model() {
        super::run_property(super::Db::Sqlite, false);
    }

    #[test]
    fn concurrent_deliveries_converge_with_no_double_effect() {
        super::run_property(super::Db::Sqlite, true);
    }
}
