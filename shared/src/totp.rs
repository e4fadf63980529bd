//! RFC 6238 TOTP as authenticator apps use it: HMAC-SHA1, 6 digits, 30-second steps, and
//! one step of clock skew either side. The arithmetic is totp-rs's.
use crate::error::ApiError;
use rand::RngCore;
use totp_rs::{Algorithm, Builder, Secret, Totp};

pub const STEP_SECS: u64 = 30;
pub const DIGITS: u8 = 6;
pub const SKEW_STEPS: u16 = 1;
const SECRET_BYTES: usize = 20;

/// A TOTP shared secret. Never logged; at rest only encrypted.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpSecret(Vec<u8>);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret(..)")
    }
}

impl TotpSecret {
    /// 20 bytes (160 bits, RFC 4226's recommendation) from a CSPRNG (rand's thread-local
    /// ChaCha12, seeded from the operating system).
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        TotpSecret(bytes)
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        TotpSecret(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Unpadded base32 (32 characters for 20 bytes), as authenticator apps take it.
    pub fn to_base32(&self) -> String {
        Secret::from(self.0.clone()).to_base32()
    }

    fn totp(&self, issuer: Option<&str>, account: &str) -> Result<Totp, ApiError> {
        Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(DIGITS)
            .with_skew(SKEW_STEPS)
            .with_step_duration(STEP_SECS)
            .with_secret(self.0.clone())
            .with_issuer(issuer.map(|i| i.replace(':', " ")))
            .with_account_name(account.replace(':', " "))
            .build()
            .map_err(|_| ApiError::internal("totp.build", "TOTP parameters refused"))
    }

    /// The `otpauth://` URI for a QR code or an authenticator app, naming every parameter.
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> Result<String, ApiError> {
        let url = self
            .totp(Some(issuer), account)?
            .to_url()
            .map_err(|_| ApiError::internal("totp.url", "otpauth URI refused"))?;
        let mut url = url;
        for (name, value) in [("algorithm", "SHA1"), ("digits", "6"), ("period", "30")] {
            if !url.contains(&format!("&{name}=")) && !url.contains(&format!("?{name}=")) {
                url.push_str(&format!("&{name}={value}"));
            }
        }
        Ok(url)
    }

    /// The time step a 6-digit code matches at `now` (current step or one either side),
    /// compared in constant time.
    pub fn check(&self, code: &str, now: u64) -> Option<u64> {
        self.totp(None, "").ok()?.check(code, now)
    }
}

/// The step that contains `time`.
pub fn step_at(time: u64) -> u64 {
    time / STEP_SECS
}

/// A code for any algorithm and length, to check the implementation against RFC 6238's
/// Appendix B vectors.
pub fn code_at(secret: &[u8], algorithm: Algorithm, digits: u8, time: u64) -> String {
    Builder::new()
        .with_algorithm(algorithm)
        .with_digits(digits)
        .with_step_duration(STEP_SECS)
        .with_secret(secret.to_vec())
        .build_noncompliant()
        .generate(time)
        .to_string()
}

pub use totp_rs::Algorithm as TotpAlgorithm;

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B: the seeds are "12345678901234567890" repeated to the hash's size.
    #[test]
    fn rfc6238_appendix_b_vectors() {
        let sha1 = b"12345678901234567890".to_vec();
        let sha256 = b"12345678901234567890123456789012".to_vec();
        let sha512 = b"1234567890123456789012345678901234567890123456789012345678901234".to_vec();
        let vectors: [(u64, &str, &str, &str); 6] = [
            (59, "94287082", "46119246", "90693936"),
            (1111111109, "07081804", "68084774", "25091201"),
            (1111111111, "14050471", "67062674", "99943326"),
            (1234567890, "89005924", "91819424", "93441116"),
            (2000000000, "69279037", "90698825", "38618901"),
            (20000000000, "65353130", "77737706", "47863826"),
        ];
        for (time, c1, c256, c512) in vectors {
            assert_eq!(
                code_at(&sha1, Algorithm::SHA1, 8, time),
                c1,
                "SHA1 at {time}"
            );
            assert_eq!(
                code_at(&sha256, Algorithm::SHA256, 8, time),
                c256,
                "SHA256 at {time}"
            );
            assert_eq!(
                code_at(&sha512, Algorithm::SHA512, 8, time),
                c512,
                "SHA512 at {time}"
            );
        }
    }

    #[test]
    fn check_accepts_one_step_either_side_and_returns_it() {
        let secret = TotpSecret::from_bytes(b"12345678901234567890".to_vec());
        let now = 1_111_111_111;
        let at = |t| code_at(secret.as_bytes(), Algorithm::SHA1, 6, t);
        assert_eq!(secret.check(&at(now), now), Some(step_at(now)));
        assert_eq!(secret.check(&at(now - 30), now), Some(step_at(now) - 1));
        assert_eq!(secret.check(&at(now + 30), now), Some(step_at(now) + 1));
        assert_eq!(secret.check(&at(now - 60), now), None);
        assert_eq!(secret.check("12345", now), None);
        assert_eq!(secret.check("abcdef", now), None);
    }

    #[test]
    fn generated_secrets_are_20_random_bytes_in_32_base32_characters() {
        let (a, b) = (TotpSecret::generate(), TotpSecret::generate());
        assert_ne!(a, b);
        assert_eq!(a.as_bytes().len(), 20);
        let text = a.to_base32();
        assert_eq!(text.len(), 32);
        assert!(text
            .bytes()
            .all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c)));
    }

    #[test]
    fn uri_names_everything() {
        let secret = TotpSecret::from_bytes(b"12345678901234567890".to_vec());
        let uri = secret.otpauth_uri("PostHog", "ann@example.com").unwrap();
        assert!(
            uri.starts_with("otpauth://totp/PostHog:ann%40example.com?"),
            "{uri}"
        );
        for part in [
            "secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ",
            "issuer=PostHog",
            "algorithm=SHA1",
            "digits=6",
            "period=30",
        ] {
            assert!(uri.contains(part), "{uri} lacks {part}");
        }
    }
}
