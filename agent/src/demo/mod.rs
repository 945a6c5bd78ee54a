//! The bundled targets: `murmur demo-server http` and `murmur demo-server messaging`.

pub mod http;
pub mod messaging;
