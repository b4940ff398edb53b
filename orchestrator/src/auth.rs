//! Bearer tokens on the public API.
//!
//! `--auth-tokens FILE` (TOML) names each client's token, given as the token itself or as
//! its SHA-256:
//!
//! ```toml
//! [[token]]
//! name = "frontend"
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//!
//! [[token]]
//! name = "batch-eval"
//! token = "a long random string"
//! ```
//!
//! Every `GuardService` call must carry `authorization: Bearer <token>`; a missing or
//! unknown token is `UNAUTHENTICATED`. The presented token is hashed and compared with every
//! known hash in constant time (no early exit, no timing hint of how close a guess was).
//! Only the token's *name* is ever logged, put on the call's trace span (`caller`) or used as
//! a metric label (`ig_guard_calls_total{caller}`). The file is re-read when it changes, like
//! the registry; a file that no longer parses is logged and the previous tokens kept.
//! Health and reflection are separate services and stay open (probes carry no token).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Longest token name (it becomes a metric label).
const MAX_NAME_BYTES: usize = 64;
/// Shortest token given in clear: a bearer token is a password nobody types.
const MIN_TOKEN_BYTES: usize = 16;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    token: Option<String>,
    sha256: Option<String>,
}

/// The known tokens: names and SHA-256 digests.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens(Vec<(String, [u8; 32])>);

impl Tokens {
    /// Parses a token file's text; errors name the entry and the field.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: TokenFile = toml::from_str(text).map_err(|e| e.message().to_string())?;
        if file.token.is_empty() {
            return Err("no [[token]] entries: every call would be refused".into());
        }
        let mut tokens = Vec::with_capacity(file.token.len());
        for (i, t) in file.token.iter().enumerate() {
            let at = format!("token[{i}]");
            if t.name.is_empty() || t.name.len() > MAX_NAME_BYTES || !t.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                return Err(format!("{at}.name: 1 to {MAX_NAME_BYTES} characters of [A-Za-z0-9._-], got {:?}", t.name));
            }
            if tokens.iter().any(|(n, _)| n == &t.name) {
                return Err(format!("{at}.name: {:?} is used twice", t.name));
            }
            let digest = match (&t.token, &t.sha256) {
                (Some(token), None) => {
                    if token.trim().len() < MIN_TOKEN_BYTES {
                        return Err(format!("{at}.token: at least {MIN_TOKEN_BYTES} characters, got {}", token.trim().len()));
                    }
                    Sha256::digest(token.as_bytes()).into()
                }
                (None, Some(hex_digest)) => {
                    let mut d = [0u8; 32];
                    hex::decode_to_slice(hex_digest.trim(), &mut d)
                        .map_err(|_| format!("{at}.sha256: 64 hexadecimal digits (`printf %s TOKEN | sha256sum`), got {hex_digest:?}"))?;
                    d
                }
                _ => return Err(format!("{at}: give exactly one of token and sha256")),
            };
            tokens.push((t.name.clone(), digest));
        }
        Ok(Self(tokens))
    }

    /// Reads a token file; errors name the file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("--auth-tokens {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("--auth-tokens {}: {e}", path.display()))
    }

    /// The name of `token`, if known. Compares with every entry in constant time.
    pub fn name_of(&self, token: &str) -> Option<&str> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (name, digest) in &self.0 {
            if bool::from(presented.ct_eq(digest)) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

/// The token store of a running server, re-read when its file changes. Cheap to clone; as
/// an [`Interceptor`] it admits or refuses calls.
#[derive(Clone)]
pub struct TokenAuth {
    path: PathBuf,
    tokens: Arc<RwLock<Arc<Tokens>>>,
}

/// The caller a call was authenticated as (a request extension, for handlers).
#[derive(Debug, Clone)]
pub struct Caller(pub String);

impl TokenAuth {
    /// Loads `path` now (an error is one line naming the flag and the file) and re-reads it
    /// every `poll` when it changes.
    pub fn load(path: &Path, poll: Duration) -> anyhow::Result<Self> {
        let tokens = Tokens::load(path).map_err(anyhow::Error::msg)?;
        let auth = Self { path: path.to_path_buf(), tokens: Arc::new(RwLock::new(Arc::new(tokens))) };
        let (watched, mut seen) = (auth.clone(), stamp(path));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(poll).await;
                let now = stamp(&watched.path);
                if now == seen {
                    continue;
                }
                seen = now;
                match Tokens::load(&watched.path) {
                    Ok(t) => {
                        tracing::info!(tokens = t.0.len(), "auth tokens re-read");
                        *watched.tokens.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(t);
                    }
                    Err(e) => tracing::error!(error = %e, "auth tokens changed but do not load; keeping the previous ones"),
                }
            }
        });
        Ok(auth)
    }

    fn current(&self) -> Arc<Tokens> {
        self.tokens.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl TokenAuth {
    /// The caller an `authorization` header value names (`Bearer <token>`), or why not
    /// (counted, and worded for the client: never echoing the token).
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<String, &'static str> {
        let refused = |why| {
            metrics::counter!("ig_guard_unauthenticated_total").increment(1);
            Err(why)
        };
        let Some(value) = authorization else {
            return refused("authorization: a bearer token is required (`authorization: Bearer <token>`)");
        };
        let token = std::str::from_utf8(value).ok().and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
        let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
            return refused("authorization: expected `Bearer <token>`");
        };
        let tokens = self.current();
        let Some(name) = tokens.name_of(token) else {
            return refused("authorization: unknown token");
        };
        tracing::Span::current().record("caller", name);
        metrics::counter!("ig_guard_calls_total", "caller" => name.to_string()).increment(1);
        Ok(name.to_string())
    }
}

impl Interceptor for TokenAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request.metadata().get("authorization").map(|v| v.as_bytes());
        match self.authenticate(header) {
            Ok(name) => {
                request.extensions_mut().insert(Caller(name));
                Ok(request)
            }
            Err(why) => {
                let mut status = Status::unauthenticated(why);
                status.metadata_mut().insert("www-authenticate", tonic::metadata::MetadataValue::from_static("Bearer"));
                Err(status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(auth: &mut TokenAuth, header: Option<&str>) -> Result<String, Status> {
        let mut req = Request::new(());
        if let Some(h) = header {
            req.metadata_mut().insert("authorization", h.parse().unwrap());
        }
        auth.call(req).map(|r| r.extensions().get::<Caller>().unwrap().0.clone())
    }

    #[tokio::test]
    async fn known_tokens_pass_by_name_and_others_are_unauthenticated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let hashed = hex::encode(Sha256::digest(b"hashed-token-0123456789"));
        std::fs::write(&path, format!("[[token]]\nname = \"app\"\ntoken = \"plain-token-0123456789\"\n\n[[token]]\nname = \"eval\"\nsha256 = \"{hashed}\"\n")).unwrap();
        let mut auth = TokenAuth::load(&path, Duration::from_secs(3600)).unwrap();
        assert_eq!(call(&mut auth, Some("Bearer plain-token-0123456789")).unwrap(), "app");
        assert_eq!(call(&mut auth, Some("Bearer hashed-token-0123456789")).unwrap(), "eval");
        for header in [None, Some("Bearer wrong-token-0123456789"), Some("Basic dXNlcjpwdw=="), Some("Bearer "), Some("plain-token-0123456789")] {
            let err = call(&mut auth, header).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{header:?}");
            assert!(!err.message().contains("plain-token"), "the token never appears in a message");
        }
    }

    #[test]
    fn bad_files_name_the_entry_and_field() {
        let cases = [
            ("", "no [[token]] entries"),
            ("[[token]]\nname = \"a\"\ntoken = \"short\"\n", "token[0].token: at least 16"),
            ("[[token]]\nname = \"a\"\ntoken = \"   \"\n", "token[0].token: at least 16"),
            ("[[token]]\nname = \"a\"\nsha256 = \"abc\"\n", "token[0].sha256: 64 hexadecimal"),
            ("[[token]]\nname = \"a b\"\ntoken = \"0123456789abcdef\"\n", "token[0].name"),
            ("[[token]]\nname = \"a\"\n", "token[0]: give exactly one"),
            ("[[token]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\n[[token]]\nname = \"a\"\ntoken = \"0123456789abcdeg\"\n", "token[1].name: \"a\" is used twice"),
            ("[[token]]\nname = \"a\"\ntokn = \"x\"\n", "unknown field"),
        ];
        for (text, needle) in cases {
            let e = Tokens::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        let e = Tokens::load(Path::new("/nonexistent/tokens.toml")).unwrap_err();
        assert!(e.starts_with("--auth-tokens /nonexistent/tokens.toml: "), "{e}");
    }
}
