//! The Clerk instance's JWKS: fetched on first use, cached, fetched again
//! when a token names a `kid` the cache lacks or the cache is old, but never
//! more often than a configured interval, so a stream of tokens with made-up
//! `kid`s cannot turn into a stream of requests to Clerk.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use jsonwebtoken::{DecodingKey, jwk::Jwk};
use tokio::sync::Mutex;

use super::SessionRejection;

/// Largest JWKS document accepted (Clerk's holds one or two keys).
const MAX_JWKS_BYTES: usize = 64 * 1024;

/// How the JWKS is fetched and kept.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    /// The JWKS URL, e.g. `https://clerk.example.com/.well-known/jwks.json`.
    pub url: String,
    /// Least time between two fetches.
    pub min_refresh_interval: Duration,
    /// Cached keys older than this are fetched again on next use (kept if
    /// the fetch fails, so an outage at Clerk does not sign everyone out).
    pub max_age: Duration,
    /// Timeout of one fetch.
    pub fetch_timeout: Duration,
}

#[derive(Default)]
struct Cached {
    keys: HashMap<String, Arc<DecodingKey>>,
    fetched_at: Option<Instant>,
}

/// A cached JWKS.
pub struct Jwks {
    settings: JwksSettings,
    client: reqwest::Client,
    cached: RwLock<Cached>,
    /// Held while fetching; holds when the last fetch started.
    last_fetch: Mutex<Option<Instant>>,
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwks").field("url", &self.settings.url).finish_non_exhaustive()
    }
}

impl Jwks {
    /// A cache for the JWKS at `settings.url`; nothing is fetched yet.
    pub fn new(settings: JwksSettings) -> Result<Self, String> {
        reqwest::Url::parse(&settings.url).map_err(|err| format!("CLERK_JWKS_URL is not a URL: {err}"))?;
        let client = reqwest::Client::builder()
            .timeout(settings.fetch_timeout)
            .user_agent(concat!("user-service/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| format!("cannot build the HTTP client for the JWKS: {err}"))?;
        Ok(Self { settings, client, cached: RwLock::default(), last_fetch: Mutex::new(None) })
    }

    /// The key `kid` names, fetching the JWKS when the cache lacks it (or is
    /// old) and the last fetch is at least the minimum interval ago.
    pub async fn key(&self, kid: &str) -> Result<Arc<DecodingKey>, SessionRejection> {
        let (found, fresh) = self.lookup(kid);
        if let (Some(key), true) = (&found, fresh) {
            return Ok(key.clone());
        }
        // A stale key is still good while someone else refreshes.
        let mut last_fetch = match (found, self.last_fetch.try_lock()) {
            (_, Ok(guard)) => guard,
            (Some(key), Err(_)) => return Ok(key),
            (None, Err(_)) => self.last_fetch.lock().await,
        };
        // Another call may have fetched while this one waited.
        let (found, fresh) = self.lookup(kid);
        if let (Some(key), true) = (&found, fresh) {
            return Ok(key.clone());
        }
        let due = last_fetch.is_none_or(|at| at.elapsed() >= self.settings.min_refresh_interval);
        if due {
            *last_fetch = Some(Instant::now());
            match self.fetch().await {
                Ok(keys) => {
                    tracing::info!(keys = keys.len(), "fetched Clerk's JWKS");
                    let mut cached = self.cached.write().unwrap_or_else(|poisoned| poisoned.into_inner());
                    *cached = Cached { keys, fetched_at: Some(Instant::now()) };
                }
                Err(err) => {
                    tracing::warn!(url = %self.settings.url, error = %err, "cannot fetch Clerk's JWKS")
                }
            }
        }
        drop(last_fetch);
        let (found, _) = self.lookup(kid);
        match found {
            Some(key) => Ok(key),
            None if self.has_keys() => Err(SessionRejection::UnknownKeyId),
            None => Err(SessionRejection::KeysUnavailable),
        }
    }

    /// The cached key of `kid`, and whether the cache is fresh.
    fn lookup(&self, kid: &str) -> (Option<Arc<DecodingKey>>, bool) {
        let cached = self.cached.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let fresh = cached.fetched_at.is_some_and(|at| at.elapsed() < self.settings.max_age);
        (cached.keys.get(kid).cloned(), fresh)
    }

    fn has_keys(&self) -> bool {
        let cached = self.cached.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        cached.fetched_at.is_some()
    }

    /// Fetches the JWKS and keeps its RSA signing keys that carry a `kid`.
    async fn fetch(&self) -> Result<HashMap<String, Arc<DecodingKey>>, String> {
        let mut response = self.client.get(&self.settings.url).send().await.map_err(|err| err.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|err| err.to_string())? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        #[derive(serde::Deserialize)]
        struct Set {
            keys: Vec<serde_json::Value>,
        }
        let set: Set = serde_json::from_slice(&body).map_err(|err| format!("not a JWKS: {err}"))?;
        // Keys this server cannot use (other types, no kid) are skipped, not
        // fatal: a JWKS may list keys for other purposes.
        let keys = set
            .keys
            .into_iter()
            .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
            .filter(|jwk| matches!(jwk.algorithm, jsonwebtoken::jwk::AlgorithmParameters::RSA(_)))
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                DecodingKey::from_jwk(&jwk).ok().map(|key| (kid, Arc::new(key)))
            })
            .collect();
        Ok(keys)
    }
}
