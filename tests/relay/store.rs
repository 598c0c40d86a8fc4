//! The refresh-token store: round trips, rotation, refusal of corrupt and exposed files,
//! encryption, crash safety and concurrent writers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use smtp_oauth_relay::credentials::secret::Secret;
use smtp_oauth_relay::credentials::store::{StoreError, StoreKey, StoredToken, TokenStore};

const TOKEN_A: &str = "1//0gRefreshTokenOfAssetA-very-secret";
const TOKEN_B: &str = "1//0gRefreshTokenOfAssetB-very-secret";

fn token(refresh_token: &str, account: &str, now: u64) -> StoredToken {
    StoredToken::new(
        Secret::new(refresh_token),
        Some(account.to_string()),
        vec!["https://mail.google.com/".to_string()],
        now,
    )
}

fn key() -> StoreKey {
    StoreKey::parse(&StoreKey::generate().unwrap()).unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn store_in(dir: &Path, key: Option<StoreKey>) -> TokenStore {
    TokenStore::new(dir.join("tokens.json"), key)
}

/// Everything in the directory except the store and its lock file.
fn other_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "tokens.json" && name != "tokens.json.lock")
        .collect();
    names.sort();
    names
}

#[test]
fn missing_file_is_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path(), None);
    assert!(store.load().unwrap().is_empty());
    assert_eq!(store.get("gmail").unwrap(), None);
    assert_eq!(store.fingerprint(), None);
    assert_eq!(store.path(), dir.path().join("tokens.json"));
}

#[test]
fn round_trip_keeps_every_field_and_other_assets() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path(), None);
    let a = token(TOKEN_A, "a@example.com", 100);
    let b = StoredToken {
        account: None,
        scopes: vec![],
        ..token(TOKEN_B, "unused", 200)
    };
    store.put("a", a.clone()).unwrap();
    store.put("b", b.clone()).unwrap();

    let expected = BTreeMap::from([("a".to_string(), a.clone()), ("b".to_string(), b)]);
    assert_eq!(store.load().unwrap(), expected);
    // A second instance (another process) sees the same.
    assert_eq!(store_in(dir.path(), None).load().unwrap(), expected);
    assert_eq!(store.get("a").unwrap(), Some(a));

    let text = fs::read_to_string(store.path()).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["assets"]["a"]["refresh_token"], TOKEN_A);
    assert_eq!(json["assets"]["a"]["account"], "a@example.com");
    assert_eq!(json["assets"]["b"]["account"], serde_json::Value::Null);

    assert!(store.remove("a").unwrap());
    assert!(!store.remove("a").unwrap());
    assert_eq!(store.load().unwrap().keys().collect::<Vec<_>>(), ["b"]);
    assert_eq!(other_files(dir.path()), Vec::<String>::new());
}

#[test]
fn rotation_replaces_the_token_and_keeps_obtained_at() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path(), None);
    store
        .put("a", token(TOKEN_A, "a@example.com", 100))
        .unwrap();
    store
        .put("b", token(TOKEN_B, "b@example.com", 150))
        .unwrap();

    store
        .put("a", token("1//rotated", "a@example.com", 500))
        .unwrap();
    let a = store.get("a").unwrap().unwrap();
    assert_eq!(a.refresh_token.expose(), "1//rotated");
    assert_eq!(a.obtained_at, 100);
    assert_eq!(a.updated_at, 500);
    assert_eq!(
        store.get("b").unwrap().unwrap().refresh_token.expose(),
        TOKEN_B
    );

    // A different mailbox consenting is a new grant: its own obtained_at.
    store
        .put("a", token("1//other", "someone-else@example.com", 900))
        .unwrap();
    let a = store.get("a").unwrap().unwrap();
    assert_eq!((a.obtained_at, a.updated_at), (900, 900));
}

#[test]
fn file_is_0600_and_a_created_directory_0700() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("state").join("relay");
    let store = store_in(&nested, None);
    store.put("a", token(TOKEN_A, "a@example.com", 1)).unwrap();
    assert_eq!(mode(store.path()), 0o600);
    assert_eq!(mode(&nested), 0o700);
    assert_eq!(mode(&dir.path().join("state")), 0o700);
    assert_eq!(mode(&nested.join("tokens.json.lock")), 0o600);
    // Still 0600 after a rewrite (a new file is renamed into place every time).
    store.put("b", token(TOKEN_B, "b@example.com", 2)).unwrap();
    assert_eq!(mode(store.path()), 0o600);
}

#[test]
fn group_or_world_accessible_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path(), None);
    store.put("a", token(TOKEN_A, "a@example.com", 1)).unwrap();
    for exposed in [0o640, 0o604, 0o660] {
        fs::set_permissions(store.path(), fs::Permissions::from_mode(exposed)).unwrap();
        let error = store.load().unwrap_err();
        assert!(
            matches!(error, StoreError::Permissions { mode, .. } if mode == exposed),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains("tokens.json") && message.contains("chmod 600"),
            "{message}"
        );
        // Writing is refused too, and leaves the file as it was.
        assert!(matches!(
            store.put("b", token(TOKEN_B, "b@example.com", 2)),
            Err(StoreError::Permissions { .. })
        ));
        assert_eq!(mode(store.path()), exposed);
    }
    fs::set_permissions(store.path(), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(store.load().unwrap().len(), 1);
}

/// Writes `content` as the store (mode 0600) and returns its path.
fn write_store(dir: &Path, content: &[u8]) -> PathBuf {
    let path = dir.join("tokens.json");
    fs::write(&path, content).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn corrupt_file_is_an_error_and_is_never_overwritten() {
    let good = {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path(), None);
        store.put("a", token(TOKEN_A, "a@example.com", 1)).unwrap();
        store.put("b", token(TOKEN_B, "b@example.com", 1)).unwrap();
        fs::read(store.path()).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("garbage", b"\x00\x01\xffnot json at all".to_vec()),
        ("wrong shape", br#"{"version":1,"assets":[1,2]}"#.to_vec()),
        ("no version", br#"{"assets":{}}"#.to_vec()),
        ("future version", br#"{"version":2,"assets":{}}"#.to_vec()),
        (
            "token of the wrong type",
            br#"{"version":1,"assets":{"a":{"refresh_token":"1//leak-me","account":null,"scopes":[],"obtained_at":"1//leak-me","updated_at":1}}}"#.to_vec(),
        ),
    ];
    for (name, content) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = write_store(dir.path(), &content);
        let store = TokenStore::new(path.clone(), None);

        let error = store.load().unwrap_err();
        assert!(
            matches!(error, StoreError::Corrupt { .. }),
            "{name}: {error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("tokens.json"), "{name}: {message}");
        assert!(!message.contains("leak-me"), "{name}: {message}");
        assert!(store.get("a").is_err(), "{name}");

        // Writers fail too rather than "repair" the file by dropping what it holds.
        let put = store.put("c", token("1//new", "c@example.com", 5));
        assert!(
            matches!(put, Err(StoreError::Corrupt { .. })),
            "{name}: {put:?}"
        );
        assert!(store.remove("a").is_err(), "{name}");
        assert_eq!(
            fs::read(&path).unwrap(),
            content,
            "{name}: file was modified"
        );
        assert_eq!(other_files(dir.path()), Vec::<String>::new(), "{name}");
    }
}

#[test]
fn unreadable_file_is_an_error_not_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file should be: reading fails, which must not mean "empty".
    fs::create_dir(dir.path().join("tokens.json")).unwrap();
    let store = store_in(dir.path(), None);
    assert!(store.load().is_err());
    assert!(store.put("a", token(TOKEN_A, "a@example.com", 1)).is_err());
    assert!(dir.path().join("tokens.json").is_dir());
}

#[test]
fn encrypted_round_trip_hides_the_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let store = store_in(dir.path(), Some(key.clone()));
    store.put("a", token(TOKEN_A, "a@example.com", 1)).unwrap();
    store.put("b", token(TOKEN_B, "b@example.com", 2)).unwrap();
    let first = fs::read_to_string(store.path()).unwrap();

    let loaded = store_in(dir.path(), Some(key)).load().unwrap();
    assert_eq!(loaded["a"].refresh_token.expose(), TOKEN_A);
    assert_eq!(loaded["b"].refresh_token.expose(), TOKEN_B);

    let json: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["encryption"], "chacha20-poly1305");
    assert!(json["nonce"].is_string() && json["ciphertext"].is_string());
    assert_eq!(json.as_object().unwrap().len(), 4);
    for needle in [TOKEN_A, "RefreshToken", "a@example.com", "assets"] {
        assert!(!first.contains(needle), "{needle} visible in {first}");
    }
    assert_eq!(mode(store.path()), 0o600);

    // A fresh nonce per write: the same content encrypts differently.
    store.put("b", token(TOKEN_B, "b@example.com", 2)).unwrap();
    let second: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(store.path()).unwrap()).unwrap();
    assert_ne!(json["nonce"], second["nonce"]);
    assert_ne!(json["ciphertext"], second["ciphertext"]);
}

#[test]
fn wrong_key_missing_key_and_tampering_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path(), Some(key()));
    store.put("a", token(TOKEN_A, "a@example.com", 1)).unwrap();
    let original = fs::read(store.path()).unwrap();

    let wrong = store_in(dir.path(), Some(key()));
    assert!(matches!(wrong.load(), Err(StoreError::Decrypt { .. })));
    assert!(matches!(
        wrong.put("b", token(TOKEN_B, "b@example.com", 1)),
        Err(StoreError::Decrypt { .. })
    ));

    let keyless = store_in(dir.path(), None);
    let error = keyless.load().unwrap_err();
    assert!(matches!(error, StoreError::Encrypted { .. }), "{error:?}");
    assert!(error.to_string().contains("tokens.json"));
    assert!(matches!(
        keyless.put("b", token(TOKEN_B, "b@example.com", 1)),
        Err(StoreError::Encrypted { .. })
    ));
    assert_eq!(fs::read(store.path()).unwrap(), original);

    // Flip one bit of the ciphertext, and separately of the nonce.
    let mut json: serde_json::Value = serde_json::from_slice(&original).unwrap();
    for field in ["ciphertext", "nonce"] {
        let mut tampered = json.clone();
        let mut bytes = base64_decode(tampered[field].as_str().unwrap());
        bytes[0] ^= 0x01;
        tampered[field] = base64_encode(&bytes).into();
        write_store(dir.path(), tampered.to_string().as_bytes());
        let error = store.load().unwrap_err();
        assert!(
            matches!(error, StoreError::Decrypt { .. }),
            "{field}: {error:?}"
        );
    }
    // Cut-off ciphertext (shorter than the tag) is refused as well.
    json["ciphertext"] = "AAAA".into();
    write_store(dir.path(), json.to_string().as_bytes());
    assert!(matches!(store.load(), Err(StoreError::Decrypt { .. })));
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn plain_store_upgrades_to_encrypted_on_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    store_in(dir.path(), None)
        .put("a", token(TOKEN_A, "a@example.com", 1))
        .unwrap();
    let key = key();
    let store = store_in(dir.path(), Some(key.clone()));
    // Read fine with a key configured...
    assert_eq!(
        store.get("a").unwrap().unwrap().refresh_token.expose(),
        TOKEN_A
    );
    // ... and the next write encrypts everything, the old entry included.
    store.put("b", token(TOKEN_B, "b@example.com", 2)).unwrap();
    let text = fs::read_to_string(store.path()).unwrap();
    assert!(text.contains("chacha20-poly1305") && !text.contains(TOKEN_A));
    let loaded = store_in(dir.path(), Some(key)).load().unwrap();
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded["a"].refresh_token.expose(), TOKEN_A);
}

#[test]
fn interrupted_write_leaves_the_old_store_and_is_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path(), None);
    store.put("a", token(TOKEN_A, "a@example.com", 1)).unwrap();
    let before = store.load().unwrap();

    // What a crash between creating the temp file and renaming it leaves behind: a
    // half-written temp file next to the intact store.
    let stray = dir.path().join(".tokens.json.tmp.4242.0123456789abcdef");
    fs::write(&stray, b"{\"version\":1,\"assets\":{\"a\":{\"refre").unwrap();
    // An unrelated file that merely looks similar is not ours to delete.
    let unrelated = dir.path().join("tokens.json.tmp.notes");
    fs::write(&unrelated, b"keep me").unwrap();

    assert_eq!(store.load().unwrap(), before);
    store.put("b", token(TOKEN_B, "b@example.com", 2)).unwrap();
    let after = store.load().unwrap();
    assert_eq!(after.len(), 2);
    assert_eq!(after["a"], before["a"]);
    assert!(!stray.exists(), "the stray temp file was not cleaned up");
    assert_eq!(other_files(dir.path()), ["tokens.json.tmp.notes"]);
}

#[test]
fn concurrent_writers_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    let key = key();
    let barrier = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (path, key, barrier) = (path.clone(), key.clone(), barrier.clone());
            std::thread::spawn(move || {
                // A store per thread, as separate processes would have.
                let store = TokenStore::new(path, Some(key));
                barrier.wait();
                for round in 0..5 {
                    let token = token(&format!("1//token-{i}-{round}"), "x@example.com", round);
                    store.put(&format!("asset-{i}"), token).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let loaded = TokenStore::new(path, Some(key)).load().unwrap();
    assert_eq!(loaded.len(), 8);
    for i in 0..8 {
        let entry = &loaded[&format!("asset-{i}")];
        assert_eq!(entry.refresh_token.expose(), format!("1//token-{i}-4"));
        assert_eq!((entry.obtained_at, entry.updated_at), (0, 4));
    }
    assert_eq!(other_files(dir.path()), Vec::<String>::new());
}

#[test]
fn fingerprint_changes_after_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path(), None);
    store.put("a", token(TOKEN_A, "a@example.com", 1)).unwrap();
    let first = store.fingerprint().unwrap();
    assert_eq!(store.fingerprint(), Some(first));
    assert_eq!(store.load().unwrap().len(), 1);
    assert_eq!(store.fingerprint(), Some(first), "reading is not a change");

    // Same size, same second: only the inode tells these two apart.
    store.put("a", token(TOKEN_B, "a@example.com", 1)).unwrap();
    let second = store.fingerprint().unwrap();
    assert_ne!(first, second);
    // Another process's write is noticed too.
    store_in(dir.path(), None)
        .put("b", token(TOKEN_B, "b@example.com", 1))
        .unwrap();
    assert_ne!(store.fingerprint(), Some(second));
}

#[test]
fn key_files_and_errors_never_show_keys() {
    let dir = tempfile::tempdir().unwrap();
    let generated = StoreKey::generate().unwrap();
    let key_path = dir.path().join("store.key");
    fs::write(&key_path, format!("{generated}\n")).unwrap();
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).unwrap();
    let key = StoreKey::from_file(&key_path).unwrap();
    assert!(!format!("{key:?}").contains(&generated));

    // The key read from the file decrypts what the generated text encrypted.
    let store = store_in(dir.path(), Some(StoreKey::parse(&generated).unwrap()));
    store.put("a", token(TOKEN_A, "a@example.com", 1)).unwrap();
    assert_eq!(store_in(dir.path(), Some(key)).load().unwrap().len(), 1);

    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        StoreKey::from_file(&key_path),
        Err(StoreError::Permissions { .. })
    ));

    let bad = dir.path().join("bad.key");
    fs::write(&bad, "Zm9vYmFy-a-typo'd-secret-key").unwrap();
    fs::set_permissions(&bad, fs::Permissions::from_mode(0o600)).unwrap();
    let error = StoreKey::from_file(&bad).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, StoreError::Key(_)), "{error:?}");
    assert!(
        message.contains("bad.key") && !message.contains("typo"),
        "{message}"
    );
    assert!(matches!(
        StoreKey::from_file(&dir.path().join("missing.key")),
        Err(StoreError::Io { .. })
    ));
}

#[test]
fn debug_output_never_shows_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path(), Some(key()));
    store.put("a", token(TOKEN_A, "a@example.com", 1)).unwrap();
    let loaded = store.load().unwrap();
    let text = format!("{loaded:?} {store:?}");
    assert!(!text.contains(TOKEN_A), "{text}");
    assert!(text.contains("a@example.com"));
}
