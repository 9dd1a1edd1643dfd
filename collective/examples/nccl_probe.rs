//! Says whether this host can run the NCCL collective and why not: which library files were
//! found or tried, NCCL's version, and whether a unique id can be created (no GPU needed for
//! that). Run it on a GPU host before a multi-GPU job:
//!
//! ```text
//! cargo run --release -p flowsynth-collective --example nccl_probe
//! FLOWSYNTH_NCCL_LIB=/venv/lib/python3.12/site-packages/nvidia/nccl/lib/libnccl.so.2 ./nccl_probe
//! ```

use std::process::ExitCode;

use flowsynth_collective::{Buffer, Collective, DType, Membership, Nccl};

fn main() -> ExitCode {
    if let Some(reason) = Nccl::unavailable_reason() {
        println!("NCCL unavailable: {reason}");
        return ExitCode::FAILURE;
    }
    match Nccl::version() {
        Ok(v) => println!("NCCL loaded, version code {v}"),
        Err(e) => println!("NCCL loaded, but ncclGetVersion failed: {e}"),
    }
    let id = match Nccl::unique_id() {
        Ok(id) => {
            println!("ncclGetUniqueId: ok ({} bytes)", id.0.len());
            id
        }
        Err(e) => {
            println!("ncclGetUniqueId failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A communicator of one rank on cuda:0 (needs a GPU), and a host buffer it must refuse.
    let me = Membership {
        job_id: "probe".into(),
        auth_token: String::new(),
        generation: 0,
        rank: 0,
        world_size: 1,
    };
    match Nccl::new(me, &id, 0) {
        Ok(mut comm) => {
            println!("ncclCommInitRank on cuda:0: ok");
            let refused = comm.all_reduce_sum(Buffer::F32(&mut [1.0]));
            println!("host buffer refused: {}", refused.is_err());
            let empty = comm.all_reduce_sum(Buffer::Device {
                ptr: 0,
                len: 0,
                dtype: DType::F32,
            });
            println!("empty device buffer: {empty:?}");
        }
        Err(e) => println!("ncclCommInitRank on cuda:0 failed: {e}"),
    }
    ExitCode::SUCCESS
}
