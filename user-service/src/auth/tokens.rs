//! Service tokens: the tokens file and the clients it names.
//!
//! Only SHA-256 digests of tokens are kept in memory, and a presented token
//! is compared, digest against digest, in constant time with every known one.
//! Tokens are never logged nor echoed in errors.

use std::{fmt, path::Path, sync::Arc};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Scope, Scopes};

/// Shortest token accepted in clear in the tokens file.
pub const MIN_TOKEN_LEN: usize = 16;

/// A service client named in the tokens file, with its scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    name: Arc<str>,
    scopes: Scopes,
}

impl Client {
    /// The client's name from the tokens file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client's scopes.
    pub fn scopes(&self) -> Scopes {
        self.scopes
    }
}

type TokenDigest = [u8; 32];

/// The clients allowed to call, by the digest of their token.
#[derive(Clone)]
pub struct Tokens {
    entries: Vec<(TokenDigest, Client)>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: digests are secrets too (they let anyone test guesses).
        f.debug_list().entries(self.entries.iter().map(|(_, client)| client.name())).finish()
    }
}

impl Tokens {
    /// Reads a tokens file. The error is one line naming the file and, for
    /// a bad line, its number; it never contains a token.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        Self::parse(&text).map_err(|err| match err.line {
            Some(line) => format!("{}:{line}: {}", path.display(), err.problem),
            None => format!("{}: {}", path.display(), err.problem),
        })
    }

    /// Parses the contents of a tokens file.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut entries: Vec<(TokenDigest, Client, usize)> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let at = |problem: &str| ParseError { line: Some(number), problem: problem.to_owned() };
            // A comment starts with a field beginning with `#` (so a token
            // may contain `#`, but not start with it).
            let fields: Vec<&str> = line.split_whitespace().take_while(|f| !f.starts_with('#')).collect();
            if fields.is_empty() {
                continue;
            }
            let [name, scopes, token] = fields[..] else {
                return Err(at(&format!("expected 3 fields `name scopes token`, found {}", fields.len())));
            };
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')) {
                return Err(at("the client name may only use letters, digits and `.`, `_`, `-`, `@`"));
            }
            let mut set = Scopes::default();
            for scope in scopes.split(',') {
                let scope = Scope::parse(scope)
                    .ok_or_else(|| at("unknown scope: scopes are read, write, admin and audit"))?;
                set = set.with(scope);
            }
            let digest = token_digest_field(token).map_err(&at)?;
            if let Some((_, _, first)) = entries.iter().find(|(d, _, _)| bool::from(d.ct_eq(&digest))) {
                return Err(at(&format!("the same token is already given on line {first}")));
            }
            entries.push((digest, Client { name: name.into(), scopes: set }, number));
        }
        if entries.is_empty() {
            return Err(ParseError { line: None, problem: "no tokens in the file".into() });
        }
        Ok(Self { entries: entries.into_iter().map(|(digest, client, _)| (digest, client)).collect() })
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no token is configured (never true for a loaded file).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The client with this token: compares with every known digest, without
    /// stopping at a match, in constant time per digest.
    pub fn find(&self, token: &[u8]) -> Option<&Client> {
        let digest: TokenDigest = Sha256::digest(token).into();
        let mut found = None;
        for (known, client) in &self.entries {
            if bool::from(known.ct_eq(&digest)) {
                found = Some(client);
            }
        }
        found
    }
}

/// A bad tokens file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The 1-based line at fault, if one is.
    pub line: Option<usize>,
    /// What is wrong (never quoting the line).
    pub problem: String,
}

/// The token field of a line: `sha256:<64 hex>` or a token in clear.
fn token_digest_field(token: &str) -> Result<TokenDigest, &'static str> {
    if let Some(hex) = token.strip_prefix("sha256:") {
        return parse_hex_digest(hex).ok_or("`sha256:` must be followed by exactly 64 hex digits");
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err("the token is too short: use at least 16 characters (32 random ones are better)");
    }
    Ok(Sha256::digest(token.as_bytes()).into())
}

fn parse_hex_digest(hex: &str) -> Option<TokenDigest> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut digest = [0u8; 32];
    for (out, pair) in digest.iter_mut().zip(bytes.chunks_exact(2)) {
        *out = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef-reader";

    fn sha256_hex(text: &str) -> String {
        Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn a_clear_token_line_authenticates_its_client_with_its_scopes() {
        let tokens =
            Tokens::parse(&format!("# clients\n\n  reader read,write {TOKEN}#x # trailing\n")).unwrap();
        let client = tokens.find(format!("{TOKEN}#x").as_bytes()).unwrap();
        assert_eq!(client.name(), "reader");
        assert!(client.scopes().contains(Scope::Read));
        assert!(client.scopes().contains(Scope::Write));
        assert!(!client.scopes().contains(Scope::Admin));
    }

    #[test]
    fn a_sha256_line_authenticates_the_token_it_hashes() {
        let tokens =
            Tokens::parse(&format!("ops admin sha256:{}", sha256_hex(TOKEN).to_uppercase())).unwrap();
        let client = tokens.find(TOKEN.as_bytes()).unwrap();
        assert_eq!(client.name(), "ops");
        assert_eq!(client.scopes(), Scopes::default().with(Scope::Admin));
    }

    #[test]
    fn unknown_tokens_match_no_client() {
        let tokens = Tokens::parse(&format!("reader read {TOKEN}")).unwrap();
        assert!(tokens.find(b"0123456789abcdef").is_none());
        assert!(tokens.find(format!("{TOKEN}x").as_bytes()).is_none());
    }

    #[test]
    fn bad_lines_are_reported_by_number_without_their_contents() {
        let secret = "very-secret-token-value";
        let cases = [
            (format!("a read {secret} extra"), 1),
            (format!("\n# x\nb read,superuser {secret}"), 3),
            (format!("c {secret} read"), 1),
            ("d read sha256:abc".to_owned(), 1),
            ("e read short".to_owned(), 1),
            (format!("f/x read {secret}"), 1),
            (format!("g read {secret}\nh write {secret}"), 2),
            (format!("i read, {secret}"), 1),
        ];
        for (text, line) in cases {
            let err = Tokens::parse(&text).unwrap_err();
            assert_eq!(err.line, Some(line), "{text:?}: {err:?}");
            assert!(!err.problem.contains(secret), "{err:?}");
        }
    }

    #[test]
    fn a_file_without_tokens_is_refused() {
        let err = Tokens::parse("# nothing here\n\n").unwrap_err();
        assert_eq!(err.line, None);
    }

    #[test]
    fn debug_output_shows_names_only() {
        let tokens = Tokens::parse(&format!("reader read {TOKEN}")).unwrap();
        let shown = format!("{tokens:?}");
        assert!(shown.contains("reader") && !shown.contains(TOKEN) && !shown.contains(&sha256_hex(TOKEN)));
    }
}
