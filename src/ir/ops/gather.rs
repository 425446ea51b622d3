//! `gather` (and `embedding`): entries of a table picked by integer ids.

/// `gather(table, ids)`: rows of `table` along `axis` picked by integer
/// ids; out shape = table[..axis] ++ ids ++ table[axis+1..].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Gather {
    pub axis: usize,
}
