//! RS512 JWTs for Symphony's RSA login: `sub` = the service account's username, `exp` = now +
//! 240 s (inside the pod's 5-minute limit, with room for clock skew), a fresh JWT per login.
//! This is the only module that reads the private key.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::SymphonyError;

/// Lifetime of a login JWT, as the official BDKs use.
pub const JWT_LIFETIME_SECS: u64 = 240;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
}

/// Signs login JWTs with the bot's private key (PKCS#1 or PKCS#8 PEM).
pub struct JwtSigner {
    key: EncodingKey,
    username: String,
}

// The key never prints.
impl std::fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSigner").field("username", &self.username).finish_non_exhaustive()
    }
}

impl JwtSigner {
    pub fn from_pem(pem: &[u8], username: &str) -> Result<Self, String> {
        let key = EncodingKey::from_rsa_pem(pem)
            .map_err(|e| format!("not an RSA private key in PEM: {e}"))?;
        Ok(Self { key, username: username.to_owned() })
    }

    pub fn from_file(path: &Path, username: &str) -> Result<Self, SymphonyError> {
        let shown = path.display().to_string();
        let pem = std::fs::read(path)
            .map_err(|e| SymphonyError::Key { path: shown.clone(), reason: e.to_string() })?;
        Self::from_pem(&pem, username).map_err(|reason| SymphonyError::Key { path: shown, reason })
    }

    /// A new JWT, valid for [`JWT_LIFETIME_SECS`].
    pub fn sign(&self) -> Result<String, SymphonyError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let claims = Claims { sub: &self.username, exp: now + JWT_LIFETIME_SECS };
        jsonwebtoken::encode(&Header::new(Algorithm::RS512), &claims, &self.key)
            .map_err(|e| SymphonyError::Sign(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[derive(serde::Deserialize)]
    struct Decoded {
        sub: String,
        exp: u64,
    }

    #[test]
    fn pkcs1_and_pkcs8_keys_sign_rs512_jwts_the_public_key_verifies() {
        let public = include_bytes!("../../tests/fixtures/keys/bot-public.pem");
        let key = DecodingKey::from_rsa_pem(public).expect("public key");
        for pem in [
            &include_bytes!("../../tests/fixtures/keys/bot-pkcs1.pem")[..],
            &include_bytes!("../../tests/fixtures/keys/bot-pkcs8.pem")[..],
        ] {
            let signer = JwtSigner::from_pem(pem, "wa-bot").expect("key loads");
            let jwt = signer.sign().expect("sign");
            assert_eq!(jsonwebtoken::decode_header(&jwt).expect("header").alg, Algorithm::RS512);
            let claims =
                jsonwebtoken::decode::<Decoded>(&jwt, &key, &Validation::new(Algorithm::RS512))
                    .expect("verifies")
                    .claims;
            let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
            assert_eq!(claims.sub, "wa-bot");
            assert!(claims.exp > now && claims.exp <= now + 300, "exp {} now {now}", claims.exp);
            assert!(!format!("{signer:?}").contains("PRIVATE"));
        }
        assert!(JwtSigner::from_pem(b"not a key", "x").is_err());
    }
}
