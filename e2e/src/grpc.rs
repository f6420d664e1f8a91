//! gRPC load: open-loop unary RPCs plus a few long server streams, over h2c channels that
//! redial on GOAWAY the way a gRPC channel does.
//!
//! gRPC is the hardest common client for a drain: every RPC of a client rides a few long-lived
//! HTTP/2 connections, so the only way to move it off a pod is a GOAWAY, and a server stream
//! can outlive any drain timeout. This module speaks the wire format by hand against the demo
//! app's `quiesce.demo.Demo` service (payloads are opaque bytes, no codegen): a message is a
//! 5-byte prefix and the bytes, the status is `grpc-status` in the trailers. An RPC is ok only
//! with HTTP 200, `grpc-status: 0`, and for a stream every one of the N messages asked for.
//!
//! The pure parts ([`frame`], [`Deframer`], [`grpc_status`], in `wire.rs`) are separate from the
//! I/O: `calls.rs` makes one call, `open_loop.rs` runs the load and `summary.rs` counts how the
//! calls ended.

mod calls;
mod open_loop;
mod summary;
mod wire;

pub use calls::{ECHO, STREAM, echo, health_check, stream};
pub use open_loop::{GrpcConfig, GrpcHandle, run, spawn};
pub use summary::{GrpcSummary, RpcCounts, RpcOutcome};
pub use wire::{Deframer, frame, grpc_status};
