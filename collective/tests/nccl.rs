//! NCCL on a host without it (the CI machines): a clear "unavailable", never a panic.
//! On a CUDA host with NCCL the same calls must agree with `available()`.

use flowsynth_collective::{Error, Membership, Nccl, NcclUniqueId};

fn member() -> Membership {
    Membership {
        job_id: "job".into(),
        auth_token: "t".into(),
        generation: 1,
        rank: 0,
        world_size: 1,
    }
}

#[test]
fn availability_and_its_reason_agree() {
    assert_eq!(Nccl::available(), Nccl::unavailable_reason().is_none());
    // Asking twice is cheap and stable (the outcome of loading is cached).
    assert_eq!(Nccl::available(), Nccl::available());
}

#[test]
fn without_nccl_every_entry_point_returns_unavailable() {
    if Nccl::available() {
        eprintln!("NCCL is loadable on this host; nothing to check here");
        return;
    }
    let reason = Nccl::unavailable_reason().expect("a reason");
    assert!(
        reason.contains("FLOWSYNTH_NCCL_LIB"),
        "the reason says how to point at NCCL: {reason}"
    );
    let err = Nccl::unique_id().expect_err("no NCCL, no id");
    assert!(matches!(err, Error::NcclUnavailable { .. }), "{err}");
    let err =
        Nccl::new(member(), &NcclUniqueId(vec![0; 128]), 0).expect_err("no NCCL, no communicator");
    assert!(matches!(err, Error::NcclUnavailable { .. }), "{err}");
    assert!(Nccl::version().is_err());
}

#[test]
fn nccl_is_unavailable_on_this_cpu_only_machine() {
    // CI machines have no GPU stack. Set FLOWSYNTH_EXPECT_NCCL=1 on a CUDA host to invert.
    let expect = std::env::var("FLOWSYNTH_EXPECT_NCCL").is_ok_and(|v| v == "1");
    assert_eq!(
        Nccl::available(),
        expect,
        "{:?}",
        Nccl::unavailable_reason()
    );
}
