//! The bundled targets: `murmur demo-server http`, `murmur demo-server messaging` and
//! `murmur demo-server websocket`.

pub mod http;
pub mod messaging;
pub mod websocket;
