//! The TCP ring against the conformance suite, over loopback, one thread per rank.

mod conformance;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use flowsynth_collective::{Collective, Membership, TcpConfig, TcpListenerHandle, TcpRing};

/// `world` connected rings on 127.0.0.1 with the given chunk size.
pub fn ring(world: usize, chunk_bytes: usize) -> Vec<Box<dyn Collective>> {
    let listeners: Vec<TcpListenerHandle> = (0..world)
        .map(|_| TcpListenerHandle::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let peers: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().to_string())
        .collect();
    let config = TcpConfig {
        // A hang in a test becomes an error instead.
        io_timeout: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(10),
        chunk_bytes,
        ..TcpConfig::default()
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = listeners
            .iter()
            .enumerate()
            .map(|(rank, l)| {
                let (peers, config) = (&peers, config.clone());
                s.spawn(move || {
                    let m = Membership {
                        job_id: "job-conformance".into(),
                        auth_token: "secret".into(),
                        generation: 1,
                        rank,
                        world_size: world,
                    };
                    TcpRing::connect(l, m, peers, config, Arc::new(AtomicBool::new(false)))
                        .expect("ring connects")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| Box::new(h.join().expect("connect thread")) as Box<dyn Collective>)
            .collect()
    })
}

fn default_chunks(world: usize) -> Vec<Box<dyn Collective>> {
    ring(world, TcpConfig::default().chunk_bytes)
}

conformance_suite!(default_chunks);

/// Chunks of a few elements: many frames per segment, chunk edges everywhere.
mod tiny_chunks {
    use super::*;

    #[test]
    fn all_reduce_and_broadcast_with_chunks_of_a_few_elements() {
        for world in 1..=4 {
            // 12 bytes: 3 f32 or 1 f64 per chunk.
            let mut ranks = ring(world, 12);
            for len in [0usize, 1, 2, 5, 11, 64, 999] {
                let outputs = conformance::on_each(&mut ranks, |r, c| {
                    let mut a: Vec<f64> = (0..len).map(|i| (i * world + r) as f64).collect();
                    c.all_reduce_sum(flowsynth_collective::Buffer::F64(&mut a))
                        .expect("f64");
                    let mut b: Vec<f32> = (0..len).map(|i| (i + r) as f32).collect();
                    c.all_reduce_sum(flowsynth_collective::Buffer::F32(&mut b))
                        .expect("f32");
                    let mut d: Vec<f32> = vec![r as f32; len];
                    c.broadcast(flowsynth_collective::Buffer::F32(&mut d), world - 1)
                        .expect("bcast");
                    (a, b, d)
                });
                for (a, b, d) in outputs {
                    for i in 0..len {
                        let ea: f64 = (0..world).map(|r| (i * world + r) as f64).sum();
                        let eb: f32 = (0..world).map(|r| (i + r) as f32).sum();
                        assert_eq!(a[i], ea, "world {world} len {len} i {i}");
                        assert_eq!(b[i], eb, "world {world} len {len} i {i}");
                        assert_eq!(d[i], (world - 1) as f32);
                    }
                }
            }
        }
    }
}
