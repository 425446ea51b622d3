//! Dimensions that may be symbolic.
//!
//! A dimension is a monomial: a known factor times a product of symbols
//! (`784`, `batch`, `12*seq`, `batch*seq`). Monomials are closed under the
//! products that reshape needs (flattening `[batch, seq, 384]` to
//! `[batch*seq, 384]`), compare structurally, and become plain integers once
//! every symbol is bound.

use std::collections::BTreeMap;
use std::fmt;

/// Values for symbols, e.g. `batch = 8`.
pub type Bindings = BTreeMap<String, usize>;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dim {
    factor: usize,
    /// Symbol names, sorted, with repetition (`seq*seq` is `["seq", "seq"]`).
    symbols: Vec<String>,
}

impl Dim {
    pub fn known(n: usize) -> Dim {
        Dim {
            factor: n,
            symbols: Vec::new(),
        }
    }

    pub fn symbol(name: &str) -> Dim {
        Dim {
            factor: 1,
            symbols: vec![name.to_string()],
        }
    }

    /// The size when no symbol is left.
    pub fn as_known(&self) -> Option<usize> {
        self.symbols.is_empty().then_some(self.factor)
    }

    pub fn is_one(&self) -> bool {
        self.as_known() == Some(1)
    }

    pub fn symbols(&self) -> &[String] {
        &self.symbols
    }

    pub fn factor(&self) -> usize {
        self.factor
    }

    /// The product, or `None` when the known factors overflow `usize`
    /// (a wrapped factor would silently describe a tiny tensor).
    pub fn checked_mul(&self, other: &Dim) -> Option<Dim> {
        let mut symbols = self.symbols.clone();
        symbols.extend(other.symbols.iter().cloned());
        symbols.sort();
        Some(Dim {
            factor: self.factor.checked_mul(other.factor)?,
            symbols,
        })
    }

    /// `self / other` when the division is exact as monomials.
    pub fn div(&self, other: &Dim) -> Option<Dim> {
        if other.factor == 0 || !self.factor.is_multiple_of(other.factor) {
            return None;
        }
        let mut symbols = self.symbols.clone();
        for s in &other.symbols {
            let pos = symbols.iter().position(|x| x == s)?;
            symbols.remove(pos);
        }
        Some(Dim {
            factor: self.factor / other.factor,
            symbols,
        })
    }

    /// Replaces bound symbols by their values; unbound symbols stay.
    /// `None` when the product overflows `usize`.
    pub fn substitute(&self, bindings: &Bindings) -> Option<Dim> {
        let mut factor = self.factor;
        let mut symbols = Vec::new();
        for s in &self.symbols {
            match bindings.get(s) {
                Some(v) => factor = factor.checked_mul(*v)?,
                None => symbols.push(s.clone()),
            }
        }
        Some(Dim { factor, symbols })
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::known(n)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.symbols.is_empty() {
            return write!(f, "{}", self.factor);
        }
        if self.factor != 1 {
            write!(f, "{}*", self.factor)?;
        }
        write!(f, "{}", self.symbols.join("*"))
    }
}

impl fmt::Debug for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The product of all dims of a shape; `None` when the known factors overflow.
pub fn product(dims: &[Dim]) -> Option<Dim> {
    dims.iter()
        .try_fold(Dim::known(1), |acc, d| acc.checked_mul(d))
}

/// The largest byte count lamina lets one tensor have: Rust's allocation
/// limit, which is also the largest size numpy can describe.
pub const MAX_TENSOR_BYTES: usize = isize::MAX as usize;

/// Bytes of a tensor of this shape and element size, or `None` when the
/// shape is not representable. Zero dims are skipped in the overflow check,
/// as numpy does, so `[0, 2^63]` is rejected too: no file format or
/// allocator can describe it, even though it holds no element.
pub fn checked_bytes(shape: &[usize], elem_bytes: usize) -> Option<usize> {
    let nonzero = shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(elem_bytes, |acc, &d| acc.checked_mul(d))
        .filter(|&b| b <= MAX_TENSOR_BYTES)?;
    Some(if shape.contains(&0) { 0 } else { nonzero })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monomials_multiply_divide_and_bind() {
        let bs = Dim::symbol("batch")
            .checked_mul(&Dim::symbol("seq"))
            .and_then(|d| d.checked_mul(&Dim::known(12)))
            .unwrap();
        assert_eq!(bs.to_string(), "12*batch*seq");
        assert_eq!(bs.div(&Dim::symbol("seq")).unwrap().to_string(), "12*batch");
        assert!(bs.div(&Dim::symbol("heads")).is_none());
        assert!(Dim::known(10).div(&Dim::known(3)).is_none());
        let mut b = Bindings::new();
        b.insert("batch".into(), 2);
        b.insert("seq".into(), 5);
        assert_eq!(bs.substitute(&b).unwrap().as_known(), Some(120));
    }

    #[test]
    fn products_that_overflow_are_none_not_wrapped() {
        let big = Dim::known(1 << 32);
        assert!(big.checked_mul(&big).is_none());
        let ab = Dim::symbol("a").checked_mul(&Dim::symbol("b")).unwrap();
        let mut b = Bindings::new();
        b.insert("a".into(), 1 << 32);
        b.insert("b".into(), 1 << 32);
        assert!(ab.substitute(&b).is_none());
        assert!(product(&[big.clone(), big]).is_none());
        assert_eq!(checked_bytes(&[2, 3], 4), Some(24));
        assert_eq!(checked_bytes(&[0, 5], 4), Some(0));
        assert_eq!(checked_bytes(&[0, 1 << 63], 1), None);
        assert_eq!(checked_bytes(&[1 << 62], 4), None);
    }
}
