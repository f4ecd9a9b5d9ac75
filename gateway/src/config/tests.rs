//! Unit tests of the configuration: parsing, defaults and validation.

use clap::Parser;

use super::{limits::ConnectionLimits, secrets::*, *};
use crate::config::limits::DEFAULT_IDLE_TIMEOUT;

// Throwaway secrets made up for these tests (base64 of ASCII text).
const SECRET_A: &str = "whsec_dGVzdC1zZWNyZXQtYS0wMTIzNDU2Nzg5YWJjZA==";
const SECRET_B: &str = "whsec_dGVzdC1zZWNyZXQtYi0wMTIzNDU2Nzg5YWJjZA==";

#[test]
fn a_single_secret_is_accepted() {
    let secrets = SigningSecrets::parse(SECRET_A).map(|s| s.len());
    assert_eq!(secrets, Ok(1));
}

#[test]
fn secrets_may_be_separated_by_spaces_commas_or_both() {
    for text in [
        format!("{SECRET_A} {SECRET_B}"),
        format!("{SECRET_A},{SECRET_B}"),
        format!(" {SECRET_A} ,\n{SECRET_B} "),
    ] {
        assert_eq!(SigningSecrets::parse(&text).map(|s| s.len()), Ok(2), "{text}");
    }
}

#[test]
fn a_blank_value_counts_as_missing() {
    assert_eq!(SigningSecrets::parse("  , ").map(|s| s.len()), Err(ConfigError::SecretMissing));
}

#[test]
fn a_secret_without_the_whsec_prefix_is_rejected_by_position() {
    let text = format!("{SECRET_A} dGVzdC1zZWNyZXQ=");
    assert_eq!(
        SigningSecrets::parse(&text).map(|s| s.len()),
        Err(ConfigError::SecretMalformed { position: 2, count: 2 })
    );
}

#[test]
fn a_secret_shorter_than_svix_secrets_is_rejected_by_position() {
    // 23 bytes: one short of Svix's 24.
    let short = "whsec_dGVzdC1zZWNyZXQtMDEyMzQ1Njc4OWE=";
    let text = format!("{SECRET_A} {short}");
    assert_eq!(
        SigningSecrets::parse(&text).map(|s| s.len()),
        Err(ConfigError::SecretTooShort { position: 2, count: 2 })
    );
    // Svix's own form: 32 base64 characters, 24 bytes.
    assert_eq!(SigningSecrets::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").map(|s| s.len()), Ok(1));
}

#[test]
fn trust_forwarded_for_means_one_trusted_hop_and_conflicts_with_hops() {
    assert_eq!(serve_args(&[]).trusted_proxy_hops, 0);
    let argv = ["gateway", "serve", "--trust-forwarded-for", "--trusted-proxy-hops", "2"];
    assert!(Cli::try_parse_from(argv).is_err());
    assert!(serve_args(&["--trust-forwarded-for"]).trust_forwarded_for);
    assert_eq!(serve_args(&["--trusted-proxy-hops", "2"]).trusted_proxy_hops, 2);
}

#[test]
fn connection_limit_flags_reach_the_config_defaults() {
    let args = serve_args(&["--header-read-timeout", "3s", "--max-connections-per-ip", "7"]);
    let limits = ConnectionLimits::from(args.connections);
    assert_eq!(limits.header_read_timeout, Duration::from_secs(3));
    assert_eq!(limits.max_connections_per_ip, 7);
    assert_eq!(limits.idle_timeout, DEFAULT_IDLE_TIMEOUT.value);
}

#[test]
fn a_readiness_cache_above_ten_seconds_is_refused() {
    let mut config = test_config();
    config.readiness_cache = Duration::from_secs(11);
    assert_eq!(config.validate(), Err(ConfigError::ReadinessCache));
    config.readiness_cache = Duration::ZERO;
    assert_eq!(config.validate(), Ok(()));
}

#[test]
fn a_secret_that_is_not_base64_is_rejected() {
    for bad in ["whsec_", "whsec_not base64!", "whsec_%%%%"] {
        assert!(SigningSecrets::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn errors_and_debug_output_never_contain_the_secret() {
    let bad = "whsec_c2VjcmV0LXRoYXQtbXVzdC1ub3QtbGVhaw==@";
    let message = SigningSecrets::parse(bad).map(|_| String::new()).unwrap_or_else(|e| e.to_string());
    assert!(message.contains(SIGNING_SECRET_ENV));
    assert!(!message.contains("c2VjcmV0"));

    let secrets = SigningSecrets::parse(SECRET_A).map(|s| format!("{s:?}"));
    let debug = secrets.unwrap_or_default();
    assert!(debug.contains("redacted"));
    assert!(!debug.contains("dGVzdC"));
}

#[test]
fn deadlines_above_ten_seconds_or_zero_are_refused() {
    let Ok(secrets) = SigningSecrets::parse(SECRET_A) else {
        panic!("test secret must parse");
    };
    let mut config = Config::new(secrets);
    assert_eq!(config.validate(), Ok(()));
    config.upstream_timeout = MAX_DEADLINE;
    assert_eq!(config.validate(), Ok(()));
    config.upstream_timeout = Duration::from_millis(10_001);
    assert_eq!(config.validate(), Err(ConfigError::Deadline { flag: "--upstream-timeout" }));
    config.upstream_timeout = Duration::ZERO;
    assert!(config.validate().is_err());
}

fn test_config() -> Config {
    let Ok(secrets) = SigningSecrets::parse(SECRET_A) else {
        panic!("test secret must parse");
    };
    Config::new(secrets)
}

fn serve_args(args: &[&str]) -> ServeArgs {
    let argv = ["gateway", "serve"].into_iter().chain(args.iter().copied());
    match Cli::try_parse_from(argv).and_then(Cli::into_command) {
        Ok(Command::Serve(args)) => args,
        other => panic!("expected serve, got {other:?}"),
    }
}

#[test]
fn user_service_urls_may_be_http_or_https_but_not_mixed() {
    let mut config = test_config();
    config.user_service_url = Uri::from_static("https://users.internal:50051");
    assert_eq!(config.validate(), Ok(()));
    config.user_service_replicas = vec![Uri::from_static("http://users-2.internal:50051")];
    assert_eq!(config.validate(), Err(ConfigError::MixedSchemes));
    config.set_user_service_urls([Uri::from_static("ftp://users.internal")]);
    assert_eq!(config.validate(), Err(ConfigError::UserServiceUrl));
    config.set_user_service_urls([Uri::from_static("http://user:pw@users.internal:50051")]);
    assert_eq!(config.validate(), Err(ConfigError::UserServiceUrl));
}

#[test]
fn a_comma_separated_url_list_becomes_replicas() {
    let args = serve_args(&["--user-service-url", "http://a:1, http://b:2,http://c:3"]);
    assert_eq!(args.user_service.user_service_url.len(), 3);
    assert_eq!(args.user_service.user_service_url[1], Uri::from_static("http://b:2"));
}

#[test]
fn upstream_tls_options_need_https_urls() {
    let mut config = test_config();
    config.user_service_tls.ca = Some("ca.pem".into());
    assert_eq!(config.validate(), Err(ConfigError::UpstreamTlsNeedsHttps));
    config.user_service_url = Uri::from_static("https://users.internal:50051");
    assert_eq!(config.validate(), Ok(()));
    config.user_service_tls.client_cert = Some("client.pem".into());
    assert_eq!(config.validate(), Err(ConfigError::ClientCertPair));
}

#[test]
fn a_client_cert_without_its_key_is_refused_by_the_parser() {
    let argv = ["gateway", "serve", "--user-service-client-cert", "c.pem"];
    assert!(Cli::try_parse_from(argv).is_err());
    assert!(Cli::try_parse_from(["gateway", "serve", "--tls-key", "k.pem"]).is_err());
}

#[test]
fn plain_http_on_a_non_loopback_address_needs_insecure() {
    let mut config = test_config();
    config.listen = "0.0.0.0:8080".parse().unwrap_or(config.listen);
    assert!(matches!(config.validate(), Err(ConfigError::PlainHttpOnPublicAddress(_))));
    config.insecure = true;
    assert_eq!(config.validate(), Ok(()));
    config.insecure = false;
    config.tls = Some(ServerTls { cert: "c.pem".into(), key: "k.pem".into() });
    assert_eq!(config.validate(), Ok(()));
}

#[test]
fn a_rate_limit_without_burst_is_refused_and_zero_turns_it_off() {
    let mut config = test_config();
    config.rate_limit = RateLimit { per_second: 10, burst: 0 };
    assert_eq!(config.validate(), Err(ConfigError::RateLimitBurst));
    config.rate_limit = RateLimit::OFF;
    assert_eq!(config.validate(), Ok(()));
    assert!(!config.rate_limit.is_on());
}

#[test]
fn metrics_listen_is_an_address_or_off() {
    assert_eq!("off".parse(), Ok(MetricsListen::Off));
    assert_eq!("127.0.0.1:9465".parse(), Ok(MetricsListen::On(DEFAULT_METRICS_LISTEN)));
    assert!("9465".parse::<MetricsListen>().is_err());
    assert_eq!(serve_args(&[]).metrics_listen, MetricsListen::On(DEFAULT_METRICS_LISTEN));
}

#[test]
fn tokens_are_trimmed_and_must_be_one_visible_word() {
    let token = UserServiceToken::parse("  gateway-token-0123456789\n", "file");
    let value = token.map(|t| t.authorization());
    assert_eq!(value.as_ref().map(|v| v.to_str().unwrap_or_default()), Ok("Bearer gateway-token-0123456789"));
    for bad in ["", "  \n", "two words", "t\u{e9}l\u{e9}phone"] {
        assert!(UserServiceToken::parse(bad, "file").is_err(), "{bad:?}");
    }
}

#[test]
fn token_errors_and_debug_never_contain_the_token() {
    let message = UserServiceToken::parse("secret token", "USER_SERVICE_TOKEN")
        .map(|_| String::new())
        .unwrap_or_else(|e| e.to_string());
    assert!(message.contains("USER_SERVICE_TOKEN") && !message.contains("secret"), "{message}");
    let debug = UserServiceToken::parse("gateway-token-0123456789", "x").map(|t| format!("{t:?}"));
    let debug = debug.unwrap_or_default();
    assert!(debug.contains("redacted") && !debug.contains("gateway-token"), "{debug}");
}

#[test]
fn no_subcommand_means_serve_with_defaults() {
    let cli = Cli::try_parse_from(["gateway"]).and_then(Cli::into_command);
    match cli {
        Ok(Command::Serve(args)) => {
            assert_eq!(args.user_service.upstream_timeout, Duration::from_secs(5));
            assert_eq!(args.unknown_user_retry_window, DEFAULT_UNKNOWN_USER_RETRY_WINDOW.value);
        }
        other => panic!("expected serve, got {other:?}"),
    }
}

#[test]
fn send_takes_url_file_msg_id_and_timestamp() {
    let cli = Cli::try_parse_from([
        "gateway",
        "send",
        "--url",
        "http://127.0.0.1:9/webhooks/clerk",
        "--file",
        "event.json",
        "--msg-id",
        "msg_1",
        "--timestamp",
        "1700000000",
    ])
    .and_then(Cli::into_command);
    match cli {
        Ok(Command::Send(args)) => {
            assert_eq!(args.msg_id.as_deref(), Some("msg_1"));
            assert_eq!(args.timestamp, Some(1_700_000_000));
        }
        other => panic!("expected send, got {other:?}"),
    }
}

#[test]
fn batching_defaults_to_64_writes_and_2_calls_in_flight() {
    let args = serve_args(&[]);
    assert_eq!((args.upstream_batch_max, args.upstream_batches_in_flight), (64, 2));
    assert_eq!(test_config().upstream_batch, UpstreamBatch { max: 64, in_flight: 2 });
    let args = serve_args(&["--upstream-batch-max", "1", "--upstream-batches-in-flight", "16"]);
    assert_eq!((args.upstream_batch_max, args.upstream_batches_in_flight), (1, 16));
}

#[test]
fn batch_sizes_outside_what_apply_events_takes_are_refused() {
    for bad in [
        ["--upstream-batch-max", "0"],
        ["--upstream-batch-max", "513"],
        ["--upstream-batches-in-flight", "0"],
    ] {
        let argv = ["gateway", "serve"].into_iter().chain(bad);
        assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
    }
    let mut config = test_config();
    config.upstream_batch.max = 513;
    assert_eq!(config.validate(), Err(ConfigError::UpstreamBatch));
    config.upstream_batch = UpstreamBatch { max: 512, in_flight: 0 };
    assert_eq!(config.validate(), Err(ConfigError::UpstreamBatch));
}
