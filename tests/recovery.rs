//! Elastic recovery with real processes: a worker of a running two-worker training job is killed
//! (SIGKILL) during the VAE stage, after a checkpoint was committed. The coordinator restarts the
//! job as a new generation from that checkpoint on the live workers (the survivor and a spare
//! that was waiting), the ranks verify identical parameters at the start of the generation, and
//! the job finishes with a valid checkpoint; its record and the workers' logs show the restart.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_flowsynth");

/// A worker process whose log (info level) goes to a file, so the test learns its worker id.
struct LoggedWorker {
    proc: Proc,
    log: std::path::PathBuf,
}

impl LoggedWorker {
    fn start(dir: &std::path::Path, n: usize, coordinator: &str) -> Self {
        Self::start_in(dir, n, coordinator, Command::new(BIN))
    }

    /// Starts `cmd` (the binary, or `ip netns exec NS` and the binary) as worker `n`.
    fn start_in(dir: &std::path::Path, n: usize, coordinator: &str, mut cmd: Command) -> Self {
        let log = dir.join(format!("worker-{n}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .args(["worker", "--device", "cpu", "--coordinator", coordinator])
            .env("FLOWSYNTH_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Self {
            proc: Proc(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn id(&self) -> Option<String> {
        let log = self.log();
        let at = log.find("registered as ")? + "registered as ".len();
        log[at..].split_whitespace().next().map(str::to_string)
    }
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether a `progress:` line is in the VAE stage at epoch 2 or later (a checkpoint committed:
/// `checkpoint_every = 1`). Polls are far apart (each is a process), so any later VAE epoch
/// counts.
fn past_first_vae_epoch(progress: &str) -> bool {
    progress
        .strip_prefix("vae epoch ")
        .and_then(|r| r.split('/').next())
        .and_then(|e| e.parse::<u32>().ok())
        .is_some_and(|e| e >= 2)
}

/// `field:` of `flowsynth status JOB`.
fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// Converts 1,500 NSL-KDD rows into `ROOT/dataset` and trains them with the job file `toml`
/// (written to `ROOT/job.toml`) into `ROOT/ckpt`; returns the three paths.
fn train_small_model(
    root: &std::path::Path,
    toml: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let (dataset, ckpts, config) = (
        root.join("dataset"),
        root.join("ckpt"),
        root.join("job.toml"),
    );
    convert_nsl_subset(root, 1500, dataset.to_str().unwrap(), 500, &[]);
    std::fs::write(&config, toml).unwrap();
    run_ok(&[
        "train",
        "--data",
        dataset.to_str().unwrap(),
        "--checkpoints",
        ckpts.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    (dataset, ckpts, config)
}

/// How the test loses a worker.
#[derive(Clone, Copy, PartialEq)]
enum Loss {
    /// SIGKILL: its sockets close, the survivor's collective fails at once.
    Kill,
    /// SIGSTOP, never continued: its sockets stay open and silent; the coordinator notices the
    /// missed heartbeats, and the survivor's collective is aborted by the stop it then hears.
    Stop,
}

#[test]
fn a_killed_worker_restarts_the_job_from_its_checkpoint_with_the_live_workers() {
    lose_a_worker(Loss::Kill);
}

#[test]
fn a_hung_worker_is_fenced_out_and_the_job_goes_on_without_it() {
    lose_a_worker(Loss::Stop);
}

fn lose_a_worker(how: Loss) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let dataset = root.join("dataset");
    convert_nsl_subset(root, 3000, dataset.to_str().unwrap(), 500, &[]);
    let (_coord, url) = start_coordinator(
        root.join("state").to_str().unwrap(),
        &["--heartbeat-timeout", "3"],
        &[],
    );
    let workers: Vec<LoggedWorker> = (0..3).map(|n| LoggedWorker::start(root, n, &url)).collect();
    wait_for("3 registered workers", Duration::from_secs(60), || {
        workers.iter().all(|w| w.id().is_some())
    });

    let config = root.join("job.toml");
    std::fs::write(
        &config,
        "[train]\nepochs = 10\ndiffusion_epochs = 2\nbatch_size = 64\ncheckpoint_every = 1\nthreads = 1\n\n[model]\ndenoiser_width = 32\nsampler_steps = 4\n",
    )
    .unwrap();
    let ckpts = root.join("ckpt");
    let out = run_ok(&[
        "submit",
        "train",
        "--coordinator",
        &url,
        "--data",
        dataset.to_str().unwrap(),
        "--checkpoints",
        ckpts.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--workers",
        "2",
    ]);
    let job = out
        .split_whitespace()
        .find(|w| w.starts_with("job-"))
        .unwrap()
        .to_string();
    let status = || run_ok(&["status", &job, "--coordinator", &url]);

    // Kill rank 1 in the VAE stage once the first epoch's checkpoint is committed.
    wait_for("VAE epoch 2", Duration::from_secs(180), || {
        past_first_vae_epoch(&status_field(&status(), "progress"))
    });
    let before = status();
    let ranks: Vec<String> = status_field(&before, "workers")
        .split(", ")
        .map(str::to_string)
        .collect();
    assert_eq!(ranks.len(), 2, "{before}");
    let mut workers = workers;
    let victim = workers
        .iter()
        .position(|w| w.id().as_deref() == Some(ranks[1].as_str()))
        .unwrap();
    let spare = workers
        .iter()
        .position(|w| w.id().is_some_and(|id| !ranks.contains(&id)))
        .unwrap();
    let spare_id = workers[spare].id().unwrap();
    let mut lost = workers.remove(victim);
    match how {
        Loss::Kill => {
            lost.proc.0.kill().unwrap();
            lost.proc.0.wait().unwrap();
        }
        Loss::Stop => {
            let pid = lost.proc.0.id().to_string();
            assert!(
                Command::new("kill")
                    .args(["-STOP", &pid])
                    .status()
                    .unwrap()
                    .success()
            );
        }
    }

    wait_for("the job to end", Duration::from_secs(300), || {
        let s = status_field(&status(), "state");
        s == "succeeded" || s == "failed" || s == "cancelled"
    });
    let after = status();
    assert_eq!(status_field(&after, "state"), "succeeded", "{after}");
    assert_eq!(status_field(&after, "restarts"), "1 of 3", "{after}");
    assert!(
        after.contains("event:    restart 1/3 (generation 2)"),
        "{after}"
    );
    let final_ranks = status_field(&after, "workers");
    assert!(
        final_ranks.contains(&spare_id) && !final_ranks.contains(&ranks[1]),
        "the spare replaced the killed worker: {after}"
    );
    // The new generation resumed from the committed checkpoint (not from scratch).
    let logs: String = workers.iter().map(LoggedWorker::log).collect();
    assert!(logs.contains("(generation 2)"), "{logs}");
    assert!(logs.contains("resuming from"), "{logs}");
    if how == Loss::Stop {
        // Still stopped, never continued: fenced out by its stale generation, and the record
        // names the lost heartbeats.
        assert!(
            lost.proc.0.try_wait().unwrap().is_none(),
            "the stopped worker is still there"
        );
        assert!(after.contains("stopped heartbeating"), "{after}");
    }
    // The final model is a valid checkpoint: sampling loads it (sha256 of every file checked).
    let sampled = root.join("sampled");
    let out = run_ok(&[
        "sample",
        "--checkpoint",
        ckpts.to_str().unwrap(),
        "--classes",
        "neptune=50",
        "--out",
        sampled.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(out.contains("succeeded"), "{out}");
    assert!(sampled.join("_SUCCESS").exists());
}

/// `flowsynth coordinator` at a fixed address (a restart must come back where workers and
/// clients look for it).
fn coordinator_at(state: &str, addr: &str) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(["coordinator", "--listen", addr, "--store", state])
        .args(["--heartbeat-timeout", "3"])
        .env("FLOWSYNTH_LOG", "warn");
    spawn_coordinator(cmd).0
}

#[test]
fn a_restarted_coordinator_resumes_the_job_and_workers_and_the_waiting_client_reconnect() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let dataset = root.join("dataset");
    convert_nsl_subset(root, 3000, dataset.to_str().unwrap(), 500, &[]);
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let url = format!("http://{addr}");
    let state = root.join("state");
    let coordinator = coordinator_at(state.to_str().unwrap(), &addr);
    let workers: Vec<LoggedWorker> = (0..2).map(|n| LoggedWorker::start(root, n, &url)).collect();
    let config = root.join("job.toml");
    std::fs::write(
        &config,
        "[train]\nepochs = 10\ndiffusion_epochs = 2\nbatch_size = 64\ncheckpoint_every = 1\nthreads = 1\n\n[model]\ndenoiser_width = 32\nsampler_steps = 4\n",
    )
    .unwrap();
    let ckpts = root.join("ckpt");
    // The submitting client waits through the restart.
    let client = Command::new(BIN)
        .args([
            "submit",
            "train",
            "--coordinator",
            &url,
            "--workers",
            "2",
            "--wait",
        ])
        .arg("--data")
        .arg(&dataset)
        .arg("--checkpoints")
        .arg(&ckpts)
        .arg("--config")
        .arg(&config)
        .env("FLOWSYNTH_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = || {
        let jobs = run_ok(&["status", "--coordinator", &url]);
        let id = jobs
            .split_whitespace()
            .find(|w| w.starts_with("job-"))
            .map(str::to_string)
            .unwrap_or_default();
        if id.is_empty() {
            return (id, String::new());
        }
        let detail = run_ok(&["status", &id, "--coordinator", &url]);
        (id, detail)
    };
    wait_for("VAE epoch 2", Duration::from_secs(180), || {
        std::net::TcpStream::connect(&addr).is_ok()
            && past_first_vae_epoch(&status_field(&status().1, "progress"))
    });
    let (job, _) = status();
    // SIGKILL, and back on the same store and address.
    drop(coordinator);
    std::thread::sleep(Duration::from_millis(500));
    let _coordinator = coordinator_at(state.to_str().unwrap(), &addr);

    let out = client.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{:?}\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains(&format!("{job} succeeded")), "{stdout}");
    assert!(stderr.contains("reconnecting"), "{stderr}");
    let after = run_ok(&["status", &job, "--coordinator", &url]);
    assert!(
        after.contains("event:    re-queued after a coordinator restart"),
        "{after}"
    );
    for w in &workers {
        let log = w.log();
        // Registered again on its own, whether a heartbeat or an assignment call heard first.
        assert_eq!(log.matches("registered as").count(), 2, "{log}");
    }
    let logs: String = workers.iter().map(LoggedWorker::log).collect();
    assert!(logs.contains("resuming from"), "{logs}");
}

#[test]
fn a_damaged_newest_checkpoint_is_skipped_and_the_previous_one_is_used() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (dataset, ckpts, config) = train_small_model(
        root,
        "[train]\nepochs = 2\ndiffusion_epochs = 1\nbatch_size = 128\ncheckpoint_every = 1\nthreads = 1\n\n[model]\ndenoiser_width = 32\nsampler_steps = 4\n",
    );
    let (data, ck, cfg) = (
        dataset.to_str().unwrap(),
        ckpts.to_str().unwrap(),
        config.to_str().unwrap(),
    );
    let mut committed: Vec<String> = std::fs::read_dir(&ckpts)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("ckpt-"))
        .collect();
    committed.sort();
    assert!(committed.len() >= 2, "{committed:?}");
    let (newest, previous) = (
        committed[committed.len() - 1].clone(),
        committed[committed.len() - 2].clone(),
    );
    // Truncate one file of the newest and flip a bit in another: both fail their sha256.
    let weights = ckpts.join(&newest).join("weights.safetensors");
    let len = std::fs::metadata(&weights).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let state = ckpts.join(&newest).join("state.json");
    let mut bytes = std::fs::read(&state).unwrap();
    bytes[0] ^= 0x01;
    std::fs::write(&state, bytes).unwrap();

    // Train on (one more denoiser epoch) through a coordinator: the job resumes from the
    // previous checkpoint, and says so on its record.
    let (_coord, url) = start_coordinator(root.join("state").to_str().unwrap(), &[], &[]);
    let _workers = start_workers(1, &url, &[]);
    let out = run(&[
        "submit",
        "train",
        "--coordinator",
        &url,
        "--data",
        data,
        "--checkpoints",
        ck,
        "--config",
        cfg,
        "--diffusion-epochs",
        "2",
        "--wait",
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("damaged checkpoint skipped") && stderr.contains(&newest),
        "the waiting client shows the event: {stderr}"
    );
    let job = stdout
        .split_whitespace()
        .find(|w| w.starts_with("job-"))
        .unwrap();
    let status = run_ok(&["status", job, "--coordinator", &url]);
    let event = status
        .lines()
        .find(|l| l.contains("damaged checkpoint skipped"))
        .unwrap_or_else(|| panic!("status shows the event: {status}"));
    assert!(
        event.contains(&newest) && event.contains("sha256"),
        "{event}"
    );
    assert!(!event.contains(&previous), "{event}");
}

/// Fault 5: a worker of a two-worker sampling job is killed after writing one of its parts. The
/// job restarts as a new generation that re-runs only the chunks nobody finished (on the
/// survivor and a spare); the output holds exactly the rows requested, one part per chunk, and
/// `_SUCCESS` appears only once everything is written.
#[test]
fn a_lost_sampling_worker_s_chunks_are_rerun_and_the_output_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (dataset, ckpts, _) = train_small_model(
        root,
        "[train]\nepochs = 1\ndiffusion_epochs = 1\nbatch_size = 128\nthreads = 1\n\n[model]\ndenoiser_width = 32\nsampler_steps = 8\n",
    );

    let (_coord, url) = start_coordinator(
        root.join("state").to_str().unwrap(),
        &["--heartbeat-timeout", "3"],
        &[],
    );
    let workers: Vec<LoggedWorker> = (0..3).map(|n| LoggedWorker::start(root, n, &url)).collect();
    wait_for("3 registered workers", Duration::from_secs(60), || {
        workers.iter().all(|w| w.id().is_some())
    });
    // 12 chunks of 4,096 rows (the last smaller): rank 0 gets the even ones, rank 1 the odd.
    const ROWS: u64 = 46_000;
    let out_dir = root.join("sampled");
    let out = run_ok(&[
        "submit",
        "sample",
        "--coordinator",
        &url,
        "--checkpoint",
        ckpts.to_str().unwrap(),
        "--classes",
        &format!("neptune={ROWS}"),
        "--out",
        out_dir.to_str().unwrap(),
        "--threads",
        "1",
        "--workers",
        "2",
    ]);
    let job = out
        .split_whitespace()
        .find(|w| w.starts_with("job-"))
        .unwrap()
        .to_string();
    let status = || run_ok(&["status", &job, "--coordinator", &url]);
    let rank_1 = format!("job {job}: rank 1/2 (generation 1)");
    wait_for("rank 1's first part", Duration::from_secs(180), || {
        out_dir.join("part-00001.parquet").exists()
    });
    let mut workers = workers;
    let victim = workers
        .iter()
        .position(|w| w.log().contains(&rank_1))
        .unwrap();
    let mut lost = workers.remove(victim);
    lost.proc.0.kill().unwrap();
    lost.proc.0.wait().unwrap();
    assert!(
        !out_dir.join("part-00011.parquet").exists(),
        "rank 1 finished before it was killed: make its chunks slower"
    );

    // `_SUCCESS` only at the end: whenever it is there, so is every part and the manifest.
    let parts: Vec<String> = (0..12).map(|i| format!("part-{i:05}.parquet")).collect();
    wait_for("the job to end", Duration::from_secs(300), || {
        if out_dir.join("_SUCCESS").exists() {
            for p in parts.iter().chain(["_sample.json".to_string()].iter()) {
                assert!(out_dir.join(p).exists(), "_SUCCESS before {p}");
            }
        }
        let s = status_field(&status(), "state");
        s == "succeeded" || s == "failed" || s == "cancelled"
    });
    let after = status();
    assert_eq!(status_field(&after, "state"), "succeeded", "{after}");
    assert_eq!(status_field(&after, "restarts"), "1 of 3", "{after}");
    let event = after
        .lines()
        .find(|l| l.contains("restart 1/3 (generation 2)"))
        .unwrap_or_else(|| panic!("{after}"));
    // At least rank 1's first part and rank 0's first part were finished and kept.
    let kept: usize = event
        .split("; ")
        .find_map(|p| p.strip_suffix(" of 12 chunks finished are kept"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{event}"));
    assert!((2..12).contains(&kept), "{event}");

    // Exactly the requested rows, one part per chunk, nothing else but the markers.
    let mut names: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    let mut expected = parts.clone();
    expected.extend(["_SUCCESS".to_string(), "_sample.json".to_string()]);
    expected.sort();
    assert_eq!(names, expected);
    let manifest = json(&out_dir.join("_sample.json"));
    assert_eq!(manifest["synthetic_rows"], ROWS);
    assert_eq!(
        manifest["parts"].as_array().unwrap().len(),
        12,
        "{manifest}"
    );
    let label = json(&dataset.join("_dataset.json"))["label_column"]
        .as_str()
        .unwrap()
        .to_string();
    let (rows, classes) = pyarrow_read_folder(&out_dir, &label);
    assert_eq!(rows, ROWS);
    assert_eq!(classes.get("neptune"), Some(&ROWS), "{classes:?}");
    // The new generation ran only what was left.
    let logs: String = workers.iter().map(LoggedWorker::log).collect();
    assert!(logs.contains("(generation 2)"), "{logs}");
}

/// Hosts with their own addresses on one machine: network namespaces joined by veth pairs to a
/// bridge that lives in a namespace of its own (so the host's firewall, e.g. Docker's FORWARD
/// policy, does not see the traffic). Cutting a host's veth is a partition: the process keeps
/// running, its packets go nowhere. Needs root and iproute2; removed on drop.
struct Netns {
    prefix: String,
    subnet: String,
    hosts: usize,
}

impl Netns {
    /// `hosts` namespaces `PREFIX-h0..`, host `i` at `SUBNET.(10 + i)`; `Err` (saying which
    /// command failed) where namespaces cannot be made here (not root, no `ip`, no bridge
    /// support).
    fn new(hosts: usize) -> Result<Self, String> {
        let n = std::process::id() % 10_000;
        let net = Self {
            prefix: format!("fs{n}"),
            subnet: format!("10.{}.{}", 200 + n % 50, (n / 50) % 250),
            hosts,
        };
        let step = |args: &[&str]| {
            if ip(args) {
                Ok(())
            } else {
                Err(format!("`ip {}` failed", args.join(" ")))
            }
        };
        // On an early return, `net` is dropped: what was made is removed.
        let sw = net.ns("sw");
        step(&["netns", "add", &sw])?;
        step(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        step(&["-n", &sw, "link", "set", "br0", "up"])?;
        for h in 0..hosts {
            let (ns, veth) = (net.ns(&format!("h{h}")), net.veth(h));
            let addr = format!("{}/24", net.addr(h));
            step(&["netns", "add", &ns])?;
            step(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            step(&["link", "set", &veth, "netns", &sw])?;
            step(&["-n", &sw, "link", "set", &veth, "master", "br0", "up"])?;
            step(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            step(&["-n", &ns, "link", "set", "eth0", "up"])?;
            step(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn veth(&self, host: usize) -> String {
        format!("{}v{host}", self.prefix)
    }

    fn addr(&self, host: usize) -> String {
        format!("{}.{}", self.subnet, 10 + host)
    }

    fn must(&self, args: &[&str]) {
        assert!(ip(args), "ip {}", args.join(" "));
    }

    /// The binary, to be run on `host`.
    fn command(&self, host: usize) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(&format!("h{host}")), BIN]);
        cmd
    }

    /// Cuts `host` off (`false`) or heals it (`true`).
    fn link(&self, host: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        self.must(&["-n", &self.ns("sw"), "link", "set", &self.veth(host), state]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for h in 0..self.hosts {
            ip(&["netns", "del", &self.ns(&format!("h{h}"))]);
        }
        ip(&["netns", "del", &self.ns("sw")]);
    }
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Fault 7, network partition, across network namespaces: the only worker of a training job
/// is cut off from the coordinator (it keeps running and still reaches the checkpoint storage).
/// The coordinator reaps it after the heartbeat timeout and restarts the job on a spare; the
/// cut-off worker, whose lease on its generation lapses, refuses to commit the checkpoints it
/// goes on computing. Healed, it learns it is stale, registers again and waits for work, while
/// the job finishes on the spare with every checkpoint sound.
#[test]
fn a_partitioned_worker_is_fenced_out_and_rejoins_when_the_network_heals() {
    let net = match Netns::new(3) {
        Ok(net) => net,
        Err(why) => {
            eprintln!(
                "SKIPPED: cannot create network namespaces here ({why}; needs root, iproute2 \
                 and bridge support)"
            );
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let dataset = root.join("dataset");
    convert_nsl_subset(root, 3000, dataset.to_str().unwrap(), 500, &[]);
    // Host 0: the coordinator; hosts 1 and 2: workers.
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net.ns("h0"), BIN])
        .args(["coordinator", "--listen", &format!("{}:0", net.addr(0))])
        .arg("--store")
        .arg(root.join("state"))
        .args(["--heartbeat-timeout", "3"])
        .env("FLOWSYNTH_LOG", "warn");
    let (_coord, addr) = spawn_coordinator(cmd);
    let url = format!("http://{addr}");
    let workers: Vec<LoggedWorker> = (1..3)
        .map(|h| LoggedWorker::start_in(root, h, &url, net.command(h)))
        .collect();
    wait_for("2 registered workers", Duration::from_secs(60), || {
        workers.iter().all(|w| w.id().is_some())
    });
    let config = root.join("job.toml");
    std::fs::write(
        &config,
        "[train]\nepochs = 14\ndiffusion_epochs = 2\nbatch_size = 64\ncheckpoint_every = 1\nkeep_checkpoints = 100\nthreads = 1\n\n[model]\ndenoiser_width = 32\nsampler_steps = 4\n",
    )
    .unwrap();
    let ckpts = root.join("ckpt");
    // Clients run on the coordinator's host.
    let client = |args: &[&str]| -> String {
        let out = net.command(0).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "flowsynth {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = client(&[
        "submit",
        "train",
        "--coordinator",
        &url,
        "--data",
        dataset.to_str().unwrap(),
        "--checkpoints",
        ckpts.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    let job = out
        .split_whitespace()
        .find(|w| w.starts_with("job-"))
        .unwrap()
        .to_string();
    let status = || client(&["status", &job, "--coordinator", &url]);
    wait_for("VAE epoch 2", Duration::from_secs(180), || {
        past_first_vae_epoch(&status_field(&status(), "progress"))
    });
    let first = format!("job {job}: rank 0/1 (generation 1)");
    let cut = workers
        .iter()
        .position(|w| w.log().contains(&first))
        .unwrap();
    let cut_host = cut + 1;
    let cut_at = std::time::SystemTime::now();
    net.link(cut_host, false);
    wait_for("the restart on the spare", Duration::from_secs(60), || {
        status_field(&status(), "restarts") == "1 of 3"
    });
    // Long enough for the cut-off worker to finish an epoch and try to commit it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !workers[cut].log().contains("not writing the checkpoint") {
        assert!(
            Instant::now() < deadline,
            "the cut-off worker was not fenced:\n{}",
            workers[cut].log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    net.link(cut_host, true);
    wait_for(
        "the cut-off worker to register again",
        Duration::from_secs(60),
        || workers[cut].log().matches("registered as").count() == 2,
    );
    wait_for("the job to end", Duration::from_secs(300), || {
        let s = status_field(&status(), "state");
        s == "succeeded" || s == "failed" || s == "cancelled"
    });
    let after = status();
    assert_eq!(status_field(&after, "state"), "succeeded", "{after}");
    assert!(after.contains("stopped heartbeating"), "{after}");
    let spare = workers[1 - cut].id().unwrap();
    assert_eq!(status_field(&after, "workers"), spare, "{after}");

    // Nothing the stale generation computed after the cut was committed: every checkpoint of
    // generation 1 was created before its lease (half the timeout) lapsed, and every
    // checkpoint verifies.
    let lease_end = cut_at + Duration::from_millis(1500 + 500);
    let lease_end_ms = lease_end
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut generations = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(&ckpts).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("manifest.json").exists() {
            continue;
        }
        let ck = flowsynth_common::store::block_on(flowsynth_common::checkpoint::resolve(
            dir.to_str().unwrap(),
        ))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let meta = &ck.manifest.meta;
        generations.insert(meta.generation);
        if meta.generation == 1 {
            assert!(
                ck.manifest.created_unix_ms <= lease_end_ms,
                "generation 1 committed {} {} ms after the cut",
                dir.display(),
                ck.manifest.created_unix_ms - (lease_end_ms - 2000)
            );
        }
    }
    assert_eq!(generations.into_iter().collect::<Vec<_>>(), vec![1, 2]);
}
