//! A canister's metadata: the `icp:public <name>` and `icp:private <name>` custom sections of
//! its module, certified at `canister/<id>/metadata/<name>` (interface spec, "Canister
//! information").
//!
//! Every section is in the state tree, private ones too (the tree is the same for every
//! reader); what a private section protects is who may *ask* for it: `read_state` gives
//! `metadata/<name>` of a private section only to a controller of the canister (403 to anyone
//! else, as the replica's `can_read_canister_metadata`). A section the module does not have is
//! readable by anyone (it is proven absent).
//!
//! A module's sections are parsed once per module hash (the node caches them,
//! [`MetadataCache`]), not once per round: rounds rebuild the tree from the state, and a module
//! changes only at install.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use super::certification::Tree;

/// Who may read a section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    Public,
    Private,
}

/// The `icp:` sections of one module.
#[derive(Debug)]
pub struct Metadata {
    /// `metadata/<name>` → section bytes.
    pub tree: Arc<Tree>,
    pub visibility: BTreeMap<String, Visibility>,
}

impl Metadata {
    /// The sections of `wasm_module` (gzipped or not). A module that does not decode or parse
    /// has none: install refuses such a module, so only a state written by another build could
    /// hold one, and its metadata is then empty rather than an error for every reader.
    pub fn of_module(wasm_module: &[u8]) -> Metadata {
        let mut sections: BTreeMap<String, (Visibility, Vec<u8>)> = BTreeMap::new();
        if let Ok(wasm) = crate::embedders::validation::decode(wasm_module) {
            for payload in wasmparser::Parser::new(0).parse_all(&wasm) {
                let Ok(payload) = payload else { break };
                let wasmparser::Payload::CustomSection(reader) = payload else {
                    continue;
                };
                let name = reader.name();
                let scoped = if let Some(name) = name.strip_prefix("icp:public ") {
                    (name, Visibility::Public)
                } else if let Some(name) = name.strip_prefix("icp:private ") {
                    (name, Visibility::Private)
                } else {
                    continue;
                };
                sections.insert(scoped.0.to_string(), (scoped.1, reader.data().to_vec()));
            }
        }
        let tree = Tree::map(
            sections
                .iter()
                .map(|(name, (_, bytes))| {
                    (
                        name.as_bytes().to_vec(),
                        Arc::new(Tree::leaf(bytes.clone())),
                    )
                })
                .collect::<Vec<_>>(),
        );
        Metadata {
            tree: Arc::new(tree),
            visibility: sections
                .into_iter()
                .map(|(name, (visibility, _))| (name, visibility))
                .collect(),
        }
    }
}

/// Parsed metadata by module hash; holds only modules some canister has installed.
#[derive(Default)]
pub struct MetadataCache {
    by_module: BTreeMap<[u8; 32], Arc<Metadata>>,
}

impl MetadataCache {
    /// The metadata of the module with `hash`, parsed from `module` on first use.
    pub fn get(&mut self, hash: [u8; 32], module: &[u8]) -> Arc<Metadata> {
        Arc::clone(
            self.by_module
                .entry(hash)
                .or_insert_with(|| Arc::new(Metadata::of_module(module))),
        )
    }

    /// Forgets every module not in `installed`.
    pub fn retain(&mut self, installed: &std::collections::BTreeSet<[u8; 32]>) {
        self.by_module.retain(|hash, _| installed.contains(hash));
    }

    /// The metadata of an installed module, if parsed.
    pub fn cached(&self, hash: &[u8; 32]) -> Option<&Arc<Metadata>> {
        self.by_module.get(hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_and_private_sections_are_found_and_others_ignored() {
        let mut module = wasm_encoder::Module::new();
        for (name, data) in [
            ("icp:public candid:service", &b"service : {}"[..]),
            ("icp:private secret", &b"s3cret"[..]),
            ("name", &b"not metadata"[..]),
            ("icp:other", &b"neither"[..]),
        ] {
            module.section(&wasm_encoder::CustomSection {
                name: name.into(),
                data: data.into(),
            });
        }
        let metadata = Metadata::of_module(&module.finish());
        assert_eq!(
            metadata.visibility.iter().collect::<Vec<_>>(),
            [
                (&"candid:service".to_string(), &Visibility::Public),
                (&"secret".to_string(), &Visibility::Private),
            ]
        );
        let witness = metadata.tree.full();
        assert_eq!(
            witness.lookup_path([b"secret".as_ref()]),
            ic_certification::LookupResult::Found(b"s3cret")
        );
        assert!(Metadata::of_module(b"not wasm").visibility.is_empty());
    }
}
