//! Webhook secrets and signatures (DESIGN §3): Standard Webhooks `v1,<base64>` and the InPlayer
//! legacy `sha256=<hex>`. Pure functions, checked against the published vectors below.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub use crate::subscription::secret::{Secret, SecretError};

/// `v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`.
pub fn standard_signature(secret: &Secret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut signature = String::with_capacity(SIGNATURE_LEN);
    push_standard_signature(&mut signature, secret, msg_id, timestamp, body);
    signature
}

/// `v1,` and 44 characters of base64.
const SIGNATURE_LEN: usize = 47;

/// Appends `v1,<base64 ...>` to `out`, with the key's schedule computed once per secret.
fn push_standard_signature(
    out: &mut String,
    secret: &Secret,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) {
    let mut digits = [0u8; 20];
    let mac = secret.mac(&[
        msg_id.as_bytes(),
        b".",
        decimal(timestamp, &mut digits),
        b".",
        body,
    ]);
    out.push_str("v1,");
    B64.encode_string(mac, out);
}

/// `n` in decimal, written at the end of `buf` (20 bytes hold any i64 with its sign), without
/// the formatting machinery.
fn decimal(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut start = buf.len();
    let mut rest = n.unsigned_abs();
    loop {
        start -= 1;
        buf[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        start -= 1;
        buf[start] = b'-';
    }
    &buf[start..]
}

/// The `webhook-signature` header: the current secret's signature, then during a rotation the
/// previous one's, space separated.
pub fn standard_header(secrets: &[&Secret], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut header = String::with_capacity(secrets.len() * (SIGNATURE_LEN + 1));
    for (i, secret) in secrets.iter().enumerate() {
        if i > 0 {
            header.push(' ');
        }
        push_standard_signature(&mut header, secret, msg_id, timestamp, body);
    }
    header
}

/// Checks a `webhook-signature` header: any `v1,` entry matching any of `secrets`.
pub fn verify_standard(
    secrets: &[Secret],
    header: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> bool {
    secrets.iter().any(|secret| {
        let expected = standard_signature(secret, msg_id, timestamp, body);
        header
            .split(' ')
            .any(|candidate| constant_time_eq(candidate.as_bytes(), expected.as_bytes()))
    })
}

/// `sha256=<lowercase hex HMAC-SHA256 of the body keyed with the whole secret string>`.
pub fn inplayer_signature(secret: &Secret, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub fn verify_inplayer(secrets: &[Secret], header: &str, body: &[u8]) -> bool {
    secrets.iter().any(|secret| {
        constant_time_eq(
            inplayer_signature(secret, body).as_bytes(),
            header.as_bytes(),
        )
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_vectors_reproduce_exactly() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            standard_signature(
                &secret,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let secret = Secret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            standard_signature(
                &secret,
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn timestamps_are_written_in_decimal_as_to_string_writes_them() {
        for n in [0, 7, 10, 1_614_265_330, -1, -42, i64::MAX, i64::MIN] {
            assert_eq!(decimal(n, &mut [0; 20]), n.to_string().as_bytes());
        }
    }

    #[test]
    fn a_rotation_header_holds_both_signatures_space_separated() {
        let current = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let previous = Secret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let header = standard_header(&[&current, &previous], "msg_1", 1614265330, b"{}");
        assert_eq!(
            header,
            format!(
                "{} {}",
                standard_signature(&current, "msg_1", 1614265330, b"{}"),
                standard_signature(&previous, "msg_1", 1614265330, b"{}")
            )
        );
    }

    #[test]
    fn inplayer_vector_reproduces_exactly() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = b"id=evt_1&created=1795745061&type=payment.card.success&resource%5Bamount%5D=10.00&resource%5Bcurrency_iso%5D=EUR";
        assert_eq!(
            inplayer_signature(&secret, body),
            "sha256=400325bb5e914e54a0b2d082c4ed396aec9d920b84f7169da1e6afb458a1b3fc"
        );
    }

    #[test]
    fn secrets_of_24_to_64_bytes_are_accepted_and_others_refused() {
        assert!(Secret::parse(&format!("whsec_{}", B64.encode([1u8; 24]))).is_ok());
        assert!(Secret::parse(&format!("whsec_{}", B64.encode([1u8; 64]))).is_ok());
        assert_eq!(
            Secret::parse(&format!("whsec_{}", B64.encode([1u8; 23]))),
            Err(SecretError::BadLength(23))
        );
        assert_eq!(Secret::parse("abc"), Err(SecretError::MissingPrefix));
        assert_eq!(Secret::parse("whsec_!!"), Err(SecretError::NotBase64));
        assert_eq!(Secret::generate().key().len(), 32);
    }

    #[test]
    fn a_rotation_header_verifies_with_either_secret() {
        let (old, new) = (Secret::generate(), Secret::generate());
        let header = standard_header(&[&new, &old], "evt_1", 10, b"{}");
        assert!(verify_standard(&[old], &header, "evt_1", 10, b"{}"));
        assert!(verify_standard(
            std::slice::from_ref(&new),
            &header,
            "evt_1",
            10,
            b"{}"
        ));
        assert!(!verify_standard(&[new], &header, "evt_1", 11, b"{}"));
    }
}
