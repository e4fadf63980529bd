//! AES-256-GCM encryption of TOTP secrets and backup codes at rest. Each ciphertext names
//! the key that made it, so a new key can be made active without breaking old records, and
//! is bound to its user and record kind (associated data), so it cannot be moved elsewhere.
use crate::error::ApiError;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

const NONCE_LEN: usize = 12;

/// The keys from the Secrets Manager secret `{"active": "<id>", "<id>": "<key material>", ...}`.
pub struct Keyring {
    active: String,
    keys: HashMap<String, Aes256Gcm>,
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
        for (id, material) in object {
            if id == "active" {
                continue;
            }
            let material = material
                .as_str()
                .ok_or_else(|| broken("key material is not a string"))?;
            if material.len() < 32 || id.len() > 255 {
                return Err(broken("key material shorter than 32 characters"));
            }
            let cipher = Aes256Gcm::new_from_slice(&Sha256::digest(material.as_bytes()))
                .map_err(|_| broken("bad key length"))?;
            keys.insert(id.clone(), cipher);
        }
        if !keys.contains_key(&active) {
            return Err(broken("active key id has no key"));
        }
        Ok(Keyring { active, keys })
    }

    /// `[id length][id][nonce][ciphertext and tag]`, with `user|kind` as associated data.
    pub fn encrypt(
        &self,
        user_uuid: &str,
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
            .map_err(|_| ApiError::Internal)?;
        let mut out = Vec::with_capacity(1 + self.active.len() + NONCE_LEN + sealed.len());
        out.push(self.active.len() as u8);
        out.extend_from_slice(self.active.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a ciphertext made by `encrypt` for the same user and kind, with whichever key
    /// it names.
    pub fn decrypt(&self, user_uuid: &str, kind: &str, sealed: &[u8]) -> Result<Vec<u8>, ApiError> {
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

fn associated_data(user_uuid: &str, kind: &str) -> Vec<u8> {
    format!("{user_uuid}|{kind}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = r#"{"active":"k1","k1":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#;
    const TWO: &str = r#"{"active":"k2","k1":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","k2":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"}"#;

    #[test]
    fn round_trip_and_binding() {
        let ring = Keyring::from_secret(ONE).unwrap();
        let sealed = ring.encrypt("u1", "totp", b"secret").unwrap();
        assert_eq!(ring.decrypt("u1", "totp", &sealed).unwrap(), b"secret");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert!(
            ring.decrypt("u2", "totp", &sealed).is_err(),
            "bound to its user"
        );
        assert!(
            ring.decrypt("u1", "pending", &sealed).is_err(),
            "bound to its kind"
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(ring.decrypt("u1", "totp", &tampered).is_err());
    }

    #[test]
    fn rotation_keeps_old_records_readable() {
        let old = Keyring::from_secret(ONE)
            .unwrap()
            .encrypt("u", "totp", b"x")
            .unwrap();
        let ring = Keyring::from_secret(TWO).unwrap();
        assert_eq!(ring.decrypt("u", "totp", &old).unwrap(), b"x");
        let new = ring.encrypt("u", "totp", b"y").unwrap();
        assert_eq!(&new[1..3], b"k2");
        assert!(Keyring::from_secret(ONE)
            .unwrap()
            .decrypt("u", "totp", &new)
            .is_err());
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
