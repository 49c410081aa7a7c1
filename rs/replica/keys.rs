//! The node's keys: the subnet's BLS12-381 root key, which signs certificates (min-sig, as
//! the IC's threshold key signs them), and the node's Ed25519 key, which signs query
//! responses. Both are created at the first start and kept in the state directory
//! (`node_secret`, mode 0600, through the state manager), so clients that pinned the root key
//! keep working after a restart.
//!
//! With one subnet and no NNS delegation, the subnet id is the self-authenticating principal
//! of the root key's DER, which is what ic-agent derives when a certificate has no delegation.

use candid::Principal;
use ic_verify_bls_signature::PrivateKey as BlsPrivateKey;

/// The DER prefix of a BLS12-381 G2 public key (the IC's root key), before its 96 bytes.
pub const ROOT_KEY_DER_PREFIX: &[u8; 37] = b"\x30\x81\x82\x30\x1d\x06\x0d\x2b\x06\x01\x04\x01\x82\xdc\x7c\x05\x03\x01\x02\x01\x06\x0c\x2b\x06\x01\x04\x01\x82\xdc\x7c\x05\x03\x02\x01\x03\x61\x00";

/// The domain separator of a certificate's signature: `"\x0Dic-state-root" ‖ root hash`.
const STATE_ROOT_DOMAIN: &[u8] = b"\x0Dic-state-root";

/// The secret's length on disk: the BLS scalar, then the Ed25519 seed.
const SECRET_BYTES: usize = 64;

/// The node's keys.
pub struct NodeKeys {
    root: BlsPrivateKey,
    node: ic_ed25519::PrivateKey,
    root_key_der: Vec<u8>,
    node_key_der: Vec<u8>,
}

impl NodeKeys {
    /// Fresh keys from the operating system's random source, as bytes for `node_secret`.
    pub fn generate_secret() -> Vec<u8> {
        let mut rng = rand::rngs::OsRng;
        let root = BlsPrivateKey::random(&mut rng);
        let node = ic_ed25519::PrivateKey::generate();
        let mut secret = Vec::with_capacity(SECRET_BYTES);
        secret.extend_from_slice(&root.serialize());
        secret.extend_from_slice(&node.serialize_raw());
        secret
    }

    /// The keys kept in `secret` (see [`Self::generate_secret`]).
    pub fn from_secret(secret: &[u8]) -> Result<NodeKeys, String> {
        if secret.len() != SECRET_BYTES {
            return Err(format!(
                "node_secret has {} bytes, expected {SECRET_BYTES}: restore it from a backup, \
                 or remove it to start with new keys (clients that pinned the root key must \
                 fetch it again)",
                secret.len()
            ));
        }
        let (root, node) = secret.split_at(SECRET_BYTES / 2);
        let root = BlsPrivateKey::deserialize(root)
            .map_err(|_| "node_secret holds an invalid BLS12-381 secret key".to_string())?;
        let node = ic_ed25519::PrivateKey::deserialize_raw(node)
            .map_err(|e| format!("node_secret holds an invalid Ed25519 key: {e:?}"))?;
        let mut root_key_der = ROOT_KEY_DER_PREFIX.to_vec();
        root_key_der.extend_from_slice(&root.public_key().serialize());
        let node_key_der = node.public_key().serialize_rfc8410_der();
        Ok(NodeKeys {
            root,
            node,
            root_key_der,
            node_key_der,
        })
    }

    /// The root key in DER (133 bytes): what `GET /api/v2/status` gives out and clients pin.
    pub fn root_key_der(&self) -> &[u8] {
        &self.root_key_der
    }

    /// The node's Ed25519 public key in DER (44 bytes), certified at
    /// `subnet/<subnet>/node/<node>/public_key`.
    pub fn node_key_der(&self) -> &[u8] {
        &self.node_key_der
    }

    pub fn subnet_id(&self) -> Principal {
        Principal::self_authenticating(&self.root_key_der)
    }

    pub fn node_id(&self) -> Principal {
        Principal::self_authenticating(&self.node_key_der)
    }

    /// The certificate signature over a state tree's root hash.
    pub fn sign_state_root(&self, root_hash: &[u8; 32]) -> Vec<u8> {
        let mut message = STATE_ROOT_DOMAIN.to_vec();
        message.extend_from_slice(root_hash);
        self.root.sign(&message).serialize().to_vec()
    }

    /// The node's signature of a query response's signable bytes.
    pub fn sign_as_node(&self, message: &[u8]) -> Vec<u8> {
        self.node.sign_message(message).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_the_secret_and_sign_verifiably() {
        let secret = NodeKeys::generate_secret();
        let keys = NodeKeys::from_secret(&secret).unwrap();
        let again = NodeKeys::from_secret(&secret).unwrap();
        assert_eq!(keys.root_key_der(), again.root_key_der());
        assert_eq!(keys.root_key_der().len(), 133);
        let hash = [7u8; 32];
        let signature = keys.sign_state_root(&hash);
        let mut message = STATE_ROOT_DOMAIN.to_vec();
        message.extend_from_slice(&hash);
        let key = &keys.root_key_der()[ROOT_KEY_DER_PREFIX.len()..];
        assert!(ic_verify_bls_signature::verify_bls_signature(&signature, &message, key).is_ok());
        assert!(NodeKeys::from_secret(&secret[1..]).is_err());
    }
}
