//! What the fuzz tests share: byte mutations of valid inputs.

use proptest::prelude::*;
use proptest::sample::Index;

/// Bytes a JSON or protobuf parser treats specially, so mutations reach its edge cases.
const INTERESTING: &[u8] = b"{}[]\",:\n\r\\ 0123456789.eE+-\x00\x7f\x80\xff";

/// One edit of a byte string.
#[derive(Debug, Clone)]
pub enum Mutation {
    Flip(Index, u8),
    Insert(Index, u8),
    Interesting(Index, Index),
    Delete(Index),
    Truncate(Index),
    /// Copies a slice (start, length) to another place.
    Splice(Index, Index, Index),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, b)| Mutation::Interesting(i, b)),
        any::<Index>().prop_map(Mutation::Delete),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(a, b, c)| Mutation::Splice(a, b, c)),
    ]
}

/// Applies `edits` in order.
pub fn mutate(mut bytes: Vec<u8>, edits: &[Mutation]) -> Vec<u8> {
    for e in edits {
        let n = bytes.len();
        match e {
            Mutation::Flip(i, bit) if n > 0 => bytes[i.index(n)] ^= 1 << bit,
            Mutation::Insert(i, b) => bytes.insert(i.index(n + 1), *b),
            Mutation::Interesting(i, b) if n > 0 => {
                bytes[i.index(n)] = INTERESTING[b.index(INTERESTING.len())];
            }
            Mutation::Delete(i) if n > 0 => {
                bytes.remove(i.index(n));
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(n + 1)),
            Mutation::Splice(from, len, to) if n > 0 => {
                let start = from.index(n);
                let end = start + len.index((n - start).min(64) + 1);
                let piece = bytes[start..end].to_vec();
                let at = to.index(n + 1);
                bytes.splice(at..at, piece);
            }
            _ => {}
        }
    }
    bytes
}
