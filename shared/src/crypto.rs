//! AES-256-GCM encryption of TOTP secrets and backup codes at rest, and keyed hashes
//! (HMAC-SHA256) of the codes the service only has to recognise. Each ciphertext and hash
//! names the key that made it, so a new key can be made active without breaking old
//! records; a ciphertext is bound to its user and record kind (associated data), so it
//! cannot be moved elsewhere.
use crate::error::ApiError;
use crate::users::UserId;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

type HmacSha256 = Hmac<Sha256>;

/// The label the MAC key of a key material is derived with: HMAC-SHA256 keyed with the
/// material's SHA-256 (the AES key) over this label, so the two keys are never the same.
const MAC_KEY_LABEL: &[u8] = b"posthog-users/mac-key/v1";

const NONCE_LEN: usize = 12;

/// The keys from the Secrets Manager secret `{"active": "<id>", "<id>": "<key material>", ...}`.
pub struct Keyring {
    active: String,
    keys: HashMap<String, Aes256Gcm>,
    mac_keys: HashMap<String, [u8; 32]>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// Parses the secret. Key material is any high-entropy string (the template generates 64
    /// random alphanumerics); its SHA-256 is the AES key.
    pub fn from_secret(secret: &str) -> Result<Self, ApiError> {
        let broken = |why: &str| {
            tracing::error!(why, "encryption key material is malformed");
            ApiError::Internal
        };
        let value: serde_json::Value =
            serde_json::from_str(secret).map_err(|_| broken("not JSON"))?;
        let object = value.as_object().ok_or_else(|| broken("not an object"))?;
        let active = object
            .get("active")
            .and_then(|v| v.as_str())
            .ok_or_else(|| broken("no active key id"))?
            .to_string();
        let mut keys = HashMap::new();
        let mut mac_keys = HashMap::new();
        for (id, material) in object {
            if id == "active" {
                continue;
            }
            let material = material
                .as_str()
                .ok_or_else(|| broken("key material is not a string"))?;
            if material.len() < 32 {
                return Err(broken("key material shorter than 32 characters"));
            }
            if id.len() > 255 {
                return Err(broken("key id longer than 255 bytes"));
            }
            let aes_key = Sha256::digest(material.as_bytes());
            let cipher =
                Aes256Gcm::new_from_slice(&aes_key).map_err(|_| broken("bad key length"))?;
            let mut mac = <HmacSha256 as hmac::digest::KeyInit>::new_from_slice(&aes_key)
                .map_err(|_| broken("bad key length"))?;
            mac.update(MAC_KEY_LABEL);
            keys.insert(id.clone(), cipher);
            mac_keys.insert(id.clone(), mac.finalize().into_bytes().into());
        }
        if !keys.contains_key(&active) {
            return Err(broken("active key id has no key"));
        }
        Ok(Keyring {
            active,
            keys,
            mac_keys,
        })
    }

    /// Whether this keyring has the key of that id (a record may name a key added after
    /// the keyring was read: [`crate::Context::keyring_for`] reads the secret again then).
    pub fn knows(&self, key_id: &str) -> bool {
        self.keys.contains_key(key_id)
    }

    /// The id of the active key, which new ciphertexts and hashes use.
    pub fn active_key_id(&self) -> &str {
        &self.active
    }

    /// HMAC-SHA256 of `message` under the MAC key of `key_id` (hex), `None` for a key this
    /// keyring does not have. For codes that are only ever compared: without the key, a
    /// table dump does not let anyone test guesses against the stored value.
    pub fn mac(&self, key_id: &str, message: &[u8]) -> Option<String> {
        let key = self.mac_keys.get(key_id)?;
        let mut mac = <HmacSha256 as hmac::digest::KeyInit>::new_from_slice(key).ok()?;
        mac.update(message);
        Some(crate::auth::hex(&mac.finalize().into_bytes()))
    }

    /// `[id length][id][nonce][ciphertext and tag]`, with `user|kind` as associated data.
    pub fn encrypt(
        &self,
        user_uuid: UserId,
        kind: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, ApiError> {
        let cipher = &self.keys[&self.active];
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = associated_data(user_uuid, kind);
        let sealed = cipher
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| ApiError::internal("crypto.encrypt", "AES-GCM refused the input"))?;
        let mut out = Vec::with_capacity(1 + self.active.len() + NONCE_LEN + sealed.len());
        out.push(self.active.len() as u8);
        out.extend_from_slice(self.active.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a ciphertext made by `encrypt` for the same user and kind, with whichever key
    /// it names.
    pub fn decrypt(
        &self,
        user_uuid: UserId,
        kind: &str,
        sealed: &[u8],
    ) -> Result<Vec<u8>, ApiError> {
        let undecryptable = || {
            tracing::error!(kind, "stored ciphertext cannot be decrypted");
            ApiError::Internal
        };
        let (&id_len, rest) = sealed.split_first().ok_or_else(undecryptable)?;
        let id_len = id_len as usize;
        if rest.len() < id_len + NONCE_LEN {
            return Err(undecryptable());
        }
        let (id, rest) = rest.split_at(id_len);
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let id = std::str::from_utf8(id).map_err(|_| undecryptable())?;
        let cipher = self.keys.get(id).ok_or_else(undecryptable)?;
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| undecryptable())?;
        let aad = associated_data(user_uuid, kind);
        cipher
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: body,
                    aad: &aad,
                },
            )
            .map_err(|_| undecryptable())
    }
}

/// The secret with one more key, made the active one: `(new secret, new key id)`. Every
/// earlier key stays, so records made with them still open; functions that read the secret
/// before pick the new key up when they meet a record made with it
/// ([`crate::Context::keyring_for`]). `users-admin rotate-encryption-key` writes it back.
pub fn secret_with_new_active_key(secret: &str) -> Result<(String, String), ApiError> {
    use rand::Rng;
    Keyring::from_secret(secret)?;
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(secret).map_err(|e| ApiError::serialisation("key secret", &e))?;
    let mut id = format!("k{}", crate::clock::now_secs());
    while object.contains_key(&id) {
        id.push('x');
    }
    const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let material: String = (0..64)
        .map(|_| ALPHANUMERIC[rng.random_range(0..ALPHANUMERIC.len())] as char)
        .collect();
    object.insert(id.clone(), material.into());
    object.insert("active".into(), id.clone().into());
    let text =
        serde_json::to_string(&object).map_err(|e| ApiError::serialisation("key secret", &e))?;
    Ok((text, id))
}

/// The id of the key a ciphertext made by [`Keyring::encrypt`] names, if it is well formed.
pub fn key_id_of(sealed: &[u8]) -> Option<&str> {
    let (&id_len, rest) = sealed.split_first()?;
    std::str::from_utf8(rest.get(..id_len as usize)?).ok()
}

fn associated_data(user_uuid: UserId, kind: &str) -> Vec<u8> {
    format!("{user_uuid}|{kind}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: u8) -> UserId {
        UserId::parse(&format!("00000000-0000-4000-8000-0000000000{n:02}")).expect("a uuid")
    }

    const ONE: &str = r#"{"active":"k1","k1":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#;
    const TWO: &str = r#"{"active":"k2","k1":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","k2":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"}"#;

    #[test]
    fn round_trip_and_binding() {
        let ring = Keyring::from_secret(ONE).unwrap();
        let sealed = ring.encrypt(user(1), "totp", b"secret").unwrap();
        assert_eq!(ring.decrypt(user(1), "totp", &sealed).unwrap(), b"secret");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert!(
            ring.decrypt(user(2), "totp", &sealed).is_err(),
            "bound to its user"
        );
        assert!(
            ring.decrypt(user(1), "pending", &sealed).is_err(),
            "bound to its kind"
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(ring.decrypt(user(1), "totp", &tampered).is_err());
    }

    #[test]
    fn rotation_keeps_old_records_readable() {
        let old = Keyring::from_secret(ONE)
            .unwrap()
            .encrypt(user(0), "totp", b"x")
            .unwrap();
        let ring = Keyring::from_secret(TWO).unwrap();
        assert_eq!(ring.decrypt(user(0), "totp", &old).unwrap(), b"x");
        let new = ring.encrypt(user(0), "totp", b"y").unwrap();
        assert_eq!(&new[1..3], b"k2");
        assert!(Keyring::from_secret(ONE)
            .unwrap()
            .decrypt(user(0), "totp", &new)
            .is_err());
    }

    #[test]
    fn macs_name_their_key_and_differ_per_key() {
        let one = Keyring::from_secret(ONE).unwrap();
        let two = Keyring::from_secret(TWO).unwrap();
        let a = one.mac("k1", b"m").unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(
            two.mac("k1", b"m").unwrap(),
            a,
            "the same key after rotation"
        );
        assert_ne!(two.mac("k2", b"m").unwrap(), a);
        assert_ne!(one.mac("k1", b"n").unwrap(), a);
        assert_eq!(one.mac("k2", b"m"), None);
        assert!(two.knows("k2") && !one.knows("k2"));
        assert_eq!(two.active_key_id(), "k2");
        let sealed = two.encrypt(user(0), "totp", b"x").unwrap();
        assert_eq!(key_id_of(&sealed), Some("k2"));
        assert_eq!(key_id_of(&[]), None);
        assert_eq!(key_id_of(&[9, b'k']), None);
    }

    #[test]
    fn a_rotated_secret_keeps_every_key_and_activates_a_new_one() {
        let old = Keyring::from_secret(TWO).unwrap();
        let sealed = old.encrypt(user(0), "totp", b"x").unwrap();
        let (rotated, id) = secret_with_new_active_key(TWO).unwrap();
        let ring = Keyring::from_secret(&rotated).unwrap();
        assert_eq!(ring.active_key_id(), id);
        assert!(ring.knows("k1") && ring.knows("k2") && id != "k1" && id != "k2");
        assert_eq!(ring.decrypt(user(0), "totp", &sealed).unwrap(), b"x");
        assert_eq!(
            key_id_of(&ring.encrypt(user(0), "totp", b"y").unwrap()),
            Some(id.as_str())
        );
        assert!(secret_with_new_active_key("{}").is_err());
    }

    #[test]
    fn malformed_secrets_are_refused() {
        for secret in [
            "",
            "[]",
            r#"{"k1":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#,
            r#"{"active":"k2","k1":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#,
            r#"{"active":"k1","k1":"short"}"#,
        ] {
            assert!(Keyring::from_secret(secret).is_err(), "{secret}");
        }
    }
}
