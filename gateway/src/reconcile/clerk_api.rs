//! A client of Clerk's Backend API, reduced to what reconciling needs: every
//! user (`GET /v1/users`, page by page) and how many there are
//! (`GET /v1/users/count`).
//!
//! Requests go one at a time, so a run stays far below Clerk's rate limits
//! (1000 requests per 10 s in production, 100 in development); a 429 is
//! waited out for its `Retry-After`, and 5xx answers, timeouts and dropped
//! connections are retried with exponential backoff.

use std::{collections::HashSet, time::Duration};

use bytes::Bytes;
use http::{StatusCode, header};
use reqwest::Url;
use serde::Deserialize;

use crate::{
    clerk::UserJson,
    error::error_chain,
    reconcile::{options::ClerkApiConfig, retry::RetryPolicy},
};

/// Longest `Retry-After` honoured; a longer one is waited this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);
/// 429 answers waited out for one request before giving up.
pub const MAX_RATE_LIMITED_WAITS: u32 = 50;
/// Wait after a 429 without a usable `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why the Backend API could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClerkApiError {
    /// 401 or 403: the key is wrong, revoked, or for another instance.
    #[error("Clerk's Backend API refused the secret key ({status}); check CLERK_SECRET_KEY")]
    Unauthorized {
        /// The HTTP status.
        status: StatusCode,
    },
    /// Another 4xx: retrying cannot help.
    #[error("Clerk's Backend API answered {status} to {what}: {detail}")]
    Rejected {
        /// The HTTP status.
        status: StatusCode,
        /// Which request.
        what: &'static str,
        /// Clerk's error code and message, if it sent one.
        detail: String,
    },
    /// Retries used up (5xx, timeouts, dropped connections, or 429s).
    #[error("Clerk's Backend API kept failing ({what}), giving up after {attempts} attempts: {last}")]
    GaveUp {
        /// Which request.
        what: &'static str,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// A 200 whose body is not what the API documents.
    #[error("Clerk's Backend API sent an unexpected {what} body: {reason}")]
    Malformed {
        /// Which request.
        what: &'static str,
        /// The parse error.
        reason: String,
    },
    /// The listing returned only users it had returned already.
    #[error(
        "Clerk's Backend API keeps returning the same users (neither `starting_after` nor `offset` advances)"
    )]
    NoProgress,
}

/// The two shapes a user list comes in: a bare array (`GET /v1/users`) or
/// `{data, total_count}` (the paginated form of newer endpoints).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum UserList {
    Bare(Vec<UserJson>),
    Paginated { data: Vec<UserJson> },
}

#[derive(Debug, Deserialize)]
struct TotalCount {
    total_count: u64,
}

/// Clerk's error body: `{"errors": [{"code", "message", "long_message"}]}`.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorEntry {
    code: Option<String>,
    message: Option<String>,
    long_message: Option<String>,
}

/// The Backend API client.
#[derive(Debug, Clone)]
pub struct ClerkApi {
    http: reqwest::Client,
    users_url: Url,
    count_url: Url,
    page_size: u32,
    retry: RetryPolicy,
}

impl ClerkApi {
    /// A client for `config`; nothing is contacted yet.
    pub fn new(config: &ClerkApiConfig) -> anyhow::Result<Self> {
        let mut headers = http::HeaderMap::new();
        headers.insert(header::AUTHORIZATION, config.secret_key.authorization());
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("userdata-gateway-reconcile/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(config.request_timeout)
            .build()?;
        let join = |path: &str| {
            let mut url = config.base_url.clone();
            let base = url.path().trim_end_matches('/').to_owned();
            url.set_path(&format!("{base}{path}"));
            url
        };
        Ok(Self {
            http,
            users_url: join("/v1/users"),
            count_url: join("/v1/users/count"),
            page_size: config.page_size,
            retry: config.retry,
        })
    }

    /// How many users the instance has (`GET /v1/users/count`).
    pub async fn count_users(&self) -> Result<u64, ClerkApiError> {
        let what = "GET /v1/users/count";
        let body = self.get(self.count_url.clone(), what).await?;
        serde_json::from_slice::<TotalCount>(&body)
            .map(|count| count.total_count)
            .map_err(|error| ClerkApiError::Malformed { what, reason: error.to_string() })
    }

    /// Every user, oldest first, one page at a time.
    pub fn users(&self) -> UserPages<'_> {
        UserPages {
            api: self,
            after: None,
            listed: 0,
            by_offset: false,
            previous: HashSet::new(),
            done: false,
        }
    }

    /// One page of `GET /v1/users`, oldest first: after the user `after` (the
    /// `starting_after` cursor, which deletions during the run cannot shift),
    /// or at `offset`.
    async fn page(&self, after: Option<&str>, offset: Option<u64>) -> Result<Vec<UserJson>, ClerkApiError> {
        let what = "GET /v1/users";
        let mut url = self.users_url.clone();
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("limit", &self.page_size.to_string());
            query.append_pair("order_by", "+created_at");
            if let Some(after) = after {
                query.append_pair("starting_after", after);
            }
            if let Some(offset) = offset {
                query.append_pair("offset", &offset.to_string());
            }
        }
        let body = self.get(url, what).await?;
        match serde_json::from_slice::<UserList>(&body) {
            Ok(UserList::Bare(users) | UserList::Paginated { data: users }) => Ok(users),
            Err(error) => Err(ClerkApiError::Malformed { what, reason: error.to_string() }),
        }
    }

    /// GETs `url`, waiting out 429s and retrying 5xx answers and transport
    /// failures; returns the body of the 200.
    async fn get(&self, url: Url, what: &'static str) -> Result<Bytes, ClerkApiError> {
        let mut failed = 0;
        let mut rate_limited = 0;
        loop {
            let failure = match self.http.get(url.clone()).send().await {
                Ok(response) if response.status().is_success() => match response.bytes().await {
                    Ok(body) => return Ok(body),
                    Err(error) => {
                        format!("the connection dropped while reading the answer: {}", error_chain(&error))
                    }
                },
                Ok(response) if response.status() == StatusCode::TOO_MANY_REQUESTS => {
                    rate_limited += 1;
                    let wait = retry_after(response.headers()).unwrap_or(DEFAULT_RETRY_AFTER);
                    if rate_limited > MAX_RATE_LIMITED_WAITS {
                        return Err(ClerkApiError::GaveUp {
                            what,
                            attempts: failed + rate_limited,
                            last: "429 Too Many Requests".into(),
                        });
                    }
                    tracing::warn!(
                        request = what,
                        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        "Clerk's rate limit reached (429); waiting as its Retry-After asks"
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Ok(response) if response.status().is_server_error() => format!("{}", response.status()),
                Ok(response) => return Err(refusal(response, what).await),
                Err(error) => error_chain(&error),
            };
            failed += 1;
            if !self.retry.may_retry(failed) {
                return Err(ClerkApiError::GaveUp { what, attempts: failed + rate_limited, last: failure });
            }
            let wait = self.retry.backoff(failed);
            tracing::warn!(
                request = what,
                attempt = failed,
                error = %failure,
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                "Clerk's Backend API request failed; retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }
}

/// The error for a 4xx other than 429, with Clerk's own code and message.
async fn refusal(response: reqwest::Response, what: &'static str) -> ClerkApiError {
    let status = response.status();
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        return ClerkApiError::Unauthorized { status };
    }
    let body = response.bytes().await.unwrap_or_default();
    let parsed: ErrorBody = serde_json::from_slice(&body).unwrap_or_default();
    let detail = parsed
        .errors
        .first()
        .map(|entry| {
            let message = entry.long_message.as_deref().or(entry.message.as_deref()).unwrap_or("no message");
            let code = entry.code.as_deref().unwrap_or("no code");
            format!("{code}: {}", message.chars().take(300).collect::<String>())
        })
        .unwrap_or_else(|| "no error details".to_owned());
    ClerkApiError::Rejected { status, what, detail }
}

/// `Retry-After` in seconds (fractions allowed), capped at
/// [`MAX_RETRY_AFTER`].
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let seconds: f64 = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    let wait = Duration::try_from_secs_f64(seconds).ok()?;
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Pages of users, oldest first; see [`ClerkApi::users`].
#[derive(Debug)]
pub struct UserPages<'a> {
    api: &'a ClerkApi,
    /// Id of the last user returned: the next page's cursor.
    after: Option<String>,
    /// Users returned so far: the next page's offset when paging by offset.
    listed: u64,
    /// Set when the API turned out to ignore `starting_after`.
    by_offset: bool,
    /// Ids of the last page, to notice an API that does not advance.
    previous: HashSet<String>,
    done: bool,
}

impl UserPages<'_> {
    /// The next page; `None` once an empty page says the listing is over.
    /// A short page is not taken as the end: only an empty one is, so an API
    /// that serves fewer than `limit` users per page loses nobody.
    pub async fn next(&mut self) -> Result<Option<Vec<UserJson>>, ClerkApiError> {
        while !self.done {
            let page = if self.by_offset {
                self.api.page(None, Some(self.listed)).await?
            } else {
                match self.api.page(self.after.as_deref(), None).await {
                    Ok(page) => page,
                    // An API (or proxy) that does not know the cursor refuses
                    // the parameter; `offset` is the documented alternative.
                    Err(ClerkApiError::Rejected { status, .. })
                        if self.after.is_some()
                            && matches!(
                                status,
                                StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY
                            ) =>
                    {
                        tracing::warn!(%status, "Clerk's Backend API refused the starting_after cursor; paging by offset instead");
                        self.by_offset = true;
                        continue;
                    }
                    Err(error) => return Err(error),
                }
            };
            if page.is_empty() {
                self.done = true;
                break;
            }
            let repeats = page.iter().any(|user| self.previous.contains(&user.id));
            if repeats && !self.by_offset {
                tracing::warn!(
                    "Clerk's Backend API ignored the starting_after cursor; paging by offset instead (users \
                     deleted in Clerk during the run may shift pages)"
                );
                self.by_offset = true;
                continue;
            }
            let fresh: Vec<UserJson> =
                page.into_iter().filter(|user| !self.previous.contains(&user.id)).collect();
            let Some(last) = fresh.last() else {
                return Err(ClerkApiError::NoProgress);
            };
            self.after = Some(last.id.clone());
            self.listed += fresh.len() as u64;
            self.previous = fresh.iter().map(|user| user.id.clone()).collect();
            return Ok(Some(fresh));
        }
        Ok(None)
    }

    /// Users returned so far.
    pub fn listed(&self) -> u64 {
        self.listed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds_and_capped() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(header::RETRY_AFTER, http::HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(header::RETRY_AFTER, http::HeaderValue::from_static("0.25"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(250)));
        headers.insert(header::RETRY_AFTER, http::HeaderValue::from_static("86400"));
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        headers.insert(header::RETRY_AFTER, http::HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn both_list_shapes_are_read() {
        let bare = br#"[{"id": "user_1", "first_name": null}]"#;
        let paginated = br#"{"data": [{"id": "user_1"}], "total_count": 1}"#;
        for body in [&bare[..], &paginated[..]] {
            let list: Result<UserList, _> = serde_json::from_slice(body);
            assert!(
                matches!(list, Ok(UserList::Bare(users) | UserList::Paginated { data: users }) if users.len() == 1)
            );
        }
    }
}
