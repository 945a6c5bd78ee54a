//! The declarative HTTP scenario.
