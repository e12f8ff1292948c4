//! Resource quantities in fixed point, as on the wire: never floats in accounting.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Units per whole resource (1 CPU = 10,000 units; a quarter GPU = 2,500).
pub const UNITS_PER_WHOLE: i64 = 10_000;

/// Well-known resource names.
pub mod names {
    /// Logical CPUs.
    pub const CPU: &str = "CPU";
    /// GPU instances.
    pub const GPU: &str = "GPU";
    /// Memory in bytes.
    pub const MEMORY: &str = "memory";
    /// GPU memory in bytes (optional; keeps fractional GPU users from overcommitting it).
    pub const GPU_MEMORY: &str = "gpu_memory";
}

/// A resource amount in units of 1/10,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Quantity(i64);

/// Error for a quantity that cannot be represented.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid amount {value} of resource {name:?}: {reason}")]
pub struct InvalidQuantity {
    /// Resource name.
    pub name: String,
    /// The offending value.
    pub value: f64,
    /// Why it is invalid.
    pub reason: &'static str,
}

impl Quantity {
    /// Zero.
    pub const ZERO: Self = Self(0);

    /// From raw units.
    pub const fn from_units(units: i64) -> Self {
        Self(units)
    }

    /// A whole number of resources.
    pub const fn whole(count: i64) -> Self {
        Self(count * UNITS_PER_WHOLE)
    }

    /// From a user-facing decimal (e.g. `0.25`), rounded to the nearest unit.
    pub fn from_f64(name: &str, value: f64) -> Result<Self, InvalidQuantity> {
        let invalid = |reason| InvalidQuantity {
            name: name.to_string(),
            value,
            reason,
        };
        if !value.is_finite() {
            return Err(invalid("not a finite number"));
        }
        if value < 0.0 {
            return Err(invalid("must not be negative"));
        }
        let units = (value * UNITS_PER_WHOLE as f64).round();
        if units > i64::MAX as f64 / 2.0 {
            return Err(invalid("too large"));
        }
        if units == 0.0 && value > 0.0 {
            return Err(invalid("smaller than the resolution of 0.0001"));
        }
        Ok(Self(units as i64))
    }

    /// Raw units.
    pub const fn units(self) -> i64 {
        self.0
    }

    /// As a decimal, for display only.
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / UNITS_PER_WHOLE as f64
    }

    /// True for a whole number of resources.
    pub const fn is_whole(self) -> bool {
        self.0 % UNITS_PER_WHOLE == 0
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_whole() {
            write!(f, "{}", self.0 / UNITS_PER_WHOLE)
        } else {
            let text = format!("{:.4}", self.as_f64());
            f.write_str(text.trim_end_matches('0'))
        }
    }
}

impl std::ops::Add for Quantity {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        Self(self.0 + other.0)
    }
}

impl std::ops::Sub for Quantity {
    type Output = Self;
    fn sub(self, other: Self) -> Self {
        Self(self.0 - other.0)
    }
}

/// Named quantities (zero entries are dropped).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourceSet(BTreeMap<String, Quantity>);

impl ResourceSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `amount` (removing it when zero).
    pub fn set(&mut self, name: impl Into<String>, amount: Quantity) -> &mut Self {
        let name = name.into();
        if amount == Quantity::ZERO {
            self.0.remove(&name);
        } else {
            self.0.insert(name, amount);
        }
        self
    }

    /// Builder form of [`set`](Self::set).
    pub fn with(mut self, name: impl Into<String>, amount: Quantity) -> Self {
        self.set(name, amount);
        self
    }

    /// The amount of `name` (zero if absent).
    pub fn get(&self, name: &str) -> Quantity {
        self.0.get(name).copied().unwrap_or_default()
    }

    /// Every non-zero entry, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Quantity)> {
        self.0.iter().map(|(name, &amount)| (name.as_str(), amount))
    }

    /// True if every amount in `request` is available here.
    pub fn contains(&self, request: &ResourceSet) -> bool {
        request
            .iter()
            .all(|(name, amount)| self.get(name) >= amount)
    }

    /// The first resource of `request` that is short here, with what is missing.
    pub fn shortfall(&self, request: &ResourceSet) -> Option<(String, Quantity, Quantity)> {
        request
            .iter()
            .find(|&(name, amount)| self.get(name) < amount)
            .map(|(name, amount)| (name.to_string(), amount, self.get(name)))
    }

    /// Adds `other` to this set.
    pub fn add(&mut self, other: &ResourceSet) {
        for (name, amount) in other.iter() {
            let sum = self.get(name) + amount;
            self.set(name, sum);
        }
    }

    /// Subtracts `other`; the caller checked [`contains`](Self::contains).
    pub fn subtract(&mut self, other: &ResourceSet) {
        for (name, amount) in other.iter() {
            let difference = self.get(name) - amount;
            debug_assert!(difference >= Quantity::ZERO, "{name} would go negative");
            self.set(name, difference);
        }
    }

    /// The wire form: raw units by name.
    pub fn to_proto(&self) -> HashMap<String, i64> {
        self.0
            .iter()
            .map(|(name, q)| (name.clone(), q.units()))
            .collect()
    }

    /// From the wire form.
    pub fn from_proto(map: &HashMap<String, i64>) -> Self {
        let mut set = Self::new();
        for (name, &units) in map {
            set.set(name.clone(), Quantity::from_units(units));
        }
        set
    }
}

impl fmt::Display for ResourceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (name, amount) in self.iter() {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            if name == names::MEMORY || name == names::GPU_MEMORY {
                write!(
                    f,
                    "{name}: {:.1} GiB",
                    amount.as_f64() / (1u64 << 30) as f64
                )?;
            } else {
                write!(f, "{name}: {amount}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decimals_become_exact_units() {
        assert_eq!(Quantity::from_f64("GPU", 0.25).unwrap().units(), 2_500);
        assert_eq!(
            Quantity::from_f64("GPU", 0.1).unwrap() + Quantity::from_f64("GPU", 0.2).unwrap(),
            Quantity::from_f64("GPU", 0.3).unwrap(),
            "no float drift"
        );
        assert_eq!(Quantity::from_f64("CPU", 2.0).unwrap().to_string(), "2");
        assert_eq!(Quantity::from_f64("GPU", 0.25).unwrap().to_string(), "0.25");
        let err = Quantity::from_f64("GPU", -1.0).unwrap_err().to_string();
        assert!(err.contains("\"GPU\"") && err.contains("negative"), "{err}");
        assert!(Quantity::from_f64("x", 0.00001).is_err());
    }

    #[test]
    fn shortfall_names_the_missing_resource() {
        let available = ResourceSet::new()
            .with("CPU", Quantity::whole(2))
            .with("GPU", Quantity::from_units(5_000));
        let request = ResourceSet::new()
            .with("CPU", Quantity::whole(1))
            .with("GPU", Quantity::whole(1));
        assert!(!available.contains(&request));
        assert_eq!(
            available.shortfall(&request),
            Some((
                "GPU".into(),
                Quantity::whole(1),
                Quantity::from_units(5_000)
            ))
        );
    }

    proptest! {
        #[test]
        fn add_then_subtract_round_trips(a in proptest::collection::btree_map("[a-c]", 0i64..100_000, 0..3),
                                          b in proptest::collection::btree_map("[a-c]", 0i64..100_000, 0..3)) {
            let to_set = |m: &BTreeMap<String, i64>| {
                let mut s = ResourceSet::new();
                for (k, v) in m { s.set(k.clone(), Quantity::from_units(*v)); }
                s
            };
            let (a, b) = (to_set(&a), to_set(&b));
            let mut sum = a.clone();
            sum.add(&b);
            prop_assert!(sum.contains(&b) && sum.contains(&a));
            sum.subtract(&b);
            prop_assert_eq!(&sum, &a);
            prop_assert_eq!(ResourceSet::from_proto(&a.to_proto()), a);
        }
    }
}
