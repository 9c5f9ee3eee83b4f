//! What the measurement tools share: a minimal HTTP/1.1 client over a plain
//! tokio socket ([`client`]) and readers of a process's memory and CPU time
//! in `/proc` ([`procfs`]).

pub mod client;
pub mod procfs;
