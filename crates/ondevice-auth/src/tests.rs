//! Verifier behaviour against an in-memory key store (the SQLite store has its own tests).

use std::sync::{Arc, Mutex};

use super::*;

#[derive(Default)]
struct MemStore {
    keys: Mutex<Vec<KeyRecord>>,
    touches: Mutex<Vec<(KeyId, i64)>>,
}

impl KeyStore for MemStore {
    fn load_keys(&self) -> Result<Vec<KeyRecord>, StoreFailure> {
        Ok(self.keys.lock().unwrap().clone())
    }
    fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreFailure> {
        self.keys.lock().unwrap().push(key.clone());
        Ok(())
    }
    fn revoke_key(&self, id: KeyId, at: i64) -> Result<(), StoreFailure> {
        for k in self.keys.lock().unwrap().iter_mut().filter(|k| k.id == id) {
            k.revoked_at = Some(at);
        }
        Ok(())
    }
    fn touch_keys(&self, used: &[(KeyId, i64)]) -> Result<(), StoreFailure> {
        self.touches.lock().unwrap().extend_from_slice(used);
        Ok(())
    }
}

fn bearer(key: &str) -> Vec<u8> {
    format!("Bearer {key}").into_bytes()
}

fn auth(v: &Verifier, key: Option<&str>, scope: Scope) -> Result<Principal, AuthError> {
    let header = key.map(bearer);
    v.authorize(&Presented { authorization: header.as_deref(), ..Default::default() }, scope)
}

#[test]
fn keys_verify_by_scope_and_revocation_is_immediate() {
    let store = Arc::new(MemStore::default());
    let v = Verifier::new(store.clone(), true).unwrap();
    let (info, key) = v.create_key(Some("ci"), Scopes::from_list("read").unwrap()).unwrap();
    assert_eq!(info.name, "ci");

    assert!(matches!(auth(&v, None, Scope::Read), Err(AuthError::Missing)));
    assert!(matches!(auth(&v, Some("odk_nope"), Scope::Read), Err(AuthError::Malformed(_))));
    let wrong = Token::generate().unwrap().expose();
    assert!(matches!(auth(&v, Some(&wrong), Scope::Read), Err(AuthError::Invalid)));
    // Right id, wrong secret.
    let forged = format!("{}{}", &key[..17], &wrong[17..]);
    assert!(matches!(auth(&v, Some(&forged), Scope::Read), Err(AuthError::Invalid)));

    let p = auth(&v, Some(&key), Scope::Read).unwrap();
    assert_eq!(p.key_id, Some(info.id));
    let err = auth(&v, Some(&key), Scope::Models).unwrap_err();
    assert!(err.is_forbidden(), "{err}");
    assert_eq!(err.to_string(), "api key lacks the models scope");

    v.revoke(&info.id.to_string()).unwrap();
    assert!(matches!(auth(&v, Some(&key), Scope::Read), Err(AuthError::Revoked(_))));
    // Revocation persisted: a new verifier over the same store refuses it too.
    let v2 = Verifier::new(store, true).unwrap();
    assert!(matches!(auth(&v2, Some(&key), Scope::Read), Err(AuthError::Revoked(_))));
    assert!(matches!(v2.revoke("000000000000"), Err(AuthError::NotFound(_))));
}

#[test]
fn the_last_active_admin_key_cannot_be_revoked() {
    let v = Verifier::new(Arc::new(MemStore::default()), true).unwrap();
    let (first, first_key) = v.create_key(Some("first"), Scopes::admin()).unwrap();
    let (reader, _) = v.create_key(Some("reader"), Scopes::from_list("read,models,infer").unwrap()).unwrap();
    let err = v.revoke(&first.id.to_string()).unwrap_err();
    assert!(matches!(err, AuthError::LastAdmin(id) if id == first.id), "{err}");
    assert!(err.to_string().contains("last active admin key"), "{err}");
    assert!(auth(&v, Some(&first_key), Scope::Admin).is_ok(), "still usable");
    // Non-admin keys go freely; with a second admin, the first may go, then not the second.
    v.revoke(&reader.id.to_string()).unwrap();
    let (second, _) = v.create_key(Some("second"), Scopes::from_list("admin,read").unwrap()).unwrap();
    v.revoke(&first.id.to_string()).unwrap();
    assert!(matches!(v.revoke(&second.id.to_string()), Err(AuthError::LastAdmin(_))));
    // Revoking an already revoked key changes nothing and is not refused.
    v.revoke(&first.id.to_string()).unwrap();
}

#[test]
fn last_used_is_recorded_and_flushed() {
    let store = Arc::new(MemStore::default());
    let v = Verifier::new(store.clone(), true).unwrap();
    let (info, key) = v.create_key(Some("k"), Scopes::admin()).unwrap();
    assert_eq!(v.list_keys()[0].last_used_at, None);
    auth(&v, Some(&key), Scope::Admin).unwrap();
    assert!(v.list_keys()[0].last_used_at.is_some());
    assert_eq!(v.flush_last_used().unwrap(), 1);
    assert_eq!(v.flush_last_used().unwrap(), 0, "nothing new to flush");
    assert_eq!(store.touches.lock().unwrap()[0].0, info.id);
}

#[test]
fn bad_names_and_empty_scopes_are_refused() {
    let v = Verifier::new(Arc::new(MemStore::default()), true).unwrap();
    for bad in ["", "has space", "x/y", &"a".repeat(65)] {
        assert!(matches!(v.create_key(Some(bad), Scopes::admin()), Err(AuthError::BadName(_))), "{bad:?}");
    }
    assert!(matches!(v.create_key(Some("ok"), Scopes::NONE), Err(AuthError::NoScope)));
    let (info, _) = v.create_key(None, Scopes::admin()).unwrap();
    assert_eq!(info.name, format!("key-{}", info.id));
}

#[test]
fn disabled_auth_allows_everything() {
    let v = Verifier::new(Arc::new(MemStore::default()), false).unwrap();
    let p = auth(&v, None, Scope::Admin).unwrap();
    assert_eq!(p.name, "anonymous");
}

#[cfg(unix)]
#[test]
fn bootstrap_token_is_private_reused_and_rotated() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bootstrap.token");
    let store = Arc::new(MemStore::default());
    let v = Verifier::new(store.clone(), true).unwrap();

    assert_eq!(v.ensure_bootstrap(&path).unwrap(), Bootstrap::Created);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let first = std::fs::read_to_string(&path).unwrap();
    assert!(auth(&v, Some(first.trim()), Scope::Admin).is_ok());

    // A widened mode is tightened on the next start; the token is reused.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let v = Verifier::new(store.clone(), true).unwrap();
    assert_eq!(v.ensure_bootstrap(&path).unwrap(), Bootstrap::Reused);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), first);

    // Deleting the file rotates: a new token, the old one revoked.
    std::fs::remove_file(&path).unwrap();
    assert_eq!(v.ensure_bootstrap(&path).unwrap(), Bootstrap::Created);
    let second = std::fs::read_to_string(&path).unwrap();
    assert_ne!(first, second);
    assert!(matches!(auth(&v, Some(first.trim()), Scope::Read), Err(AuthError::Revoked(_))));
    assert!(auth(&v, Some(second.trim()), Scope::Admin).is_ok());
    let live: Vec<_> = v.list_keys().into_iter().filter(|k| k.revoked_at.is_none()).collect();
    assert_eq!(live.len(), 1);
}

#[test]
fn principal_by_id_follows_revocation_and_scopes() {
    let v = Verifier::new(Arc::new(MemStore::default()), true).unwrap();
    let (_admin, _) = v.create_key(Some("admin"), Scopes::admin()).unwrap();
    let (reader, _) = v.create_key(Some("reader"), Scopes::from_list("read").unwrap()).unwrap();
    let p = v.principal(Some(reader.id), Scope::Read).unwrap();
    assert_eq!((p.key_id, p.name.as_str()), (Some(reader.id), "reader"));
    assert!(matches!(v.principal(Some(reader.id), Scope::Admin), Err(AuthError::Forbidden { .. })));
    assert!(matches!(v.principal(None, Scope::Read), Err(AuthError::Invalid)));
    let unknown: KeyId = "0123456789ab".parse().unwrap();
    assert!(matches!(v.principal(Some(unknown), Scope::Read), Err(AuthError::Invalid)));
    v.revoke(&reader.id.to_string()).unwrap();
    assert!(matches!(v.principal(Some(reader.id), Scope::Read), Err(AuthError::Revoked(_))));
    // Without auth every request is admin.
    let open = Verifier::new(Arc::new(MemStore::default()), false).unwrap();
    assert!(open.principal(None, Scope::Admin).unwrap().scopes.holds(Scope::Admin));
}
