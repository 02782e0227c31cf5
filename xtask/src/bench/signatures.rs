//! What checking a token's signature costs, by algorithm, in-process with the crates the
//! handler uses (jsonwebtoken over aws-lc-rs) and the same validation: ES256 is what the
//! development issuer signs with; RS256 is what Entra ID and most providers sign with.

use std::time::{Duration, Instant};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value, json};

use super::table::Table;
use crate::dev_issuer::{self, DevKey};

const ISSUER: &str = "https://issuer.example";

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).unwrap_or_default())
        .collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// Microseconds per verification: the median of `batches` batches of `per_batch`.
fn time_verify(token: &str, key: &DecodingKey, algorithm: Algorithm, batches: usize, per_batch: usize) -> f64 {
    let mut validation = Validation::new(algorithm);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[dev_issuer::AUDIENCE]);
    let mut batch_micros: Vec<f64> = (0..batches)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..per_batch {
                let verified = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation);
                assert!(verified.is_ok(), "the token verifies");
            }
            started.elapsed().as_secs_f64() * 1e6 / per_batch as f64
        })
        .collect();
    batch_micros.sort_by(f64::total_cmp);
    batch_micros[batch_micros.len() / 2]
}

/// The section: µs per verification for ES256 and RS256 (2048-bit).
pub fn section(duration: Duration) -> anyhow::Result<String> {
    let claims = dev_issuer::claims(ISSUER, "someone", json!({"roles": ["Analytics.Read"], "tid": "acme"}));
    // Enough work to take about the measurement time, split into batches for a median.
    let (batches, per_batch) = (9, (duration.as_millis() as usize / 9).clamp(50, 5000));

    let es = DevKey::generate()?;
    let es_token = es.sign(&claims)?;
    let es_jwks: JwkSet = serde_json::from_value(es.jwks())?;
    let es_key = DecodingKey::from_jwk(&es_jwks.keys[0])?;

    let rsa = KeyPair::generate(KeySize::Rsa2048).map_err(|_| anyhow::anyhow!("generating an RSA key failed"))?;
    let private = rsa
        .as_der()
        .map_err(|_| anyhow::anyhow!("encoding the RSA key failed"))?;
    let public = rsa
        .public_key()
        .as_der()
        .map_err(|_| anyhow::anyhow!("encoding the RSA public key failed"))?;
    let rs_signing = EncodingKey::from_rsa_pem(pem("PRIVATE KEY", private.as_ref()).as_bytes())?;
    let rs_token = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &rs_signing)?;
    let rs_key = DecodingKey::from_rsa_pem(pem("PUBLIC KEY", public.as_ref()).as_bytes())?;

    let es_micros = time_verify(&es_token, &es_key, Algorithm::ES256, batches, per_batch);
    let rs_micros = time_verify(&rs_token, &rs_key, Algorithm::RS256, batches, per_batch);
    let mut table = Table::new(&[
        "algorithm",
        "µs per verification (median of 9 batches)",
        "verifications",
    ]);
    for (name, micros) in [("ES256 (P-256)", es_micros), ("RS256 (RSA 2048)", rs_micros)] {
        table.row(vec![
            name.to_owned(),
            format!("{micros:.1}"),
            (batches * per_batch).to_string(),
        ]);
    }
    Ok(format!(
        "## Signature check alone\n\nIn-process, one thread: `jsonwebtoken::decode` with the \
         handler's validation (issuer, audience, required claims) on one token, over and over. \
         This is the part of a new token's cost that no cache can remove; a token seen before \
         skips it.\n\n{}",
        table.render()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_algorithms_sign_verify_and_report_a_cost() {
        let section = section(Duration::from_millis(10)).expect("measured");
        for row in ["ES256 (P-256)", "RS256 (RSA 2048)"] {
            let line = section.lines().find(|line| line.contains(row)).expect(row);
            let micros: f64 = line.split('|').nth(2).expect("cell").trim().parse().expect("a number");
            assert!(micros > 0.0, "{line}");
        }
    }
}
