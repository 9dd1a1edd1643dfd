//! A real S3 endpoint for tests: moto's `moto_server` (PyPI `moto[server]`, installed by
//! `make setup` into `.deps/moto`) on a free loopback port, killed when dropped.
//!
//! Shared by `common/tests` and the root crate's `tests/` (included with `#[path]`), so it uses
//! only the standard library: plain HTTP/1.1 over a `TcpStream` is enough to see that the server
//! answers and to create buckets (moto accepts an unsigned CreateBucket). Objects are then read
//! and written by object_store, which signs its requests with the dummy credentials of
//! [`Moto::env`]; moto accepts any credentials but refuses unsigned object requests (403).
//!
//! The settings go to whoever needs them explicitly, never into this process's environment
//! (tests run in parallel threads): `Command::envs(moto.env())` for child processes,
//! `StoreOptions::from_iter(moto.env())` for in-process locations.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Overrides where the `moto_server` executable is.
pub const MOTO_SERVER_ENV: &str = "FLOWSYNTH_MOTO_SERVER";

/// How long a starting server may take to answer (it imports Flask and moto's backends; on a
/// busy 2-core machine that takes a few seconds).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `moto_server`; dropped = killed.
pub struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Moto {
    /// Starts a server on a free loopback port and waits until it answers HTTP. Panics (the test
    /// fails) when `moto_server` is not installed, saying how to install it.
    pub fn start() -> Moto {
        let exe = server_path();
        let mut last_error = String::new();
        // Free port: bind port 0, note the port, release it, hand it to moto. Another process
        // may take it in between; then moto exits and we try another one.
        for _ in 0..5 {
            let port = free_port();
            match Self::start_on(&exe, port) {
                Ok(moto) => return moto,
                Err(e) => last_error = e,
            }
        }
        panic!("cannot start {}: {last_error}", exe.display());
    }

    /// Starts a server and creates `bucket` in it.
    pub fn with_bucket(bucket: &str) -> Moto {
        let moto = Self::start();
        moto.create_bucket(bucket);
        moto
    }

    fn start_on(exe: &Path, port: u16) -> Result<Moto, String> {
        let log =
            std::env::temp_dir().join(format!("flowsynth-moto-{}-{port}.log", std::process::id()));
        let log_file = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let child = Command::new(exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        // From here on, dropping `moto` kills the child and removes the log.
        let mut moto = Moto { child, port, log };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = moto.child.try_wait() {
                return Err(format!(
                    "moto_server exited ({status}) on port {port}:\n{}",
                    moto.log_tail()
                ));
            }
            // ListBuckets: an S3 answer, so not some other server that took the port.
            if let Ok((200, body)) = moto.request("GET", "/")
                && body.contains("ListAllMyBucketsResult")
            {
                return Ok(moto);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "moto_server did not answer on port {port} within {START_TIMEOUT:?}:\n{}",
                    moto.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (an unsigned S3 CreateBucket, `PUT /BUCKET`, which moto accepts).
    pub fn create_bucket(&self, bucket: &str) {
        match self.request("PUT", &format!("/{bucket}")) {
            Ok((200, _)) => {}
            Ok((status, body)) => {
                panic!("moto refused to create bucket `{bucket}`: HTTP {status}\n{body}")
            }
            Err(e) => panic!(
                "cannot create bucket `{bucket}` on {}: {e}",
                self.endpoint()
            ),
        }
    }

    /// The settings that point an S3 client at this server, named like the environment
    /// variables they stand for. The credentials are dummies (moto takes any).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "flowsynth-test".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "flowsynth-test".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// One HTTP/1.1 request without a body; returns the status and the body.
    fn request(&self, method: &str, path: &str) -> Result<(u16, String), String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.port
        )
        .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .map_err(|e| e.to_string())?;
        let response = String::from_utf8_lossy(&response);
        let status = response
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| response.strip_prefix("HTTP/1.0 "))
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("not an HTTP response: {response:.200}"))?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `$FLOWSYNTH_MOTO_SERVER`, else `<checkout>/.deps/moto/bin/moto_server`.
fn server_path() -> PathBuf {
    if let Some(path) = std::env::var_os(MOTO_SERVER_ENV) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{MOTO_SERVER_ENV}={} does not name a file",
            path.display()
        );
        return path;
    }
    // CARGO_MANIFEST_DIR is the checkout for root tests and `common/` for common's tests: the
    // checkout is the nearest ancestor holding the setup script.
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let checkout = manifest_dir
        .ancestors()
        .find(|d| d.join("scripts/setup-moto.sh").is_file())
        .unwrap_or(manifest_dir);
    let path = checkout.join(".deps/moto/bin/moto_server");
    assert!(
        path.is_file(),
        "the S3 tests need moto's S3 server, and {} is missing: run `make setup` (or \
         `bash scripts/setup-moto.sh`) in {}, or set {MOTO_SERVER_ENV} to a moto_server \
         executable",
        path.display(),
        checkout.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free loopback port: {e}"))
}
