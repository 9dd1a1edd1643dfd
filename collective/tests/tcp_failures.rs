//! How the TCP ring fails: handshake refusals, stale generations, aborts, silent and dead peers,
//! out-of-step ranks, sticky errors. Every wait here is short so a regression shows up as a
//! failure, not a hung test run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use flowsynth_collective::{
    Buffer, Collective, DType, Error, Membership, TcpConfig, TcpListenerHandle, TcpRing,
};

fn member(rank: usize, world: usize, generation: u32) -> Membership {
    Membership {
        job_id: "job-1".into(),
        auth_token: "token-1".into(),
        generation,
        rank,
        world_size: world,
    }
}

fn config(io_timeout_ms: u64, connect_timeout_ms: u64) -> TcpConfig {
    TcpConfig {
        io_timeout: Duration::from_millis(io_timeout_ms),
        connect_timeout: Duration::from_millis(connect_timeout_ms),
        ..TcpConfig::default()
    }
}

fn listeners(n: usize) -> (Vec<TcpListenerHandle>, Vec<String>) {
    let ls: Vec<_> = (0..n)
        .map(|_| TcpListenerHandle::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let addrs = ls.iter().map(|l| l.local_addr().to_string()).collect();
    (ls, addrs)
}

fn flag() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

/// Connects all ranks of `members` concurrently (member i uses listener i).
fn connect_all(
    ls: &[TcpListenerHandle],
    peers: &[String],
    members: Vec<Membership>,
    cfg: TcpConfig,
) -> Vec<Result<TcpRing, Error>> {
    thread::scope(|s| {
        let hs: Vec<_> = ls
            .iter()
            .zip(members)
            .map(|(l, m)| {
                let cfg = cfg.clone();
                s.spawn(move || TcpRing::connect(l, m, peers, cfg, flag()))
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    })
}

#[test]
fn wrong_auth_token_is_refused() {
    let (ls, peers) = listeners(2);
    let mut bad = member(0, 2, 1);
    bad.auth_token = "guessed".into();
    let results = connect_all(
        &ls,
        &peers,
        vec![bad, member(1, 2, 1)],
        config(5_000, 1_500),
    );
    let errors: Vec<Error> = results
        .into_iter()
        .map(|r| r.expect_err("a ring with a wrong token must not form"))
        .collect();
    // Each side refuses the other's dial. Whoever is told first stops; the other one goes on
    // waiting for a valid peer until its connect timeout and then says what it refused.
    assert!(
        errors.iter().any(|e| matches!(e, Error::Rejected { .. })),
        "{errors:?}"
    );
    for err in &errors {
        let text = err.to_string();
        assert!(text.contains("wrong auth token"), "{text}");
        // The tokens themselves never appear in an error.
        assert!(
            !text.contains("token-1") && !text.contains("guessed"),
            "{text}"
        );
    }
}

#[test]
fn wrong_job_id_is_refused() {
    let (ls, peers) = listeners(2);
    let mut other = member(1, 2, 1);
    other.job_id = "job-2".into();
    let results = connect_all(
        &ls,
        &peers,
        vec![member(0, 2, 1), other],
        config(5_000, 1_500),
    );
    for r in results {
        let err = r.expect_err("rings of two jobs must not pair");
        assert!(
            err.to_string().contains("job-2") && err.to_string().contains("job-1"),
            "{err}"
        );
    }
}

#[test]
fn stale_generation_connector_is_refused_and_the_current_ring_still_forms() {
    let (ls, peers) = listeners(2);
    // Rank 1 of generation 2 waits for its previous rank (rank 0).
    thread::scope(|s| {
        let rank1 = s.spawn(|| {
            TcpRing::connect(
                &ls[1],
                member(1, 2, 2),
                &peers,
                config(5_000, 10_000),
                flag(),
            )
        });
        // A leftover rank 0 of generation 1 (on another listener) dials rank 1 first.
        let (stale_l, _) = listeners(1);
        let started = Instant::now();
        let stale = TcpRing::connect(
            &stale_l[0],
            member(0, 2, 1),
            &peers,
            config(5_000, 3_000),
            flag(),
        )
        .expect_err("a stale rank must not join generation 2");
        assert!(matches!(stale, Error::Rejected { .. }), "{stale}");
        assert!(stale.to_string().contains("stale generation 1"), "{stale}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "refusal took {:?}",
            started.elapsed()
        );
        // The real rank 0 of generation 2 arrives afterwards and pairs.
        let mut rank0 = TcpRing::connect(
            &ls[0],
            member(0, 2, 2),
            &peers,
            config(5_000, 10_000),
            flag(),
        )
        .expect("current rank 0 connects");
        let mut rank1 = rank1
            .join()
            .expect("thread")
            .expect("rank 1 connects despite the stale dial");
        let t = s.spawn(move || {
            let mut b = [2.0f64, 3.0];
            rank1.all_reduce_sum(Buffer::F64(&mut b)).map(|()| b)
        });
        let mut a = [1.0f64, 1.0];
        rank0
            .all_reduce_sum(Buffer::F64(&mut a))
            .expect("all-reduce on the current ring");
        assert_eq!(a, [3.0, 4.0]);
        assert_eq!(
            t.join().expect("thread").expect("rank 1 all-reduce"),
            [3.0, 4.0]
        );
    });
}

#[test]
fn rank_lagging_a_generation_fails_and_the_ring_forms_when_it_catches_up() {
    let (ls, peers) = listeners(2);
    thread::scope(|s| {
        // Rank 1 is already at generation 3 and keeps dialling rank 0, which is still at 2.
        let rank1 = s.spawn(|| {
            TcpRing::connect(
                &ls[1],
                member(1, 2, 3),
                &peers,
                config(5_000, 10_000),
                flag(),
            )
        });
        let lagging = TcpRing::connect(
            &ls[0],
            member(0, 2, 2),
            &peers,
            config(5_000, 2_000),
            flag(),
        )
        .expect_err("generation 2 cannot pair with generation 3");
        assert!(
            lagging.to_string().contains("stale generation 2"),
            "{lagging}"
        );
        // Caught up: the same listener serves the new generation.
        let mut rank0 = TcpRing::connect(
            &ls[0],
            member(0, 2, 3),
            &peers,
            config(5_000, 10_000),
            flag(),
        )
        .expect("rank 0 at generation 3");
        let mut rank1 = rank1
            .join()
            .expect("thread")
            .expect("rank 1 waited for rank 0 to catch up");
        let t = s.spawn(move || {
            let mut b = [1.0f32; 5];
            rank1.broadcast(Buffer::F32(&mut b), 0).map(|()| b)
        });
        let mut a = [7.0f32; 5];
        rank0.broadcast(Buffer::F32(&mut a), 0).expect("broadcast");
        assert_eq!(
            t.join().expect("thread").expect("rank 1 broadcast"),
            [7.0; 5]
        );
    });
}

#[test]
fn connect_times_out_naming_the_missing_peer() {
    let (ls, peers) = listeners(2);
    // Rank 1 never shows up.
    let started = Instant::now();
    let err = TcpRing::connect(&ls[0], member(0, 2, 1), &peers, config(5_000, 700), flag())
        .expect_err("no peer");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let text = err.to_string();
    assert!(
        text.contains("rank 1") && text.contains(&peers[1]),
        "{text}"
    );
}

#[test]
fn abort_during_set_up_returns_promptly() {
    let (ls, peers) = listeners(3);
    let abort = flag();
    let a = abort.clone();
    let setter = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        a.store(true, Ordering::Relaxed);
    });
    let started = Instant::now();
    let err = TcpRing::connect(
        &ls[0],
        member(0, 3, 1),
        &peers,
        config(60_000, 60_000),
        abort,
    )
    .expect_err("aborted");
    setter.join().expect("setter");
    assert!(err.is_aborted(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// Two connected ranks with the given timeouts and rank 0's abort flag.
fn pair(io_timeout_ms: u64) -> (TcpRing, TcpRing, Arc<AtomicBool>) {
    let (ls, peers) = listeners(2);
    let abort0 = flag();
    let (r0, r1) = thread::scope(|s| {
        let a = abort0.clone();
        let p = &peers;
        let l0 = &ls[0];
        let h = s.spawn(move || {
            TcpRing::connect(l0, member(0, 2, 1), p, config(io_timeout_ms, 5_000), a)
        });
        let r1 = TcpRing::connect(
            &ls[1],
            member(1, 2, 1),
            &peers,
            config(io_timeout_ms, 5_000),
            flag(),
        );
        (h.join().expect("thread"), r1)
    });
    (r0.expect("rank 0"), r1.expect("rank 1"), abort0)
}

#[test]
fn abort_while_the_peer_is_silent_fails_within_a_second() {
    let (mut r0, _r1, abort) = pair(60_000);
    let setter = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        abort.store(true, Ordering::Relaxed);
    });
    let started = Instant::now();
    let mut buf = vec![1.0f32; 1000];
    let err = r0
        .all_reduce_sum(Buffer::F32(&mut buf))
        .expect_err("peer never joins the op");
    setter.join().expect("setter");
    assert!(err.is_aborted(), "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    // Sticky: the ring refuses everything afterwards, without touching the network.
    let again = r0
        .all_reduce_sum(Buffer::F32(&mut buf))
        .expect_err("poisoned");
    assert!(
        matches!(again, Error::Poisoned { .. }) && again.is_aborted(),
        "{again}"
    );
}

#[test]
fn silent_peer_times_out_naming_it() {
    let (mut r0, _r1, _abort) = pair(800);
    let started = Instant::now();
    let mut buf = vec![1.0f64; 10];
    let err = r0
        .all_reduce_sum(Buffer::F64(&mut buf))
        .expect_err("peer never joins the op");
    assert!(matches!(err, Error::Timeout { peer_rank: 1, .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let again = r0
        .broadcast(Buffer::F64(&mut buf), 0)
        .expect_err("poisoned");
    assert!(matches!(again, Error::Poisoned { .. }), "{again}");
}

#[test]
fn peer_that_dies_mid_operation_fails_the_survivors_quickly() {
    let (ls, peers) = listeners(3);
    let rings: Vec<TcpRing> = thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|r| {
                let (l, p) = (&ls[r], &peers);
                s.spawn(move || {
                    TcpRing::connect(l, member(r, 3, 1), p, config(30_000, 5_000), flag())
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("thread").expect("connect"))
            .collect()
    });
    let mut rings = rings.into_iter();
    let (mut r0, mut r1, r2) = (
        rings.next().expect("r0"),
        rings.next().expect("r1"),
        rings.next().expect("r2"),
    );
    let started = Instant::now();
    let results = thread::scope(|s| {
        // Rank 2 "dies": its sockets close while the others are inside an all-reduce.
        s.spawn(move || {
            thread::sleep(Duration::from_millis(200));
            drop(r2);
        });
        let h = s.spawn(move || {
            let mut b = vec![1.0f32; 4_000_000];
            r1.all_reduce_sum(Buffer::F32(&mut b))
        });
        let mut a = vec![1.0f32; 4_000_000];
        let e0 = r0.all_reduce_sum(Buffer::F32(&mut a));
        (e0, h.join().expect("thread"))
    });
    let elapsed = started.elapsed();
    for (rank, r) in [results.0, results.1].into_iter().enumerate() {
        let err = r.expect_err("a dead peer must fail the op");
        assert!(
            matches!(err, Error::PeerClosed { .. } | Error::Io { .. }),
            "rank {rank}: {err}"
        );
    }
    assert!(
        elapsed < Duration::from_secs(5),
        "survivors took {elapsed:?} (io_timeout is 30 s)"
    );
}

#[test]
fn ranks_with_different_lengths_fail_with_both_shapes_named() {
    let (mut r0, mut r1, _abort) = pair(5_000);
    let (e0, e1) = thread::scope(|s| {
        let h = s.spawn(move || {
            let mut b = vec![0.0f32; 11];
            r1.all_reduce_sum(Buffer::F32(&mut b))
        });
        let mut a = vec![0.0f32; 10];
        (
            r0.all_reduce_sum(Buffer::F32(&mut a)),
            h.join().expect("thread"),
        )
    });
    let texts: Vec<String> = [e0, e1]
        .into_iter()
        .map(|r| r.expect_err("mismatched lengths").to_string())
        .collect();
    // At least one side sees the other's frame; it names what it expected and what arrived.
    let protocol = texts
        .iter()
        .find(|t| t.contains("out of step"))
        .unwrap_or_else(|| panic!("no protocol error in {texts:?}"));
    assert!(
        protocol.contains("of 10 f32") && protocol.contains("of 11 f32"),
        "{protocol}"
    );
}

#[test]
fn device_buffers_are_refused_with_a_pointer_to_nccl() {
    let (ls, peers) = listeners(1);
    let mut ring = TcpRing::connect(
        &ls[0],
        member(0, 1, 1),
        &peers,
        TcpConfig::default(),
        flag(),
    )
    .expect("world of one");
    let err = ring
        .all_reduce_sum(Buffer::Device {
            ptr: 0x1000,
            len: 4,
            dtype: DType::F32,
        })
        .expect_err("device memory");
    assert!(
        matches!(err, Error::UnsupportedBuffer { .. }) && err.to_string().contains("NCCL"),
        "{err}"
    );
    // A usage error is not a communication failure: the ring still works.
    let mut b = [1.0f32, 2.0];
    ring.all_reduce_sum(Buffer::F32(&mut b))
        .expect("world of one is the identity");
    assert_eq!(b, [1.0, 2.0]);
}

#[test]
fn membership_and_peer_list_are_validated() {
    let (ls, peers) = listeners(2);
    let err = TcpRing::connect(
        &ls[0],
        member(2, 2, 1),
        &peers,
        TcpConfig::default(),
        flag(),
    )
    .expect_err("rank 2 of 2");
    assert!(matches!(err, Error::InvalidMembership { .. }), "{err}");
    let err = TcpRing::connect(
        &ls[0],
        member(0, 3, 1),
        &peers,
        TcpConfig::default(),
        flag(),
    )
    .expect_err("2 peers for 3");
    assert!(err.to_string().contains("2 peer addresses"), "{err}");
}

#[test]
fn a_rank_that_leaves_right_after_the_last_operation_does_not_break_slower_peers() {
    // Rank 1 drops its ring (as a process exits) the moment its operation returns, while its
    // data for rank 0 is still on the way: the connection must close gracefully (FIN after the
    // data), never with a reset that throws the rest away. A broadcast from rank 1 returns as
    // soon as its data is handed to the kernel, so rank 0, arriving late, reads after the close.
    for len in [1usize << 10, 1 << 16, 1 << 20, 4 << 20] {
        let (mut r0, mut r1, _abort) = pair(10_000);
        let (a, b) = thread::scope(|s| {
            let h = s.spawn(move || {
                let mut b = vec![1.0f32; len];
                let r = r1.broadcast(Buffer::F32(&mut b), 1);
                drop(r1);
                r
            });
            thread::sleep(Duration::from_millis(200));
            let mut a = vec![2.0f32; len];
            let r = r0
                .broadcast(Buffer::F32(&mut a), 1)
                .map(|()| a.iter().all(|&x| x == 1.0));
            (r, h.join().expect("thread"))
        });
        b.expect("rank 1");
        assert!(a.unwrap_or_else(|e| panic!("{len} elements: rank 0 must get all its data: {e}")));
    }
}
