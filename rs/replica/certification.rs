//! The certified state tree and its witnesses (interface spec, "Certification").
//!
//! A [`Tree`] is the labeled tree of the spec (`time`, `request_status/<id>/…`,
//! `canister/<id>/…`, `subnet/<id>/…`, `canister_ranges/<id>/…`) with every node's hash
//! cached, so that the node certifies a round by hashing only what changed: a
//! `request_status` entry is built and hashed once when its message finishes and then shared
//! (`Arc`) by every later round's tree.
//!
//! A map's hash is the hash of a binary tree of forks over its children in label order,
//! split in the middle at every level (`range_hash`); a witness ([`Tree::witness`]) is that
//! same shape with every range that no requested path enters replaced by a pruned node of
//! its hash, so a witness always has the root hash of the full tree. A path that names an
//! absent label keeps its neighbours' labels (their contents pruned): what a client needs to
//! see the label provably absent rather than pruned (ic-agent treats a pruned
//! `request_status/<id>` as an error and an absent one as "keep polling").
//!
//! Cost: hashing a map of n children is n labeled hashes and n − 1 forks; a witness of k paths
//! into it rehashes the pruned ranges, O(n) in the worst case.

use std::sync::Arc;

use ic_certification::hash_tree::{
    HashTree, empty, fork, fork_hash, label, labeled_hash, leaf, leaf_hash, pruned,
};

/// A SHA-256 node hash.
pub type Hash = [u8; 32];

/// A labeled tree with cached hashes.
#[derive(Debug, Clone)]
pub struct Tree {
    hash: Hash,
    node: Node,
}

#[derive(Debug, Clone)]
enum Node {
    Leaf(Vec<u8>),
    /// Children in strictly increasing label order.
    Map(Vec<(Vec<u8>, Arc<Tree>)>),
}

fn empty_hash() -> Hash {
    empty::<Vec<u8>>().digest()
}

/// The hash of the fork tree over `children` (see the module docs).
fn range_hash(children: &[(Vec<u8>, Arc<Tree>)]) -> Hash {
    match children {
        [] => empty_hash(),
        [(label, child)] => labeled_hash(label, &child.hash),
        _ => {
            let (left, right) = children.split_at(children.len() / 2);
            fork_hash(&range_hash(left), &range_hash(right))
        }
    }
}

/// What a witness needs of one child of a map.
#[derive(Clone)]
enum Need<'p> {
    Nothing,
    /// Its label only (a neighbour proving another label absent).
    Label,
    /// The rest of these paths under it.
    Paths(Vec<&'p [Vec<u8>]>),
}

impl Tree {
    pub fn leaf(bytes: Vec<u8>) -> Tree {
        Tree {
            hash: leaf_hash(&bytes),
            node: Node::Leaf(bytes),
        }
    }

    /// A map node; later duplicates of a label replace earlier ones.
    pub fn map(children: impl IntoIterator<Item = (Vec<u8>, Arc<Tree>)>) -> Tree {
        let sorted: std::collections::BTreeMap<Vec<u8>, Arc<Tree>> = children.into_iter().collect();
        let children: Vec<(Vec<u8>, Arc<Tree>)> = sorted.into_iter().collect();
        Tree {
            hash: range_hash(&children),
            node: Node::Map(children),
        }
    }

    pub fn hash(&self) -> Hash {
        self.hash
    }

    /// The whole subtree, nothing pruned.
    pub fn full(&self) -> HashTree<Vec<u8>> {
        match &self.node {
            Node::Leaf(bytes) => leaf(bytes.clone()),
            Node::Map(children) => Self::build(children, &mut |child, _| child.full(), None),
        }
    }

    /// The tree pruned to `paths` (see the module docs): its digest is [`Self::hash`]. A path
    /// that ends at a map includes the whole map; one that continues past a leaf stops there.
    pub fn witness(&self, paths: &[&[Vec<u8>]]) -> HashTree<Vec<u8>> {
        if paths.is_empty() {
            return pruned(self.hash);
        }
        if paths.iter().any(|path| path.is_empty()) {
            return self.full();
        }
        let children = match &self.node {
            Node::Leaf(bytes) => return leaf(bytes.clone()),
            Node::Map(children) => children,
        };
        if children.is_empty() {
            return empty();
        }
        let mut needs = vec![Need::Nothing; children.len()];
        for path in paths {
            let Some((first, rest)) = path.split_first() else {
                continue;
            };
            match children.binary_search_by(|(label, _)| label.as_slice().cmp(first)) {
                Ok(index) => {
                    if let Some(need) = needs.get_mut(index) {
                        match need {
                            Need::Paths(rests) => rests.push(rest),
                            _ => *need = Need::Paths(vec![rest]),
                        }
                    }
                }
                Err(index) => {
                    // Absent: its neighbours' labels prove it.
                    for neighbour in [index.checked_sub(1), Some(index)].into_iter().flatten() {
                        if let Some(need @ Need::Nothing) = needs.get_mut(neighbour) {
                            *need = Need::Label;
                        }
                    }
                }
            }
        }
        Self::build(
            children,
            &mut |child, need| match need {
                Need::Nothing | Need::Label => pruned(child.hash),
                Need::Paths(rests) => child.witness(rests),
            },
            Some(&needs),
        )
    }

    /// The fork tree over `children`, each child given by `content`; with `needs`, ranges
    /// that need nothing are pruned.
    fn build(
        children: &[(Vec<u8>, Arc<Tree>)],
        content: &mut dyn FnMut(&Tree, &Need<'_>) -> HashTree<Vec<u8>>,
        needs: Option<&[Need<'_>]>,
    ) -> HashTree<Vec<u8>> {
        if let Some(needs) = needs
            && needs.iter().all(|need| matches!(need, Need::Nothing))
        {
            return pruned(range_hash(children));
        }
        match children {
            [] => empty(),
            [(name, child)] => {
                let need = needs.and_then(|n| n.first()).unwrap_or(&Need::Label);
                label(name.clone(), content(child, need))
            }
            _ => {
                let middle = children.len() / 2;
                let (left, right) = children.split_at(middle);
                let (left_needs, right_needs) = match needs {
                    Some(needs) => {
                        let (l, r) = needs.split_at(middle.min(needs.len()));
                        (Some(l), Some(r))
                    }
                    None => (None, None),
                };
                fork(
                    Self::build(left, content, left_needs),
                    Self::build(right, content, right_needs),
                )
            }
        }
    }
}

/// A `nat` leaf as the state tree encodes numbers: unsigned LEB128.
pub fn leb128(value: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    let mut value = value;
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ic_certification::LookupResult;

    fn sample() -> Tree {
        let entry = |n: u8| {
            (
                vec![n],
                Arc::new(Tree::map([
                    (
                        b"status".to_vec(),
                        Arc::new(Tree::leaf(b"replied".to_vec())),
                    ),
                    (b"reply".to_vec(), Arc::new(Tree::leaf(vec![n; 3]))),
                ])),
            )
        };
        Tree::map([
            (
                b"request_status".to_vec(),
                Arc::new(Tree::map((0..9).map(|n| entry(n * 2)))),
            ),
            (b"time".to_vec(), Arc::new(Tree::leaf(leb128(42)))),
        ])
    }

    #[test]
    fn the_full_tree_hashes_as_the_spec_and_witnesses_keep_the_root_hash() {
        let tree = sample();
        assert_eq!(tree.full().digest(), tree.hash());
        for paths in [
            vec![vec![b"time".to_vec()]],
            vec![vec![b"request_status".to_vec(), vec![4]]],
            vec![
                vec![b"request_status".to_vec(), vec![5]],
                vec![b"time".to_vec()],
            ],
            vec![vec![b"nothing".to_vec()]],
        ] {
            let refs: Vec<&[Vec<u8>]> = paths.iter().map(Vec::as_slice).collect();
            assert_eq!(tree.witness(&refs).digest(), tree.hash(), "{paths:?}");
        }
    }

    #[test]
    fn a_witness_proves_present_values_and_absent_labels() {
        let tree = sample();
        let paths = [
            vec![b"request_status".to_vec(), vec![4]],
            vec![b"request_status".to_vec(), vec![5]],
            vec![b"request_status".to_vec(), vec![0xff]],
            vec![b"request_status".to_vec(), vec![]],
            vec![b"time".to_vec()],
        ];
        let refs: Vec<&[Vec<u8>]> = paths.iter().map(Vec::as_slice).collect();
        let witness = tree.witness(&refs);
        let found = witness.lookup_path([b"request_status".as_ref(), &[4], b"status"]);
        assert_eq!(found, LookupResult::Found(b"replied"));
        assert_eq!(
            witness.lookup_path([b"time".as_ref()]),
            LookupResult::Found(&[42])
        );
        for absent in [&[5u8][..], &[0xff], &[]] {
            assert_eq!(
                witness.lookup_path([b"request_status".as_ref(), absent, b"status"]),
                LookupResult::Absent,
                "{absent:?}"
            );
        }
        // Not asked for: pruned, so unknown rather than absent.
        assert_eq!(
            witness.lookup_path([b"request_status".as_ref(), &[10], b"status"]),
            LookupResult::Unknown
        );
    }

    #[test]
    fn leb128_matches_the_spec_examples() {
        assert_eq!(leb128(0), [0]);
        assert_eq!(leb128(127), [0x7f]);
        assert_eq!(leb128(624_485), [0xe5, 0x8e, 0x26]);
    }
}
