//! The messaging scenario (amoc Livebook demo).
