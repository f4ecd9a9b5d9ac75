//! `gateway send`: deliver a JSON file to a gateway the way Svix would.

use std::{process::ExitCode, time::Duration};

use anyhow::Context;

use crate::{
    config::{SendArgs, SigningSecret, SigningSecrets},
    svix::sign::{new_msg_id, sign_headers},
};

/// A gateway's answer to a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// HTTP status.
    pub status: http::StatusCode,
    /// Response body as text.
    pub body: String,
}

/// Signs `args.file` with the first secret in `CLERK_WEBHOOK_SIGNING_SECRET`,
/// POSTs it, and prints the status line and body to stdout. Exits 0 on a 2xx
/// answer and 1 otherwise, so scripts can check the result.
pub async fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    let secrets = SigningSecrets::from_env()?;
    // A one-shot CLI read; blocking the runtime briefly is harmless here.
    let body = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let msg_id = args.msg_id.unwrap_or_else(new_msg_id);
    let timestamp = match args.timestamp {
        Some(timestamp) => timestamp,
        None => unix_now()?,
    };
    let delivered = send(&args.url, secrets.first(), &msg_id, timestamp, body, args.timeout).await?;
    println!("{}", delivered.status);
    println!("{}", delivered.body);
    Ok(if delivered.status.is_success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Signs `body` as message `msg_id` at `timestamp` and POSTs it to `url` with
/// Svix's headers.
pub async fn send(
    url: &str,
    secret: &SigningSecret,
    msg_id: &str,
    timestamp: i64,
    body: Vec<u8>,
    timeout: Duration,
) -> anyhow::Result<Delivered> {
    let headers = sign_headers(secret, msg_id, timestamp, &body).context("cannot sign the body")?;
    let client =
        reqwest::Client::builder().timeout(timeout).build().context("cannot create the HTTP client")?;
    let response = client
        .post(url)
        .headers(headers)
        .body(body)
        .send()
        .await
        .with_context(|| format!("POST {url} failed"))?;
    let status = response.status();
    let body = response.text().await.context("cannot read the response body")?;
    Ok(Delivered { status, body })
}

/// Now, in Unix seconds.
pub fn unix_now() -> anyhow::Result<i64> {
    let elapsed = std::time::UNIX_EPOCH.elapsed().context("the system clock is before 1970")?;
    i64::try_from(elapsed.as_secs()).context("the system clock is out of range")
}
