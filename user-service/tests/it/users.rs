//! User CRUD, validation, pagination and etags.

use std::collections::HashSet;

use tonic::Code;
use userdata_proto::v1 as pb;

use crate::helpers::*;

crate::on_both_backends!(
    a_created_user_can_be_read_by_id_and_by_clerk_id,
    create_stores_signup_date_and_source_in_the_same_write,
    creating_an_existing_clerk_id_is_already_exists,
    every_invalid_create_field_is_named,
    get_requires_exactly_one_valid_key,
    an_unknown_user_is_not_found,
    list_pages_cover_every_user_once_while_others_insert,
    list_filters_by_status_role_and_email,
    list_rejects_bad_page_sizes_and_tokens,
    update_changes_only_the_masked_fields,
    update_with_a_stale_etag_is_aborted_and_writes_nothing,
    a_name_change_is_appended_to_name_history,
    update_rejects_unknown_mask_paths_and_bad_values,
    delete_removes_the_user_and_its_data_for_good,
    delete_with_a_stale_etag_is_aborted,
);

async fn a_created_user_can_be_read_by_id_and_by_clerk_id(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    let created = create(&mut client, "user_a").await;

    assert!(uuid::Uuid::parse_str(&created.id).is_ok_and(|id| id.get_version_num() == 7));
    assert_eq!(created.role, pb::UserRole::User as i32);
    assert_eq!(created.status, pb::UserStatus::Active as i32);
    assert_eq!(created.email.as_deref(), Some("user_a@example.org"));
    assert!(!created.etag.is_empty());

    let by_id =
        client.get_user(pb::GetUserRequest { id: created.id.clone(), ..Default::default() }).await.unwrap();
    assert_eq!(by_id.into_inner().user.as_ref(), Some(&created));
    assert_eq!(get_by_clerk_id(&mut client, "user_a").await.unwrap(), created);
}

async fn create_stores_signup_date_and_source_in_the_same_write(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    let user = client
        .create_user(pb::CreateUserRequest {
            user: Some(new_user("user_inv")),
            signup_source: pb::SignupSource::Invite as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();

    let data = server.store.list_user_data(user.id.parse().unwrap()).await.unwrap();
    let keys: Vec<&str> = data.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(keys, ["signup_date", "signup_source"]);
    assert_eq!(data[1].value, "invite");
    let date = data[0].value.as_str().expect("signup_date is a string");
    assert!(chrono::DateTime::parse_from_rfc3339(date).is_ok(), "{date} is not ISO-8601");
}

async fn creating_an_existing_clerk_id_is_already_exists(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    create(&mut client, "user_dup").await;
    let err = client
        .create_user(pb::CreateUserRequest { user: Some(new_user("user_dup")), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
}

async fn every_invalid_create_field_is_named(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    let cases: Vec<(pb::User, &str)> = vec![
        (pb::User { clerk_id: String::new(), ..new_user("x") }, "user.clerk_id"),
        (pb::User { clerk_id: "user 1".into(), ..new_user("x") }, "user.clerk_id"),
        (pb::User { clerk_id: "u".repeat(10_000), ..new_user("x") }, "user.clerk_id"),
        (pb::User { email: Some("not-an-email".into()), ..new_user("user_e1") }, "user.email"),
        (pb::User { email: Some(String::new()), ..new_user("user_e2") }, "user.email"),
        (pb::User { first_name: Some("A\u{0}B".into()), ..new_user("user_c") }, "user.first_name"),
        (pb::User { last_name: Some("x".repeat(100_000)), ..new_user("user_l") }, "user.last_name"),
        (pb::User { username: Some("  ".into()), ..new_user("user_u") }, "user.username"),
        (pb::User { image_url: Some("file:///etc/passwd".into()), ..new_user("user_i") }, "user.image_url"),
        (pb::User { role: 42, ..new_user("user_r") }, "user.role"),
        (pb::User { status: -1, ..new_user("user_s") }, "user.status"),
    ];
    for (user, field) in cases {
        let err = client
            .create_user(pb::CreateUserRequest { user: Some(user), ..Default::default() })
            .await
            .unwrap_err();
        assert_field_violation(&err, field);
    }
    // Several bad fields are reported together.
    let err = client
        .create_user(pb::CreateUserRequest {
            user: Some(pb::User {
                clerk_id: String::new(),
                email: Some("nope".into()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_field_violation(&err, "user.clerk_id");
    assert_field_violation(&err, "user.email");
    let err = client.create_user(pb::CreateUserRequest::default()).await.unwrap_err();
    assert_field_violation(&err, "user");
    // Nothing was written by any rejected request.
    let all = client.list_users(pb::ListUsersRequest::default()).await.unwrap().into_inner();
    assert!(all.users.is_empty(), "rejected creates wrote {:?}", all.users);
}

async fn get_requires_exactly_one_valid_key(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    let err = client.get_user(pb::GetUserRequest::default()).await.unwrap_err();
    assert_field_violation(&err, "id");
    let err = client
        .get_user(pb::GetUserRequest { id: uuid::Uuid::now_v7().to_string(), clerk_id: "user_x".into() })
        .await
        .unwrap_err();
    assert_field_violation(&err, "id");
    let err = client
        .get_user(pb::GetUserRequest { id: "not-a-uuid".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_field_violation(&err, "id");
    let err = client
        .get_user(pb::GetUserRequest { clerk_id: "bad id\n".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_field_violation(&err, "clerk_id");
}

async fn an_unknown_user_is_not_found(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    let err = client
        .get_user(pb::GetUserRequest { id: uuid::Uuid::now_v7().to_string(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(get_by_clerk_id(&mut client, "user_nobody").await.unwrap_err().code(), Code::NotFound);
}

async fn list_pages_cover_every_user_once_while_others_insert(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    let mut expected = HashSet::new();
    for i in 0..25 {
        expected.insert(create(&mut client, &format!("user_p{i:02}")).await.id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_users(pb::ListUsersRequest {
                page_size: 7,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.users.len() <= 7);
        seen.extend(page.users.iter().map(|u| u.id.clone()));
        pages += 1;
        // Users created mid-listing sort after every existing one.
        if pages <= 3 {
            expected.insert(create(&mut client, &format!("user_late{pages}")).await.id);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a user was repeated");
    assert_eq!(unique, expected, "a user was skipped");
    assert!(pages >= 4);
}

async fn list_filters_by_status_role_and_email(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    let a = create(&mut client, "user_fa").await;
    create(&mut client, "user_fb").await;
    client
        .update_user(pb::UpdateUserRequest {
            user: Some(pb::User {
                id: a.id.clone(),
                role: pb::UserRole::Admin as i32,
                status: pb::UserStatus::Suspended as i32,
                ..Default::default()
            }),
            update_mask: Some(mask(&["role", "status"])),
            ..Default::default()
        })
        .await
        .unwrap();
    let list = |req: pb::ListUsersRequest| {
        let mut client = client.clone();
        async move {
            client
                .list_users(req)
                .await
                .unwrap()
                .into_inner()
                .users
                .into_iter()
                .map(|u| u.clerk_id)
                .collect::<Vec<_>>()
        }
    };
    let by_status = pb::ListUsersRequest { status: pb::UserStatus::Suspended as i32, ..Default::default() };
    assert_eq!(list(by_status).await, ["user_fa"]);
    let by_role = pb::ListUsersRequest { role: pb::UserRole::User as i32, ..Default::default() };
    assert_eq!(list(by_role).await, ["user_fb"]);
    let by_email = pb::ListUsersRequest { email: "USER_FB@example.org".into(), ..Default::default() };
    assert_eq!(list(by_email).await, ["user_fb"]);
    assert_eq!(list(pb::ListUsersRequest::default()).await, ["user_fa", "user_fb"]);
}

async fn list_rejects_bad_page_sizes_and_tokens(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    for i in 0..3 {
        create(&mut client, &format!("user_t{i}")).await;
    }
    let err =
        client.list_users(pb::ListUsersRequest { page_size: -1, ..Default::default() }).await.unwrap_err();
    assert_field_violation(&err, "page_size");
    for forged in ["garbage", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "%%%", &"Z".repeat(5000)] {
        let err = client
            .list_users(pb::ListUsersRequest { page_token: forged.into(), ..Default::default() })
            .await
            .unwrap_err();
        assert_field_violation(&err, "page_token");
    }
    let first = client.list_users(pb::ListUsersRequest { page_size: 1, ..Default::default() }).await.unwrap();
    let token = first.into_inner().next_page_token;
    assert!(!token.is_empty());
    let err = client
        .list_users(pb::ListUsersRequest {
            page_size: 1,
            page_token: token.clone(),
            status: pb::UserStatus::Banned as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_field_violation(&err, "page_token");
    // A huge page size is coerced, not rejected.
    let all =
        client.list_users(pb::ListUsersRequest { page_size: i32::MAX, ..Default::default() }).await.unwrap();
    assert_eq!(all.into_inner().users.len(), 3);
}

async fn update_changes_only_the_masked_fields(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    let user = create(&mut client, "user_up").await;
    let updated = client
        .update_user(pb::UpdateUserRequest {
            user: Some(pb::User {
                id: user.id.clone(),
                first_name: Some("Grace".into()),
                last_name: Some("ignored because not in the mask".into()),
                status: pb::UserStatus::Banned as i32,
                ..Default::default()
            }),
            update_mask: Some(mask(&["first_name", "status", "email"])),
            etag: user.etag.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(updated.first_name.as_deref(), Some("Grace"));
    assert_eq!(updated.last_name.as_deref(), Some("Lovelace"));
    assert_eq!(updated.email, None, "email was named in the mask and unset, so it is cleared");
    assert_eq!(updated.status, pb::UserStatus::Banned as i32);
    assert_ne!(updated.etag, user.etag);
    assert_eq!(get_by_clerk_id(&mut client, "user_up").await.unwrap(), updated);
}

async fn update_with_a_stale_etag_is_aborted_and_writes_nothing(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    let user = create(&mut client, "user_etag").await;
    let rename = |etag: &str, name: &str| pb::UpdateUserRequest {
        user: Some(pb::User { id: user.id.clone(), first_name: Some(name.into()), ..Default::default() }),
        etag: etag.into(),
        ..Default::default()
    };
    client.update_user(rename(&user.etag, "First")).await.unwrap();
    let err = client.update_user(rename(&user.etag, "Second")).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(get_by_clerk_id(&mut client, "user_etag").await.unwrap().first_name.as_deref(), Some("First"));
    let err = client.update_user(rename("not-an-etag", "Third")).await.unwrap_err();
    assert_field_violation(&err, "etag");
}

async fn a_name_change_is_appended_to_name_history(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    let user = create(&mut client, "user_nh").await;
    let rename = |first: &str| pb::UpdateUserRequest {
        user: Some(pb::User { id: user.id.clone(), first_name: Some(first.into()), ..Default::default() }),
        changed_by: "user_admin".into(),
        ..Default::default()
    };
    client.update_user(rename("Augusta")).await.unwrap();
    client.update_user(rename("Augusta")).await.unwrap(); // not a change
    client.update_user(rename("Ada")).await.unwrap();

    let data = server.store.list_user_data(user.id.parse().unwrap()).await.unwrap();
    let history = &data.iter().find(|d| d.key == "name_history").expect("name_history").value;
    let entries = history.as_array().expect("an array");
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["first_name"], "Augusta");
    assert_eq!(entries[0]["last_name"], "Lovelace");
    // Without authentication the caller is `anonymous`; the admin the
    // request names is kept apart, as claimed.
    assert_eq!(entries[0]["changed_by"], "anonymous");
    assert_eq!(entries[0]["claimed_by"], "user_admin");
    assert_eq!(entries[1]["first_name"], "Ada");
    assert!(
        entries[1]["timestamp"].as_str().is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok())
    );
}

async fn update_rejects_unknown_mask_paths_and_bad_values(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    let user = create(&mut client, "user_mask").await;
    let req = |mask_paths: &[&str], u: pb::User| pb::UpdateUserRequest {
        user: Some(pb::User { id: user.id.clone(), ..u }),
        update_mask: Some(mask(mask_paths)),
        ..Default::default()
    };
    let err = client.update_user(req(&["clerk_id"], pb::User::default())).await.unwrap_err();
    assert_field_violation(&err, "update_mask");
    let err = client.update_user(req(&["role"], pb::User::default())).await.unwrap_err();
    assert_field_violation(&err, "user.role");
    let err = client
        .update_user(req(&["email"], pb::User { email: Some("bad@".into()), ..Default::default() }))
        .await
        .unwrap_err();
    assert_field_violation(&err, "user.email");
    let err = client
        .update_user(pb::UpdateUserRequest {
            user: Some(pb::User { id: "123".into(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_field_violation(&err, "user.id");
    assert_eq!(get_by_clerk_id(&mut client, "user_mask").await.unwrap(), user);
}

async fn delete_removes_the_user_and_its_data_for_good(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    let user = create(&mut client, "user_del").await;
    client.delete_user(pb::DeleteUserRequest { id: user.id.clone(), ..Default::default() }).await.unwrap();

    assert_eq!(get_by_clerk_id(&mut client, "user_del").await.unwrap_err().code(), Code::NotFound);
    assert!(server.store.list_user_data(user.id.parse().unwrap()).await.unwrap().is_empty());
    let again = client.delete_user(pb::DeleteUserRequest { id: user.id.clone(), ..Default::default() }).await;
    assert_eq!(again.unwrap_err().code(), Code::NotFound);
    // The clerk id is remembered: it cannot be created again.
    let err = client
        .create_user(pb::CreateUserRequest { user: Some(new_user("user_del")), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

async fn delete_with_a_stale_etag_is_aborted(db: Db) {
    let server = TestServer::start(db).await;
    let mut client = server.users().await;
    let user = create(&mut client, "user_de").await;
    let err = client
        .delete_user(pb::DeleteUserRequest {
            id: user.id.clone(),
            etag: "\"99\"".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert!(get_by_clerk_id(&mut client, "user_de").await.is_ok());
}
