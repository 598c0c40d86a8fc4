//! Console sessions: the random session cookie (HttpOnly, SameSite=Strict, Secure with
//! TLS), the per-session CSRF token every POST carries, and the idle timeout.
//!
//! The cookie value is 32 random bytes; the server keeps only its SHA-256, so a memory
//! dump or a debug print of the table holds nothing a browser could present. A session
//! that sees no request for `session_idle_secs` is gone: the next request goes to the
//! login page. Logging in always makes a new session (no fixation).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::time::Instant;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "relay_console";
/// The double-submit cookie that protects the login form (there is no session yet).
pub const LOGIN_COOKIE: &str = "relay_console_login";
/// Sessions held at most; a login beyond it ends the least recently used session. Each
/// needs a successful password check, so this is only a backstop.
pub const MAX_SESSIONS: usize = 1000;

/// A random, URL-safe token of 32 bytes (256 bits).
pub fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).ok()?;
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

/// Compares without an early exit (the length of a token is no secret).
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn key(cookie: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, cookie.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// What a request learns about its (live) session.
#[derive(Debug, Clone)]
pub struct SessionView {
    /// Binds a pending consent to the session that started it.
    pub id: u64,
    pub user: String,
    pub csrf: String,
}

struct Entry {
    view: SessionView,
    last_seen: Instant,
}

#[derive(Default)]
pub struct Sessions {
    inner: Mutex<(HashMap<[u8; 32], Entry>, u64)>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<[u8; 32], Entry>, u64)> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new session for `user`: returns the cookie value. None only when the system
    /// random generator fails.
    pub fn create(&self, user: &str, idle: Duration) -> Option<String> {
        let cookie = random_token()?;
        let csrf = random_token()?;
        let now = Instant::now();
        let mut guard = self.lock();
        let (map, next_id) = &mut *guard;
        map.retain(|_, entry| now.duration_since(entry.last_seen) < idle);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, entry)| entry.last_seen)
                .map(|(key, _)| *key)
            {
                map.remove(&oldest);
            }
        }
        *next_id += 1;
        map.insert(
            key(&cookie),
            Entry {
                view: SessionView {
                    id: *next_id,
                    user: user.to_string(),
                    csrf,
                },
                last_seen: now,
            },
        );
        Some(cookie)
    }

    /// The live session of `cookie`, marked as seen now; an idle one is removed.
    pub fn touch(&self, cookie: &str, idle: Duration) -> Option<SessionView> {
        let now = Instant::now();
        let mut guard = self.lock();
        let map = &mut guard.0;
        let key = key(cookie);
        let entry = map.get_mut(&key)?;
        if now.duration_since(entry.last_seen) >= idle {
            map.remove(&key);
            return None;
        }
        entry.last_seen = now;
        Some(entry.view.clone())
    }

    /// Whether the session with this id is still live (not logged out, not idle).
    pub fn alive(&self, id: u64, idle: Duration) -> bool {
        let now = Instant::now();
        self.lock()
            .0
            .values()
            .any(|entry| entry.view.id == id && now.duration_since(entry.last_seen) < idle)
    }

    pub fn remove(&self, cookie: &str) {
        self.lock().0.remove(&key(cookie));
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// A `Set-Cookie` value: HttpOnly and SameSite=Strict always, Secure over TLS.
/// `max_age` None: a browser-session cookie; `Some(0)` deletes it.
pub fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    secure: bool,
    max_age: Option<u64>,
) -> String {
    let mut cookie = format!("{name}={value}; Path={path}; HttpOnly; SameSite=Strict");
    if secure {
        cookie.push_str("; Secure");
    }
    if let Some(age) = max_age {
        cookie.push_str(&format!("; Max-Age={age}"));
    }
    cookie
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_sessions_end() {
        let sessions = Sessions::default();
        let idle = Duration::from_secs(60);
        let cookie = sessions.create("ops", idle).unwrap();
        let id = sessions.touch(&cookie, idle).unwrap().id;
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(
            sessions.touch(&cookie, idle).is_some(),
            "a request resets the clock"
        );
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(sessions.alive(id, idle));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!sessions.alive(id, idle));
        assert!(sessions.touch(&cookie, idle).is_none());
    }

    #[test]
    fn cookies_are_parsed_and_flagged() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("cookie", "a=1; relay_console=abc; b=2".parse().unwrap());
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "c"), None);
        let set = set_cookie(SESSION_COOKIE, "x", "/", true, None);
        assert_eq!(
            set,
            "relay_console=x; Path=/; HttpOnly; SameSite=Strict; Secure"
        );
        assert!(!set_cookie("n", "v", "/", false, Some(0)).contains("Secure"));
    }

    #[test]
    fn tokens_are_random_and_compared_whole() {
        let a = random_token().unwrap();
        assert_eq!(a.len(), 43);
        assert_ne!(a, random_token().unwrap());
        assert!(same_token(&a, &a.clone()));
        assert!(!same_token(&a, &a[1..]));
    }
}
