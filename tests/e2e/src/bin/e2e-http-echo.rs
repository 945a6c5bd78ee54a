//! A tiny HTTP server for the e2e tests (stand-in for `murmur demo-server http`):
//! `e2e-http-echo --listen <ip:port>` answers `200 <hostname> <path>` on every path, one
//! thread per connection, HTTP/1.1 with `Connection: close`. `e2e-http-echo --die PATH
//! MESSAGE` writes MESSAGE to the existing file PATH and exits 3 (a container's last words).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

fn main() {
    let mut listen = "127.0.0.1:8080".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--listen" {
            listen = args.next().unwrap_or_else(|| usage());
        } else if let Some(v) = a.strip_prefix("--listen=") {
            listen = v.to_string();
        } else if a == "--die" {
            // `--die PATH MESSAGE`: the last words of a container, written where its
            // termination message is read from; then exit 3.
            let (Some(path), Some(message)) = (args.next(), args.next()) else {
                usage()
            };
            if let Err(e) = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|mut f| f.write_all(message.as_bytes()))
            {
                eprintln!("e2e-http-echo: cannot write {path}: {e}");
            }
            std::process::exit(3)
        } else {
            usage();
        }
    }
    let l = TcpListener::bind(&listen).unwrap_or_else(|e| {
        eprintln!("e2e-http-echo: cannot listen on {listen}: {e}");
        std::process::exit(1)
    });
    let name = std::env::var("HOSTNAME").unwrap_or_default();
    eprintln!("e2e-http-echo: listening on {listen}");
    for conn in l.incoming() {
        let Ok(mut s) = conn else { continue };
        let name = name.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(match s.try_clone() {
                Ok(c) => c,
                Err(_) => return,
            });
            let mut first = String::new();
            if r.read_line(&mut first).is_err() {
                return;
            }
            loop {
                let mut line = String::new();
                match r.read_line(&mut line) {
                    Ok(0) => break,
                    Ok(_) if line == "\r\n" || line == "\n" => break,
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
            let path = first.split_whitespace().nth(1).unwrap_or("/");
            let body = format!("{name} {path}\n");
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        });
    }
}

fn usage() -> ! {
    eprintln!("usage: e2e-http-echo --listen <ip:port> | --die <path> <message>");
    std::process::exit(2)
}
