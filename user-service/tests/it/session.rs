//! Test support for Clerk session tokens: a stand-in Clerk instance with
//! real RSA keys made here, its JWKS served over HTTP on port 0, and tokens
//! signed the way Clerk signs them.

use std::{
    io::Write,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Json, Router, extract::State, routing::get};
use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{Jwk, JwkSet, PublicKeyUse},
};
use rcgen::{KeyPair, PKCS_RSA_SHA256};
use serde_json::{Value, json};
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};
use user_service::config::Config;
use userdata_proto::v1::{
    self as pb, user_data_service_client::UserDataServiceClient, user_service_client::UserServiceClient,
};

use crate::helpers::{Db, TestServer, new_user};

/// The issuer tokens carry (never contacted: the JWKS URL is given).
pub const ISSUER: &str = "https://clerk.userdata.test";
/// The origin of the web app, an authorized party.
pub const APP_ORIGIN: &str = "https://app.userdata.test";
/// Token of the admin service client the tests use to set up users.
pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

/// An RSA signing key with its `kid`.
pub struct SigningKey {
    /// The key id in the JWKS and in token headers.
    pub kid: String,
    /// The private key, to sign with.
    pub encoding: EncodingKey,
    /// The public key as PEM (Clerk's "JWT public key").
    pub public_pem: String,
}

impl SigningKey {
    /// A fresh 2048-bit RSA key.
    pub fn generate(kid: &str) -> Self {
        let pair = KeyPair::generate_for(&PKCS_RSA_SHA256).expect("generate an RSA key");
        let encoding = EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).expect("RSA private key");
        Self { kid: kid.to_owned(), encoding, public_pem: pair.public_key_pem() }
    }

    /// The public key as a JWK, as Clerk's JWKS lists it.
    fn jwk(&self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.encoding, Algorithm::RS256).expect("JWK of the key");
        jwk.common.key_id = Some(self.kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk
    }

    /// Signs `claims` with RS256, naming this key's `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    /// Signs `claims` with RS256 under another `kid`.
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign a token")
    }
}

#[derive(Clone, Default)]
struct Served {
    keys: Arc<Mutex<Vec<Jwk>>>,
    fetches: Arc<AtomicUsize>,
}

/// A stand-in Clerk instance: signing keys and a JWKS endpoint.
pub struct Clerk {
    /// The key tokens are signed with by default.
    pub key: SigningKey,
    /// Where the JWKS is served.
    pub jwks_url: String,
    served: Served,
}

impl Clerk {
    /// Serves a JWKS with one fresh key on a free port.
    pub async fn start() -> Self {
        let key = SigningKey::generate("ins_key_1");
        let served = Served::default();
        served.keys.lock().unwrap().push(key.jwk());
        let app = Router::new()
            .route(
                "/.well-known/jwks.json",
                get(|State(served): State<Served>| async move {
                    served.fetches.fetch_add(1, Ordering::SeqCst);
                    Json(JwkSet { keys: served.keys.lock().unwrap().clone() })
                }),
            )
            .with_state(served.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the JWKS server");
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.expect("JWKS server") });
        Self { key, jwks_url: format!("http://{addr}/.well-known/jwks.json"), served }
    }

    /// How many times the JWKS was fetched.
    pub fn fetches(&self) -> usize {
        self.served.fetches.load(Ordering::SeqCst)
    }

    /// Adds a key to the JWKS (a rotation) and returns it.
    pub fn rotate_in(&self, kid: &str) -> SigningKey {
        let key = SigningKey::generate(kid);
        self.served.keys.lock().unwrap().push(key.jwk());
        key
    }

    /// Points `config` at this instance, through its JWKS.
    pub fn configure(&self, config: &mut Config) {
        config.clerk_issuer = Some(ISSUER.into());
        config.clerk_jwks_url = Some(self.jwks_url.clone());
        config.clerk_authorized_parties = vec![APP_ORIGIN.into()];
    }

    /// A token for `clerk_id` as Clerk issues it, valid for a minute.
    pub fn token(&self, clerk_id: &str) -> String {
        self.key.sign(&claims(clerk_id))
    }
}

/// The claims of a fresh session token for `clerk_id`.
pub fn claims(clerk_id: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "iss": ISSUER,
        "sub": clerk_id,
        "sid": "sess_2test",
        "azp": APP_ORIGIN,
        "iat": now,
        "nbf": now - 10,
        "exp": now + 60,
    })
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(pub Option<String>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("header value");
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// A `UserService` client sending a bearer token.
pub type Users = UserServiceClient<InterceptedService<Channel, Bearer>>;
/// A `UserDataService` client sending a bearer token.
pub type Data = UserDataServiceClient<InterceptedService<Channel, Bearer>>;

/// A server that accepts the admin service token and session tokens of
/// `clerk`, with `tweak` applied last; the tokens file lives as long as the
/// returned guard.
pub async fn server(
    db: Db,
    clerk: &Clerk,
    tweak: impl FnOnce(&mut Config),
) -> (TestServer, tempfile::NamedTempFile) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "ops read,write,admin,audit {ADMIN_TOKEN}").unwrap();
    let path = file.path().to_owned();
    let server = TestServer::start_with(db, |config| {
        config.auth_tokens = Some(path);
        clerk.configure(config);
        tweak(config);
    })
    .await;
    (server, file)
}

/// Clients calling as the holder of `token`.
pub async fn clients(server: &TestServer, token: Option<String>) -> (Users, Data) {
    let channel = server.channel().await;
    (
        UserServiceClient::with_interceptor(channel.clone(), Bearer(token.clone())),
        UserDataServiceClient::with_interceptor(channel, Bearer(token)),
    )
}

/// Creates a user through the admin service client and returns it.
pub async fn create_user(server: &TestServer, clerk_id: &str) -> pb::User {
    create_user_with(server, ADMIN_TOKEN, clerk_id).await
}

/// Creates a user as the service client of `token` and returns it.
pub async fn create_user_with(server: &TestServer, token: &str, clerk_id: &str) -> pb::User {
    let (mut users, _) = clients(server, Some(token.into())).await;
    users
        .create_user(pb::CreateUserRequest { user: Some(new_user(clerk_id)), ..Default::default() })
        .await
        .expect("create a user as admin")
        .into_inner()
        .user
        .expect("created user")
}

/// A JWKS refresh interval that never elapses within a test.
pub const NEVER: Duration = Duration::from_secs(3600);
