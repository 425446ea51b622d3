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

    pub fn mul(&self, other: &Dim) -> Dim {
        let mut symbols = self.symbols.clone();
        symbols.extend(other.symbols.iter().cloned());
        symbols.sort();
        Dim {
            factor: self.factor * other.factor,
            symbols,
        }
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
    pub fn substitute(&self, bindings: &Bindings) -> Dim {
        let mut factor = self.factor;
        let mut symbols = Vec::new();
        for s in &self.symbols {
            match bindings.get(s) {
                Some(v) => factor *= v,
                None => symbols.push(s.clone()),
            }
        }
        Dim { factor, symbols }
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

/// The product of all dims of a shape.
pub fn product(dims: &[Dim]) -> Dim {
    dims.iter().fold(Dim::known(1), |acc, d| acc.mul(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monomials_multiply_divide_and_bind() {
        let bs = Dim::symbol("batch")
            .mul(&Dim::symbol("seq"))
            .mul(&Dim::known(12));
        assert_eq!(bs.to_string(), "12*batch*seq");
        assert_eq!(bs.div(&Dim::symbol("seq")).unwrap().to_string(), "12*batch");
        assert!(bs.div(&Dim::symbol("heads")).is_none());
        assert!(Dim::known(10).div(&Dim::known(3)).is_none());
        let mut b = Bindings::new();
        b.insert("batch".into(), 2);
        b.insert("seq".into(), 5);
        assert_eq!(bs.substitute(&b).as_known(), Some(120));
    }
}
