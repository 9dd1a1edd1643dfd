//! Bearer tokens on the control plane, with real processes: a coordinator that requires a client
//! token and a worker token refuses calls without one, with a wrong one or with the other
//! scope's, saying which flag to set; with the right ones a job runs end to end; and no token
//! appears in any log (at debug level), in `status` output or in the checkpoint.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_flowsynth");
const CLIENT_TOKEN: &str = "client-7f3a9c1e5b";
const WORKER_TOKEN: &str = "worker-2d8e4b6a0f";

fn flowsynth(args: &[&str], token: Option<&str>) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.args(args).env_remove("FLOWSYNTH_TOKEN");
    if let Some(t) = token {
        c.env("FLOWSYNTH_TOKEN", t);
    }
    c.output().unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn tokens_are_required_per_scope_and_never_leak() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (client_file, worker_file) = (root.join("client.token"), root.join("worker.token"));
    std::fs::write(&client_file, format!("{CLIENT_TOKEN}\n")).unwrap();
    std::fs::write(&worker_file, WORKER_TOKEN).unwrap();
    let dataset = root.join("dataset");
    convert_nsl_subset(root, 800, dataset.to_str().unwrap(), 800, &[]);

    let coordinator_log = root.join("coordinator.log");
    let mut cmd = Command::new(BIN);
    cmd.args(["coordinator", "--listen", "127.0.0.1:0", "--store"])
        .arg(root.join("state"))
        .arg("--token-file")
        .arg(&client_file)
        .arg("--worker-token-file")
        .arg(&worker_file)
        .env("FLOWSYNTH_LOG", "debug")
        .stderr(std::fs::File::create(&coordinator_log).unwrap());
    let (_coordinator, addr) = spawn_coordinator(cmd);
    let url = format!("http://{addr}");

    // Clients: no token, a wrong one, the worker's.
    let none = flowsynth(&["status", "--coordinator", &url], None);
    assert!(!none.status.success());
    assert!(
        stderr(&none).contains("requires a client token") && stderr(&none).contains("--token-file"),
        "{}",
        stderr(&none)
    );
    let wrong = flowsynth(&["status", "--coordinator", &url], Some("guessed"));
    assert!(
        stderr(&wrong).contains("not this coordinator's"),
        "{}",
        stderr(&wrong)
    );
    let worker_as_client = flowsynth(&["status", "--coordinator", &url], Some(WORKER_TOKEN));
    assert!(
        stderr(&worker_as_client).contains("cannot make client calls"),
        "{}",
        stderr(&worker_as_client)
    );
    // A worker with the client token is refused too (two scopes), and says why.
    let refused = flowsynth(
        &[
            "worker",
            "--device",
            "cpu",
            "--max-jobs",
            "1",
            "--coordinator",
            &url,
        ],
        Some(CLIENT_TOKEN),
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("cannot make worker calls"),
        "{}",
        stderr(&refused)
    );

    // The right tokens: a worker (token file) and a client (FLOWSYNTH_TOKEN) run a job.
    let worker_log = root.join("worker.log");
    let worker = Command::new(BIN)
        .args([
            "worker",
            "--device",
            "cpu",
            "--coordinator",
            &url,
            "--token-file",
        ])
        .arg(&worker_file)
        .env("FLOWSYNTH_LOG", "debug")
        .env_remove("FLOWSYNTH_TOKEN")
        .stderr(std::fs::File::create(&worker_log).unwrap())
        .spawn()
        .unwrap();
    let _worker = Proc(worker);
    let ckpts = root.join("ckpt");
    let out = flowsynth(
        &[
            "submit",
            "train",
            "--coordinator",
            &url,
            "--data",
            dataset.to_str().unwrap(),
            "--checkpoints",
            ckpts.to_str().unwrap(),
            "--epochs",
            "1",
            "--diffusion-epochs",
            "1",
            "--batch-size",
            "256",
            "--wait",
        ],
        Some(CLIENT_TOKEN),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}\n{}", stderr(&out));
    let job = stdout
        .split_whitespace()
        .find(|w| w.starts_with("job-"))
        .unwrap();
    let status = flowsynth(
        &["status", job, "--verbose", "--coordinator", &url],
        Some(CLIENT_TOKEN),
    );
    assert!(status.status.success(), "{}", stderr(&status));

    // No token anywhere: logs (debug level), status output, job records, checkpoints.
    let mut places = vec![
        (
            "coordinator log",
            std::fs::read_to_string(&coordinator_log).unwrap(),
        ),
        ("worker log", std::fs::read_to_string(&worker_log).unwrap()),
        (
            "status --verbose",
            String::from_utf8_lossy(&status.stdout).into_owned(),
        ),
        ("client output", format!("{stdout}{}", stderr(&out))),
    ];
    for dir in [root.join("state"), ckpts] {
        for entry in walk(&dir) {
            places.push((
                "stored file",
                String::from_utf8_lossy(&std::fs::read(&entry).unwrap()).into_owned(),
            ));
        }
    }
    assert!(
        places[0].1.contains("registered") || places[0].1.contains("worker"),
        "debug log captured"
    );
    for (what, text) in &places {
        for token in [CLIENT_TOKEN, WORKER_TOKEN] {
            assert!(!text.contains(token), "{what} shows a token");
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A CA and a server certificate for 127.0.0.1 and localhost, as PEM files in `dir`:
/// (ca.pem, server.pem, server.key).
fn certificates(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let server =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, server.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[test]
fn tls_serves_only_clients_that_trust_the_coordinator() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (ca, cert, key) = certificates(root);
    let mut cmd = Command::new(BIN);
    cmd.args(["coordinator", "--listen", "127.0.0.1:0", "--store"])
        .arg(root.join("state"))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env("FLOWSYNTH_LOG", "warn");
    let (_coordinator, addr) = spawn_coordinator(cmd);
    let ca = ca.to_str().unwrap();

    // With the CA: served, whether the URL says https:// or http://.
    for url in [format!("https://{addr}"), format!("http://{addr}")] {
        let ok = flowsynth(&["status", "--coordinator", &url, "--tls-ca", ca], None);
        assert!(ok.status.success(), "{url}: {}", stderr(&ok));
        assert!(String::from_utf8_lossy(&ok.stdout).contains("no jobs"));
    }
    // Plain text is refused; https without a CA says which flag is missing; another CA fails.
    let plain = flowsynth(
        &["status", "--coordinator", &format!("http://{addr}")],
        None,
    );
    assert!(!plain.status.success(), "a plaintext client is not served");
    let no_ca = flowsynth(
        &["status", "--coordinator", &format!("https://{addr}")],
        None,
    );
    assert!(stderr(&no_ca).contains("--tls-ca"), "{}", stderr(&no_ca));
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = certificates(other.path());
    let untrusted = flowsynth(
        &[
            "status",
            "--coordinator",
            &format!("https://{addr}"),
            "--tls-ca",
            other_ca.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        !untrusted.status.success(),
        "a coordinator signed by another CA is not trusted"
    );

    // A worker over TLS registers and serves (it exits after its first, failing, job).
    let dataset = root.join("dataset");
    convert_nsl_subset(root, 300, dataset.to_str().unwrap(), 300, &[]);
    let url = format!("https://{addr}");
    let mut worker = Command::new(BIN)
        .args([
            "worker",
            "--max-jobs",
            "1",
            "--coordinator",
            &url,
            "--tls-ca",
            ca,
        ])
        .env("FLOWSYNTH_LOG", "warn")
        .spawn()
        .unwrap();
    let out = flowsynth(
        &[
            "submit",
            "train",
            "--coordinator",
            &url,
            "--tls-ca",
            ca,
            "--data",
            dataset.to_str().unwrap(),
            "--checkpoints",
            root.join("ck").to_str().unwrap(),
            "--device",
            "cuda:7",
            "--wait",
        ],
        None,
    );
    assert!(
        stderr(&out).contains("no such CUDA device"),
        "the job reached the worker over TLS: {}",
        stderr(&out)
    );
    assert_eq!(worker.wait().unwrap().code(), Some(3));
}
