//! Envelopes: decoding, request ids and authentication (interface spec, "Authentication").
//!
//! The request id is the representation-independent hash of the content map *as received*
//! (every field, known or not), so a client that adds a field the replica does not know still
//! gets the id it signed. The signature is checked over `"\x0Aic-request" ‖ request id` with
//! the key at the end of the delegation chain; each delegation is signed by the key before
//! it, has not expired, and, if it names targets, names the request's canister. The sender
//! must be the self-authenticating principal of `sender_pubkey`, or anonymous with neither key
//! nor signature: a request signed by one key can never act as another principal.
//!
//! Keys: Ed25519 (RFC 8410 DER), ECDSA on secp256k1 and P-256 (DER SubjectPublicKeyInfo,
//! signature `r ‖ s` over SHA-256 of the message). Canister signatures (Internet Identity)
//! are refused with a message saying so.

use candid::Principal;
use ic_transport_types::{Delegation, EnvelopeContent};
use serde::Deserialize;
use serde_cbor::Value;
use sha2::{Digest, Sha256};

use crate::replica::RequestId;

/// The most delegations a chain may hold (the spec's limit).
const MAX_DELEGATIONS: usize = 20;

/// The most targets one delegation may name (the IC's limit).
const MAX_TARGETS: usize = 1_000;

const REQUEST_DOMAIN: &[u8] = b"\x0Aic-request";
const DELEGATION_DOMAIN: &[u8] = b"\x1Aic-request-auth-delegation";

/// An envelope as received: the content kept as raw CBOR for its request id.
#[derive(Deserialize)]
struct RawEnvelope {
    content: Value,
    #[serde(default, with = "serde_bytes")]
    sender_pubkey: Option<Vec<u8>>,
    #[serde(default, with = "serde_bytes")]
    sender_sig: Option<Vec<u8>>,
    #[serde(default)]
    sender_delegation: Option<Vec<RawSignedDelegation>>,
}

#[derive(Deserialize)]
struct RawSignedDelegation {
    delegation: Value,
    #[serde(with = "serde_bytes")]
    signature: Vec<u8>,
}

/// An authenticated request.
#[derive(Debug)]
pub struct Authenticated {
    pub request_id: RequestId,
    pub content: EnvelopeContent,
}

/// Decodes an envelope and authenticates it at time `now` (ns). The error says what to fix.
pub fn authenticate(body: &[u8], now: u64) -> Result<Authenticated, String> {
    let envelope: RawEnvelope = serde_cbor::from_slice(body)
        .map_err(|e| format!("the body is not a CBOR request envelope: {e}"))?;
    let request_id = request_id(&envelope.content)?;
    let content: EnvelopeContent = serde_cbor::value::from_value(envelope.content)
        .map_err(|e| format!("the envelope's content is not a valid request: {e}"))?;
    let sender = *content.sender();
    let target = match &content {
        EnvelopeContent::Call { canister_id, .. } | EnvelopeContent::Query { canister_id, .. } => {
            Some(*canister_id)
        }
        EnvelopeContent::ReadState { .. } => None,
    };
    match (envelope.sender_pubkey, envelope.sender_sig) {
        (None, None) => {
            if sender != Principal::anonymous() {
                return Err(format!(
                    "the request from {sender} is not signed: only the anonymous principal \
                     (2vxsx-fae) may send unsigned requests"
                ));
            }
            if envelope.sender_delegation.is_some() {
                return Err("an unsigned request cannot carry delegations".into());
            }
        }
        (Some(pubkey), Some(signature)) => {
            if Principal::self_authenticating(&pubkey) != sender {
                return Err(format!(
                    "the sender {sender} is not the self-authenticating principal of \
                     sender_pubkey ({}); sign with the sender's own key",
                    Principal::self_authenticating(&pubkey)
                ));
            }
            let mut key = pubkey;
            let delegations = envelope.sender_delegation.unwrap_or_default();
            if delegations.len() > MAX_DELEGATIONS {
                return Err(format!(
                    "the request carries {} delegations; at most {MAX_DELEGATIONS} are allowed",
                    delegations.len()
                ));
            }
            for (index, signed) in delegations.into_iter().enumerate() {
                let mut message = DELEGATION_DOMAIN.to_vec();
                message.extend_from_slice(&self::request_id(&signed.delegation)?);
                verify(&key, &message, &signed.signature)
                    .map_err(|e| format!("delegation {index}: {e}"))?;
                let delegation: Delegation = serde_cbor::value::from_value(signed.delegation)
                    .map_err(|e| format!("delegation {index} is malformed: {e}"))?;
                if delegation.expiration < now {
                    return Err(format!(
                        "delegation {index} expired at {} (now {now}); get a new one",
                        delegation.expiration
                    ));
                }
                if let Some(targets) = &delegation.targets {
                    if targets.len() > MAX_TARGETS {
                        return Err(format!(
                            "delegation {index} names {} targets; at most {MAX_TARGETS}",
                            targets.len()
                        ));
                    }
                    if let Some(target) = target
                        && !targets.contains(&target)
                    {
                        return Err(format!(
                            "delegation {index} does not allow requests to canister {target}"
                        ));
                    }
                }
                key = delegation.pubkey;
            }
            let mut message = REQUEST_DOMAIN.to_vec();
            message.extend_from_slice(&request_id);
            verify(&key, &message, &signature)?;
        }
        _ => {
            return Err("sender_pubkey and sender_sig come together: send both or neither".into());
        }
    }
    Ok(Authenticated {
        request_id,
        content,
    })
}

/// OIDs in a SubjectPublicKeyInfo, DER-encoded.
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
const OID_SECP256K1: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_CANISTER_SIG: &[u8] = &[
    0x06, 0x0c, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x83, 0xb8, 0x43, 0x01, 0x02,
];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Verifies `signature` of `message` by the DER public key `key`.
fn verify(key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), String> {
    use k256::ecdsa::signature::Verifier;
    use k256::pkcs8::DecodePublicKey;
    if contains(key, OID_ED25519) {
        let key = ic_ed25519::PublicKey::deserialize_rfc8410_der(key)
            .map_err(|e| format!("sender_pubkey is not a valid Ed25519 key: {e:?}"))?;
        key.verify_signature(message, signature)
            .map_err(|_| "the Ed25519 signature does not verify".to_string())
    } else if contains(key, OID_SECP256K1) {
        let key = k256::ecdsa::VerifyingKey::from_public_key_der(key)
            .map_err(|e| format!("sender_pubkey is not a valid secp256k1 key: {e}"))?;
        let signature = k256::ecdsa::Signature::from_slice(signature)
            .map_err(|e| format!("the secp256k1 signature is malformed (r ‖ s): {e}"))?;
        key.verify(message, &signature)
            .map_err(|_| "the secp256k1 signature does not verify".to_string())
    } else if contains(key, OID_P256) {
        let key = p256::ecdsa::VerifyingKey::from_public_key_der(key)
            .map_err(|e| format!("sender_pubkey is not a valid P-256 key: {e}"))?;
        let signature = p256::ecdsa::Signature::from_slice(signature)
            .map_err(|e| format!("the P-256 signature is malformed (r ‖ s): {e}"))?;
        key.verify(message, &signature)
            .map_err(|_| "the P-256 signature does not verify".to_string())
    } else if contains(key, OID_CANISTER_SIG) {
        Err(
            "canister signatures (Internet Identity) are not supported by this replica; \
             sign with an Ed25519, secp256k1 or P-256 key"
                .into(),
        )
    } else {
        Err("sender_pubkey is of an unknown kind: use Ed25519, secp256k1 or P-256 (DER)".into())
    }
}

/// The representation-independent hash of a CBOR value (interface spec, "Request ids"):
/// a map hashes the sorted concatenation of its fields' `hash(key) ‖ hash(value)`.
pub fn request_id(value: &Value) -> Result<RequestId, String> {
    hash_value(value, 0)
}

/// Nesting deeper than this is refused (the spec's values nest two or three levels).
const MAX_DEPTH: usize = 32;

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn hash_value(value: &Value, depth: usize) -> Result<[u8; 32], String> {
    if depth > MAX_DEPTH {
        return Err(format!("the request nests deeper than {MAX_DEPTH} levels"));
    }
    match value {
        Value::Bytes(bytes) => Ok(sha256(bytes)),
        Value::Text(text) => Ok(sha256(text.as_bytes())),
        Value::Integer(n) => {
            let n = u64::try_from(*n)
                .map_err(|_| format!("the request holds the number {n}, not a nat64"))?;
            Ok(sha256(&crate::replica::certification::leb128(n)))
        }
        Value::Array(items) => {
            let mut hasher = Sha256::new();
            for item in items {
                hasher.update(hash_value(item, depth.saturating_add(1))?);
            }
            Ok(hasher.finalize().into())
        }
        Value::Map(map) => {
            let mut fields = Vec::with_capacity(map.len());
            for (key, value) in map {
                let Value::Text(key) = key else {
                    return Err("a map in the request has a key that is not text".into());
                };
                let mut field = sha256(key.as_bytes()).to_vec();
                field.extend_from_slice(&hash_value(value, depth.saturating_add(1))?);
                fields.push(field);
            }
            fields.sort();
            Ok(sha256(&fields.concat()))
        }
        Value::Tag(_, inner) => hash_value(inner, depth.saturating_add(1)),
        other => Err(format!(
            "the request holds a CBOR value the interface does not use: {other:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ic_transport_types::to_request_id;

    #[test]
    fn request_ids_match_the_agents() {
        let content = EnvelopeContent::Call {
            nonce: Some(vec![1, 2, 3]),
            ingress_expiry: 1_685_570_400_000_000_000,
            sender: Principal::anonymous(),
            canister_id: Principal::management_canister(),
            method_name: "hello".into(),
            arg: b"DIDL\x00\xfd*".to_vec(),
            sender_info: None,
        };
        let bytes = serde_cbor::to_vec(&content).unwrap();
        let value: Value = serde_cbor::from_slice(&bytes).unwrap();
        let ours = request_id(&value).unwrap();
        assert_eq!(ours, *to_request_id(&content).unwrap());
        let paths = EnvelopeContent::ReadState {
            ingress_expiry: 5,
            sender: Principal::anonymous(),
            paths: vec![
                vec!["time".into()],
                vec!["a".into(), b"\x00\x01".to_vec().into()],
            ],
        };
        let value: Value = serde_cbor::from_slice(&serde_cbor::to_vec(&paths).unwrap()).unwrap();
        assert_eq!(request_id(&value).unwrap(), *to_request_id(&paths).unwrap());
    }

    #[test]
    fn malformed_envelopes_are_refused_with_a_message() {
        for body in [&b""[..], b"\xff\xff", b"\xa0"] {
            assert!(authenticate(body, 0).is_err());
        }
    }
}
