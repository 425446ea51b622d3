//! `cast`: dtype conversion.

use super::DType;

/// Convert to `to`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cast {
    pub to: DType,
}
