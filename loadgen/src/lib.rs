//! Open-loop HTTP load generator that counts every request's outcome.
//!
//! Open loop: request `i` is launched at `start + i / rate` whether or not earlier requests
//! finished, so slow or failing backends do not slow the load down (a closed loop would hide
//! failures by sending less). Each request ends in exactly one [`Outcome`]; the [`Summary`]
//! adds them up and serializes to JSON.
//!
//! Targets are base URLs (`http://127.0.0.1:8080`) in a shared [`Targets`] set; requests go
//! round-robin to the active ones. A test can switch a target off when its backend stops being
//! ready, the way kube-proxy stops sending new connections to a pod that left the endpoints.
//! With keep-alive, pooled connections to a switched-off target stay open but receive no new
//! requests.
//!
//! Three [`Protocol`]s cover what real clients do: a new HTTP/1.1 connection per request, an
//! HTTP/1.1 keep-alive pool (most HTTP libraries), and HTTP/2 cleartext over a few multiplexed
//! connections per target (gRPC-style channels, [`crate::h2chan`]), which are redialed after a
//! GOAWAY. For HTTP/2 the summary also counts connections opened, ended and sent a GOAWAY, so a
//! test can tell "no loss because the drain was graceful" from "no loss because nothing happened".

mod config;
pub mod h2chan;
pub mod h2frames;
mod open_loop;
mod outcome;
mod reuse;
mod running;
mod summary;
mod targets;
mod transport;

pub use config::{LoadConfig, Protocol, SlowMix};
pub use open_loop::{LoadHandle, is_slow, run, spawn};
pub use outcome::{Outcome, classify};
pub use running::{Running, to_the_end};
pub use summary::{Latency, Summary};
pub use targets::Targets;
pub use transport::authority;
