#![allow(missing_docs)]
use std::net::SocketAddr;
pub struct MessagingDemo {
    addr: SocketAddr,
}
impl MessagingDemo {
    pub fn start(addr: SocketAddr) -> std::io::Result<MessagingDemo> {
        Ok(MessagingDemo { addr })
    }
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn join(self) {}
}
