//! gRPC wire types and service stubs of flowsynth, generated from `proto/flowsynth.proto`.
//! Nothing but generated code lives here, so both sides of the wire depend on one definition.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("flowsynth.v1");
}

pub use v1::*;
