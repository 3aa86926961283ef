//! Standard Webhooks 1.0 signatures: `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`,
//! the key being the base64 part of a `whsec_…` secret.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// How far a delivery's timestamp may be from the receiver's clock.
pub const TOLERANCE_SECS: i64 = 300;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("webhook secret must be \"whsec_\" followed by base64")]
    BadSecret,
    #[error("missing webhook-id, webhook-timestamp or webhook-signature header")]
    MissingHeader,
    #[error("webhook-timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is more than {TOLERANCE_SECS}s away from now")]
    StaleTimestamp,
    #[error("no v1 signature matches")]
    Mismatch,
}

/// A webhook signing key decoded from its `whsec_…` form.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

impl SigningKey {
    /// Parses `whsec_<base64>`; a secret without the prefix is accepted as base64 too.
    pub fn from_secret(secret: &str) -> Result<Self, SignatureError> {
        let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
        let key = STANDARD
            .decode(b64)
            .map_err(|_| SignatureError::BadSecret)?;
        if key.is_empty() {
            return Err(SignatureError::BadSecret);
        }
        Ok(Self(key))
    }

    /// The `webhook-signature` header value for one delivery.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!("v1,{}", STANDARD.encode(self.mac(id, timestamp, body)))
    }

    /// Checks a delivery's headers and body, with `now` in Unix seconds.
    pub fn verify(
        &self,
        id: &str,
        timestamp: &str,
        signatures: &str,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        let ts: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| SignatureError::BadTimestamp)?;
        if (now - ts).abs() > TOLERANCE_SECS {
            return Err(SignatureError::StaleTimestamp);
        }
        let expected = self.mac(id, ts, body);
        let matches = signatures
            .split_whitespace()
            .filter_map(|s| s.strip_prefix("v1,"))
            .filter_map(|b64| STANDARD.decode(b64).ok())
            .any(|sig| constant_time_eq(&sig, &expected));
        if matches {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().to_vec()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    // Test vector from the Standard Webhooks specification's reference libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signing_matches_the_specification_vector() {
        let key = SigningKey::from_secret(SECRET).unwrap();
        assert_eq!(key.sign(ID, TS, BODY), SIG);
    }

    #[test]
    fn verification_accepts_any_matching_signature_in_the_list() {
        let key = SigningKey::from_secret(SECRET).unwrap();
        let header = format!("v1,Zm9v {SIG}");
        assert_eq!(key.verify(ID, "1614265330", &header, BODY, TS + 10), Ok(()));
    }

    #[test]
    fn a_tampered_body_is_rejected() {
        let key = SigningKey::from_secret(SECRET).unwrap();
        let err = key.verify(ID, "1614265330", SIG, br#"{"test": 1}"#, TS);
        assert_eq!(err, Err(SignatureError::Mismatch));
    }

    #[test]
    fn an_old_timestamp_is_rejected() {
        let key = SigningKey::from_secret(SECRET).unwrap();
        let err = key.verify(ID, "1614265330", SIG, BODY, TS + 301);
        assert_eq!(err, Err(SignatureError::StaleTimestamp));
    }

    #[test]
    fn a_secret_that_is_not_base64_is_refused() {
        assert!(SigningKey::from_secret("whsec_!!!").is_err());
    }
}
