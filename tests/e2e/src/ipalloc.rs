//! Loopback addresses for pods: 127.0.0.2, 127.0.0.3, … (Linux routes all of 127/8 to lo).
//!
//! An address is held by an exclusive `flock` on a per-address lock file, so that several
//! kubelets (in one process or in parallel test processes) never hand out the same one, and
//! a crashed process's addresses are free again at once. The lowest free address is taken,
//! so addresses are recycled.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// The address that names of services without ready pods point at: nothing listens there,
/// so a connection is refused at once (as for a ClusterIP without endpoints), and the name
/// never falls through to a DNS server outside this machine.
pub const NO_ENDPOINTS_IP: Ipv4Addr = Ipv4Addr::new(127, 255, 255, 254);

/// A pod address held until drop.
#[derive(Debug)]
pub struct LoopbackIp {
    ip: Ipv4Addr,
    _lock: std::fs::File,
}

impl LoopbackIp {
    /// The address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Takes the lowest free address from 127.0.0.2 on.
    pub fn allocate() -> std::io::Result<LoopbackIp> {
        let dir = lock_dir();
        std::fs::create_dir_all(&dir)?;
        for n in 2u32..(250 * 256) {
            let (b, c) = ((n >> 8) as u8, (n & 0xff) as u8);
            if c == 0 || c == 255 {
                continue;
            }
            let ip = Ipv4Addr::new(127, 0, b, c);
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(ip.to_string()))?;
            // SAFETY: flock on an fd we own.
            let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r == 0 {
                return Ok(LoopbackIp { ip, _lock: f });
            }
        }
        Err(std::io::Error::other("no free loopback address for a pod"))
    }
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("murmuration-e2e-pod-ips")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_and_recycled() {
        let a = LoopbackIp::allocate().unwrap();
        let b = LoopbackIp::allocate().unwrap();
        assert_ne!(a.ip(), b.ip());
        let ip_a = a.ip();
        drop(a);
        let c = LoopbackIp::allocate().unwrap();
        assert!(c.ip() <= ip_a || c.ip() != b.ip());
        assert_ne!(c.ip(), b.ip());
    }
}
