//! `flowsynth`: the one user-facing binary. Each subcommand maps its flags onto the typed
//! structs of the library crates; errors get their context here (anyhow at the edge only).

mod client;
mod k8s;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use flowsynth_common::auth::Token;
use flowsynth_common::config::JobConfig;
use flowsynth_common::convert::{self, ConvertOptions, Preset};
use flowsynth_common::manifest::NonFinitePolicy;
use flowsynth_common::store::Location;
use flowsynth_eval::downstream::DetectorKind;
use flowsynth_eval::run::EvalOptions;
use flowsynth_proto::{ClassCount, JobSpec, SampleSpec, TrainSpec, job_spec::Kind};

#[derive(Parser)]
#[command(
    name = "flowsynth",
    version,
    about = "Learn the distribution of network flows and generate realistic attack flows",
    long_about = "flowsynth converts intrusion-detection CSVs to Parquet datasets, trains a \
class-conditional latent diffusion model on them (locally or on a cluster of workers driven by a \
coordinator), and samples synthetic flows per class to rebalance detector training data.\n\n\
Locations (--out, --data, --checkpoints, --store) are local paths or object-store URLs: \
file:///abs/dir, s3://bucket/prefix (AWS_* environment variables; AWS_ENDPOINT_URL and \
AWS_ALLOW_HTTP=true for a local server), gs://bucket/prefix, az://container/prefix."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert IDS CSV files (.csv or .csv.gz) into a Parquet dataset with a dataset.json manifest.
    Convert(ConvertArgs),
    /// Train on one machine: starts a coordinator and a worker on loopback and runs one job.
    Train(TrainArgs),
    /// Sample on one machine from a checkpoint: starts a coordinator and a worker on loopback.
    Sample(SampleArgs),
    /// Run the coordinator (gRPC control plane for jobs and workers).
    Coordinator(CoordinatorArgs),
    /// Run a worker that takes training and sampling assignments from a coordinator.
    Worker(WorkerArgs),
    /// Submit a job to a running coordinator.
    #[command(subcommand)]
    Submit(SubmitCommand),
    /// Show one job in detail, or list all jobs.
    Status(StatusArgs),
    /// Cancel a job.
    Cancel(CancelArgs),
    /// Kubernetes: print manifests built from the kustomize tree in k8s/ (README, "Deploying to
    /// Kubernetes").
    #[command(subcommand)]
    K8s(K8sCommand),
    /// Evaluate a synthetic dataset: fidelity, privacy, domain validity and downstream detection
    /// F1 against real-only, random oversampling and SMOTE. Writes report.json, report.html and
    /// PNG plots.
    Eval(EvalArgs),
}

#[derive(Args)]
struct EvalArgs {
    /// Real training data (a `convert` dataset, or a `sample` output whose real rows are used).
    #[arg(long)]
    train: String,
    /// Untouched real test data, never shown to the generator.
    #[arg(long)]
    test: String,
    /// Synthetic data: a `sample` output (its generated rows) or a `convert` dataset.
    #[arg(long)]
    synthetic: String,
    /// Output folder or object-store prefix for report.json, report.html and plots/.
    #[arg(long, default_value = "eval-report")]
    out: String,
    /// Seeds per downstream setting (mean and spread are reported).
    #[arg(long, default_value_t = 5)]
    seeds: usize,
    /// Use only the synthetic rows of these classes (comma-separated), e.g. the rare attacks.
    #[arg(long, value_delimiter = ',')]
    augment_only: Vec<String>,
    /// Rows per side for alpha-precision / beta-recall / authenticity, DCR and the detection
    /// test (they compare every row with every other; larger inputs are subsampled).
    #[arg(long, default_value_t = 5_000)]
    sample_rows: usize,
    /// Real rows the generator never saw, for DCR (default: the test split).
    #[arg(long)]
    holdout: Option<String>,
    /// Detectors to train, comma-separated: rf, gbt, mlp.
    #[arg(long, value_delimiter = ',', default_value = "rf,gbt,mlp")]
    detectors: Vec<String>,
    /// Skip the downstream-detection stage.
    #[arg(long)]
    no_downstream: bool,
    /// Base seed of subsamples and detectors.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct ConvertArgs {
    /// Input layout: nsl-kdd (no header), cic-ids-2017, ciciot2023, or generic (infer types).
    #[arg(long, value_parser = ["nsl-kdd", "cic-ids-2017", "ciciot2023", "generic"])]
    preset: String,
    /// Label column (defaults: nsl-kdd `label`, cic-ids-2017 `Label`, ciciot2023
    /// `label_multiclass`; generic: a column named label or class).
    #[arg(long)]
    label: Option<String>,
    /// Extra columns to drop, comma-separated (names as in the header, trimmed).
    #[arg(long, value_delimiter = ',')]
    drop: Vec<String>,
    /// Rows with NaN or Infinity in a numeric column: drop (and count) them, replace with zero,
    /// or stop with an error.
    #[arg(long, default_value = "drop", value_parser = ["drop", "zero", "error"])]
    non_finite: String,
    /// Drop exact duplicate rows (counted in the manifest).
    #[arg(long)]
    dedup: bool,
    /// Rows per Parquet part file.
    #[arg(long, default_value_t = 1_000_000)]
    rows_per_part: usize,
    /// Rows per row group (the unit the coordinator shards by).
    #[arg(long, default_value_t = 65_536)]
    row_group_rows: usize,
    /// Replace an existing dataset at --out.
    #[arg(long)]
    overwrite: bool,
    /// Threads parsing and converting columns (default: all cores; the output is the same).
    #[arg(long)]
    threads: Option<usize>,
    /// MiB of parsed input kept in memory between the two passes: an input that fits is read
    /// once, a larger one twice (memory stays bounded).
    #[arg(long, default_value_t = 512)]
    memory_mib: usize,
    /// Destination: local directory or object-store URL.
    #[arg(long)]
    out: String,
    /// Input files (.csv or .csv.gz).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

/// Flags shared by `train` and `submit train`; they override the --config file.
#[derive(Args, Clone)]
struct TrainJobArgs {
    /// Dataset written by `flowsynth convert`.
    #[arg(long)]
    data: String,
    /// Where checkpoints are committed (training resumes from the newest one found there).
    #[arg(long)]
    checkpoints: String,
    /// Job file (TOML with [train] and [model] tables; see README).
    #[arg(long)]
    config: Option<PathBuf>,
    /// VAE epochs (the denoiser trains for `diffusion_epochs`, default twice this).
    #[arg(long)]
    epochs: Option<usize>,
    /// Denoiser epochs.
    #[arg(long)]
    diffusion_epochs: Option<usize>,
    /// Rows per step on each worker.
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// Train on at most this many rows (a seeded uniform subset).
    #[arg(long)]
    max_rows: Option<u64>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// The space the denoiser learns: tabular (the Transformer VAE's latent), multimodal (joined
    /// with a CNN VAE over each flow's image view) or data-space (no VAE); the job file's
    /// `model.mode`.
    #[arg(long, value_parser = ["tabular", "multimodal", "data-space"])]
    mode: Option<String>,
}

impl TrainJobArgs {
    fn job_config(&self) -> Result<JobConfig> {
        let mut cfg = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config {}", path.display()))?;
                JobConfig::from_toml(&text, &path.display().to_string())?
            }
            None => JobConfig::default(),
        };
        if let Some(v) = self.epochs {
            cfg.train.epochs = v;
        }
        if let Some(v) = self.diffusion_epochs {
            cfg.train.diffusion_epochs = Some(v);
        }
        if let Some(v) = self.batch_size {
            cfg.train.batch_size = v;
        }
        if let Some(v) = self.seed {
            cfg.train.seed = v;
        }
        if let Some(v) = self.max_rows {
            cfg.train.max_rows = v;
        }
        if let Some(v) = &self.device {
            cfg.train.device = v.clone();
        }
        if let Some(v) = &self.mode {
            cfg.model.mode = v.parse().map_err(|m: String| anyhow::anyhow!(m))?;
        }
        cfg.validate()
            .map_err(|m| anyhow::anyhow!("invalid training options: {m}"))?;
        Ok(cfg)
    }

    fn spec(&self) -> Result<JobSpec> {
        let cfg = self.job_config()?;
        Ok(JobSpec {
            kind: Some(Kind::Train(TrainSpec {
                data_url: absolute(&self.data),
                checkpoints_url: absolute(&self.checkpoints),
                config_toml: cfg.to_toml(),
            })),
            min_workers: 1,
            max_workers: 1,
            collective: "auto".into(),
            max_restarts: 0,
        })
    }
}

#[derive(Args, Clone)]
struct SampleJobArgs {
    /// A checkpoints location (its newest committed checkpoint) or one checkpoint directory.
    #[arg(long)]
    checkpoint: String,
    /// Rows to generate per class, e.g. 'neptune=2000,satan=500' (required unless --with-real
    /// alone copies the real rows).
    #[arg(long, required_unless_present = "with_real")]
    classes: Option<String>,
    /// Output location for Parquet parts, _sample.json and _SUCCESS.
    #[arg(long)]
    out: String,
    /// Seed of the generated rows: the same seed, checkpoint and options give the same rows,
    /// whatever the number of workers.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the real training rows (synthetic = false): the augmented dataset.
    #[arg(long)]
    with_real: bool,
    /// Sampler steps, at least 2 (default: the checkpoint's config).
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..))]
    steps: Option<u32>,
    /// Classifier-free guidance scale, > 0 (default: the checkpoint's config).
    #[arg(long)]
    guidance: Option<f64>,
    /// How far rows may move from the real rows of their class, in (0, 1]: 1 generates from
    /// pure noise, lower values start near real rows (default: the checkpoint's config).
    #[arg(long)]
    strength: Option<f64>,
    /// libtorch CPU threads per worker (default: the checkpoint's config; 0 there = all cores).
    #[arg(long)]
    threads: Option<u32>,
}

impl SampleJobArgs {
    fn spec(&self) -> Result<JobSpec> {
        if let Some(g) = self.guidance
            && !(g.is_finite() && g > 0.0)
        {
            bail!("--guidance {g}: must be a positive number");
        }
        if let Some(s) = self.strength
            && !(s > 0.0 && s <= 1.0)
        {
            bail!("--strength {s}: must be in (0, 1]");
        }
        if self.threads == Some(0) {
            bail!("--threads 0: give at least 1, or leave it out for the checkpoint's setting");
        }
        Ok(JobSpec {
            kind: Some(Kind::Sample(SampleSpec {
                checkpoint_url: absolute(&self.checkpoint),
                classes: parse_classes(self.classes.as_deref().unwrap_or_default())?,
                out_url: absolute(&self.out),
                seed: self.seed,
                with_real: self.with_real,
                steps: self.steps.unwrap_or(0),
                guidance_scale: self.guidance.unwrap_or(0.0),
                strength: self.strength.unwrap_or(0.0),
                threads: self.threads.unwrap_or(0),
            })),
            min_workers: 1,
            max_workers: 1,
            collective: "auto".into(),
            max_restarts: 0,
        })
    }

    /// The same job as `submit sample` arguments (for the client pod of `k8s render sample`).
    fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--checkpoint={}", self.checkpoint),
            format!("--out={}", self.out),
            format!("--seed={}", self.seed),
        ];
        if let Some(c) = &self.classes {
            args.push(format!("--classes={c}"));
        }
        if self.with_real {
            args.push("--with-real".into());
        }
        let optional = [
            ("steps", self.steps.map(|v| v.to_string())),
            ("guidance", self.guidance.map(|v| v.to_string())),
            ("strength", self.strength.map(|v| v.to_string())),
            ("threads", self.threads.map(|v| v.to_string())),
        ];
        for (flag, value) in optional {
            if let Some(v) = value {
                args.push(format!("--{flag}={v}"));
            }
        }
        args
    }
}

/// Parses `name=count,name=count`. Class names may contain spaces and dashes, not `=` or `,`.
fn parse_classes(s: &str) -> Result<Vec<ClassCount>> {
    let mut out: Vec<ClassCount> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, count) = item
            .rsplit_once('=')
            .with_context(|| format!("--classes: `{item}` is not NAME=COUNT"))?;
        let count: u64 = count
            .trim()
            .parse()
            .with_context(|| format!("--classes: count `{count}` of `{name}` is not a number"))?;
        let name = name.trim().to_string();
        if out.iter().any(|c| c.class_name == name) {
            bail!("--classes names `{name}` twice");
        }
        out.push(ClassCount {
            class_name: name,
            count,
        });
    }
    Ok(out)
}

/// Local paths are made absolute so a coordinator or worker in another directory finds them.
fn absolute(spec: &str) -> String {
    if spec.contains("://") {
        return spec.to_string();
    }
    std::path::absolute(spec)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| spec.to_string())
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    job: TrainJobArgs,
    /// Data-parallel workers on this machine: 1 runs in this process, N > 1 starts N worker
    /// processes (a TCP ring between them). --batch-size is per worker.
    #[arg(long, default_value_t = 1)]
    local_workers: usize,
}

#[derive(Args)]
struct SampleArgs {
    #[command(flatten)]
    job: SampleJobArgs,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Workers on this machine, each generating a disjoint slice of the rows.
    #[arg(long, default_value_t = 1)]
    local_workers: usize,
}

#[derive(Args)]
struct CoordinatorArgs {
    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: String,
    /// Where job records are persisted (local directory or object-store URL).
    #[arg(long, env = "FLOWSYNTH_STORE")]
    store: String,
    /// Seconds without heartbeat after which a worker counts as dead.
    #[arg(long, env = "FLOWSYNTH_HEARTBEAT_TIMEOUT", default_value_t = 30)]
    heartbeat_timeout: u64,
    /// File holding the token clients must present (submit, status, cancel, watch); without
    /// it, any client that reaches the port is served.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// File holding the token workers must present (register, assignments, rendezvous,
    /// reports). Default: the client token.
    #[arg(long)]
    worker_token_file: Option<PathBuf>,
    /// PEM certificate chain of this coordinator: serve gRPC over TLS only (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Args)]
struct WorkerArgs {
    #[command(flatten)]
    conn: Connection,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Exit after this many jobs (0 = serve until stopped). The exit code is then 0 when this
    /// worker's part of every job succeeded and 3 when one failed or was cancelled, so a
    /// Kubernetes Job sees the outcome (its podFailurePolicy fails the Job on 3, never retries).
    #[arg(long, default_value_t = 0)]
    max_jobs: usize,
    /// Collective for multi-worker jobs that leave the choice to the worker: auto (NCCL on CUDA
    /// devices, else TCP), tcp or nccl.
    #[arg(long, default_value = "auto", value_parser = ["auto", "tcp", "nccl"])]
    collective: String,
    /// Address the TCP collective listens on (default: 127.0.0.1:0 when the coordinator is on
    /// loopback, else 0.0.0.0:0).
    #[arg(long, env = "FLOWSYNTH_COLLECTIVE_LISTEN", default_value = "")]
    collective_listen: String,
    /// Host or IP other workers dial for the TCP collective (default: this machine's address on
    /// the route to the coordinator; in Kubernetes, the pod IP).
    #[arg(long, env = "FLOWSYNTH_ADVERTISE_HOST", default_value = "")]
    advertise_host: String,
}

#[derive(Subcommand)]
enum K8sCommand {
    /// Print manifests to stdout, e.g. `flowsynth k8s render train ... | kubectl apply -f -`.
    #[command(subcommand)]
    Render(RenderCommand),
}

#[derive(Subcommand)]
enum RenderCommand {
    /// The long-lived part, applied once: namespace, service account, configuration,
    /// coordinator (Deployment, Service, disruption budget), workers' headless Service, network
    /// policies.
    Stack {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// A training job: N workers (an Indexed Job), the job file, and a client pod that submits
    /// the job and follows it to its end.
    Train {
        #[command(flatten)]
        job: TrainJobArgs,
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        render: RenderJobArgs,
    },
    /// A sampling job: N workers, each generating a disjoint slice of the rows, and a client pod
    /// that submits the job and follows it to its end.
    Sample {
        #[command(flatten)]
        job: SampleJobArgs,
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        render: RenderJobArgs,
    },
}

/// Where the rendered manifests run.
#[derive(Args)]
struct TargetArgs {
    /// Image of the coordinator, the clients and CPU workers (a version tag or digest).
    #[arg(long, default_value_t = k8s::default_image())]
    image: String,
    /// Image of GPU workers (default: --image with `-cuda` added to the repository name).
    #[arg(long)]
    worker_image: Option<String>,
    /// Namespace of every object.
    #[arg(long, default_value = "flowsynth")]
    namespace: String,
    /// GPU workers: one `nvidia.com/gpu` each, NCCL between them, the CUDA image.
    #[arg(long)]
    gpu: bool,
}

impl TargetArgs {
    fn target(&self) -> k8s::Target {
        k8s::Target {
            namespace: self.namespace.clone(),
            image: self.image.clone(),
            worker_image: self.worker_image.clone(),
            gpu: self.gpu,
        }
    }
}

#[derive(Args)]
struct RenderJobArgs {
    /// Name of the job's Kubernetes objects (`flowsynth-<name>-workers`, ...; default: the
    /// kind and the current time).
    #[arg(long)]
    name: Option<String>,
    /// Workers of the job (training: data-parallel ranks, each with --batch-size rows per step;
    /// sampling: disjoint slices of the rows).
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Print the stack too (as `render stack`), for a cluster that has none yet.
    #[arg(long)]
    with_stack: bool,
}

impl RenderJobArgs {
    fn manifest(
        &self,
        kind: &'static str,
        submit_args: Vec<String>,
        job_toml: Option<String>,
    ) -> k8s::JobManifest {
        k8s::JobManifest {
            kind,
            name: self.name.clone().unwrap_or_else(|| k8s::default_name(kind)),
            workers: self.workers,
            submit_args,
            job_toml,
            with_stack: self.with_stack,
        }
    }
}

#[derive(Subcommand)]
enum SubmitCommand {
    /// Submit a training job.
    Train {
        #[command(flatten)]
        job: TrainJobArgs,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Submit a sampling job.
    Sample {
        #[command(flatten)]
        job: SampleJobArgs,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(Args)]
struct RemoteArgs {
    #[command(flatten)]
    conn: Connection,
    /// Number of workers the job uses (training: data-parallel ranks, each with --batch-size
    /// rows per step; sampling: disjoint slices of the rows).
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// The fewest workers the job starts, or restarts after losing one, with (default:
    /// --workers). With fewer, it waits for more to register.
    #[arg(long)]
    min_workers: Option<u32>,
    /// How often the job may restart after losing a worker (a new generation with the live
    /// workers) before it fails: training resumes from its last committed checkpoint, sampling
    /// re-runs only the chunks no worker finished.
    #[arg(long, default_value_t = 3)]
    max_restarts: u32,
    /// Collective for multi-worker training: auto (the workers choose: NCCL on CUDA, else TCP),
    /// tcp or nccl.
    #[arg(long, default_value = "auto", value_parser = ["auto", "tcp", "nccl"])]
    collective: String,
    /// Follow the job's progress until it ends (exit code says how it ended).
    #[arg(long)]
    wait: bool,
}

impl RemoteArgs {
    /// The job's world bounds and restart budget.
    fn apply(&self, spec: &mut JobSpec) -> Result<()> {
        let workers = self.workers.max(1);
        let min = self.min_workers.unwrap_or(workers);
        if min == 0 || min > workers {
            bail!("--min-workers {min}: give 1 to --workers ({workers})");
        }
        spec.min_workers = min;
        spec.max_workers = workers;
        spec.max_restarts = self.max_restarts;
        Ok(())
    }
}

/// Where the coordinator is and how to prove who this process is.
#[derive(Args)]
struct Connection {
    /// The coordinator's gRPC endpoint.
    #[arg(
        long,
        env = "FLOWSYNTH_COORDINATOR",
        default_value = "http://127.0.0.1:7070"
    )]
    coordinator: String,
    /// File holding the token to present (the coordinator's client token; for `worker`, its
    /// worker token). Default: $FLOWSYNTH_TOKEN, when set.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// PEM file of the CA that signed the coordinator's TLS certificate: connect over TLS
    /// (an http:// coordinator URL is taken as https://).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
}

impl Connection {
    fn remote(&self) -> Result<client::Remote> {
        let tls_ca = match &self.tls_ca {
            Some(f) => Some(
                std::fs::read(f)
                    .with_context(|| format!("--tls-ca: cannot read {}", f.display()))?,
            ),
            None => None,
        };
        Ok(client::Remote {
            url: self.coordinator.clone(),
            access: flowsynth_worker::runtime::Access {
                token: Token::for_client(self.token_file.as_deref())?,
                tls_ca,
            },
        })
    }
}

#[derive(Args)]
struct StatusArgs {
    /// Job id; without it, all jobs are listed.
    job: Option<String>,
    #[command(flatten)]
    conn: Connection,
    /// Print JSON-like detail (the full job record).
    #[arg(long)]
    verbose: bool,
}

#[derive(Args)]
struct CancelArgs {
    job: String,
    #[command(flatten)]
    conn: Connection,
}

/// The log filter's variable (tracing_subscriber's EnvFilter syntax).
const LOG_ENV: &str = "FLOWSYNTH_LOG";

/// Logs go to stderr, filtered by `FLOWSYNTH_LOG`. Without it, `train` and `sample` in a
/// terminal show only warnings: their embedded coordinator and worker would otherwise print their
/// internals (listeners, registrations, job ids) above the progress bar. Services, and the same
/// commands writing to a file or pipe, log at info.
fn init_tracing(command: &Command) {
    use std::io::IsTerminal;
    let quiet = matches!(command, Command::Train(_) | Command::Sample(_))
        && std::io::stderr().is_terminal();
    let default = if quiet {
        "warn"
    } else {
        "info,h2=warn,tower=warn,hyper=warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env(LOG_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal: container and Kubernetes logs would show the escape codes.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.command);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_message(&e));
            if e.is::<JobsFailed>() {
                std::process::ExitCode::from(JobsFailed::EXIT_CODE)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

/// A `worker --max-jobs N` whose part of a job failed: its own exit code, distinct from the
/// worker itself failing (1), so a Kubernetes Job can fail at once instead of retrying the pod.
#[derive(Debug)]
struct JobsFailed(usize);

impl JobsFailed {
    const EXIT_CODE: u8 = 3;
}

impl std::fmt::Display for JobsFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} job(s) this worker ran did not succeed", self.0)
    }
}

impl std::error::Error for JobsFailed {}

/// The error and its causes, each cause once: library errors often already name their source in
/// their own message, and repeating it would only add noise.
fn error_message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !msg.contains(&text) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&text);
        }
    }
    msg
}

/// A local output folder that a command may create: if the command fails and leaves it empty,
/// it is removed, so a failed run leaves nothing behind (an object store has no folders).
struct OutputFolder(Option<PathBuf>);

impl OutputFolder {
    fn new(spec: &str) -> Self {
        let local = (!spec.contains("://") || spec.starts_with("file://"))
            .then(|| PathBuf::from(spec.trim_start_matches("file://")));
        Self(local.filter(|p| !p.exists()))
    }

    /// Passes `result` through, removing the folder first if it failed and left it empty.
    fn settle<T>(self, result: Result<T>) -> Result<T> {
        if result.is_err()
            && let Some(p) = self.0
            && std::fs::read_dir(&p).is_ok_and(|mut d| d.next().is_none())
        {
            let _ = std::fs::remove_dir(&p);
        }
        result
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Convert(a) => {
            let out = OutputFolder::new(&a.out);
            out.settle(run_convert(a).await)
        }
        Command::Train(a) => {
            let out = OutputFolder::new(&a.job.checkpoints);
            let spec = a.job.spec()?;
            let device = a.job.job_config()?.train.device;
            out.settle(client::run_embedded(spec, &device, a.local_workers).await)
        }
        Command::Sample(a) => {
            let out = OutputFolder::new(&a.job.out);
            let run =
                async { client::run_embedded(a.job.spec()?, &a.device, a.local_workers).await };
            out.settle(run.await)
        }
        Command::Coordinator(a) => {
            let store = Location::parse(&a.store)?;
            let listener = flowsynth_coordinator::bind(&a.listen).await?;
            // The bound address goes to stdout (a `--listen 127.0.0.1:0` caller learns the port).
            println!("listening on {}", listener.local_addr()?);
            let read = |f: &Option<PathBuf>| f.as_deref().map(Token::from_file).transpose();
            let pem = |flag: &str, f: &PathBuf| {
                std::fs::read(f).with_context(|| format!("{flag}: cannot read {}", f.display()))
            };
            let tls_identity = match (&a.tls_cert, &a.tls_key) {
                (Some(c), Some(k)) => Some((pem("--tls-cert", c)?, pem("--tls-key", k)?)),
                _ => None,
            };
            let config = flowsynth_coordinator::CoordinatorConfig {
                heartbeat_timeout: Duration::from_secs(a.heartbeat_timeout.max(1)),
                client_token: read(&a.token_file)?,
                worker_token: read(&a.worker_token_file)?,
                tls_identity,
                ..Default::default()
            };
            let local = listener.local_addr()?;
            let tokens = config.client_token.is_some() || config.worker_token.is_some();
            let missing = match (config.tls_identity.is_some(), tokens) {
                _ if local.ip().is_loopback() => None,
                (false, false) => Some(
                    "TLS or tokens: anyone who reaches this port can submit, cancel and list \
                     jobs and join as a worker (set --tls-cert/--tls-key and --token-file)",
                ),
                (false, true) => {
                    Some("TLS: tokens travel in clear text (set --tls-cert/--tls-key)")
                }
                (true, false) => Some(
                    "tokens: anyone who reaches this port can submit jobs and join as a worker \
                     (set --token-file)",
                ),
                (true, true) => None,
            };
            if let Some(m) = missing {
                tracing::warn!("listening on {local} without {m}");
            }
            flowsynth_coordinator::serve(listener, store, config, shutdown_signal()).await?;
            Ok(())
        }
        Command::Worker(a) => {
            let remote = a.conn.remote()?;
            let opts = flowsynth_worker::WorkerOptions {
                coordinator: remote.url,
                access: remote.access,
                device: a.device,
                max_jobs: a.max_jobs,
                collective: a.collective,
                collective_listen: a.collective_listen,
                advertise_host: a.advertise_host,
                ..Default::default()
            };
            let max_jobs = opts.max_jobs;
            let summary = flowsynth_worker::run(opts, shutdown_signal()).await?;
            if max_jobs > 0 && summary.failed > 0 {
                return Err(JobsFailed(summary.failed).into());
            }
            Ok(())
        }
        Command::Submit(SubmitCommand::Train { job, remote }) => {
            let mut spec = job.spec()?;
            remote.apply(&mut spec)?;
            spec.collective = remote.collective;
            client::submit(&remote.conn.remote()?, spec, remote.wait).await
        }
        Command::Submit(SubmitCommand::Sample { job, remote }) => {
            let mut spec = job.spec()?;
            remote.apply(&mut spec)?;
            client::submit(&remote.conn.remote()?, spec, remote.wait).await
        }
        Command::Status(a) => client::status(&a.conn.remote()?, a.job.as_deref(), a.verbose).await,
        Command::Cancel(a) => client::cancel(&a.conn.remote()?, &a.job).await,
        Command::K8s(K8sCommand::Render(r)) => {
            print!("{}", k8s::to_yaml(&render_k8s(r)?)?);
            Ok(())
        }
        Command::Eval(a) => run_eval(a).await,
    }
}

/// The manifests of one `k8s render` command.
fn render_k8s(r: RenderCommand) -> Result<Vec<serde_yaml::Value>> {
    Ok(match r {
        RenderCommand::Stack { target } => k8s::render_stack(&target.target())?,
        RenderCommand::Train {
            job,
            target,
            render,
        } => {
            k8s::check_url("--data", &job.data)?;
            k8s::check_url("--checkpoints", &job.checkpoints)?;
            let cfg = job.job_config()?;
            let args = vec![
                format!("--config={}", k8s::JOB_FILE),
                format!("--data={}", job.data),
                format!("--checkpoints={}", job.checkpoints),
            ];
            let manifest = render.manifest("train", args, Some(cfg.to_toml()));
            k8s::render_job(&target.target(), &manifest)?
        }
        RenderCommand::Sample {
            job,
            target,
            render,
        } => {
            k8s::check_url("--checkpoint", &job.checkpoint)?;
            k8s::check_url("--out", &job.out)?;
            job.spec()?;
            let manifest = render.manifest("sample", job.to_args(), None);
            k8s::render_job(&target.target(), &manifest)?
        }
    })
}

async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down");
}

async fn run_eval(a: EvalArgs) -> Result<()> {
    let mut opts = EvalOptions::default();
    if let Some(t) = a.threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        opts.threads = t;
        opts.downstream.threads = t;
    }
    if a.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    opts.augment_only = a
        .augment_only
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    opts.sample_rows = a.sample_rows;
    opts.holdout = a.holdout;
    opts.seed = a.seed;
    opts.skip_downstream = a.no_downstream;
    opts.downstream.seeds = a.seeds;
    opts.downstream.seed = a.seed;
    opts.downstream.detectors = a
        .detectors
        .iter()
        .map(|d| d.trim().parse::<DetectorKind>())
        .collect::<Result<Vec<_>, _>>()?;
    let (train, test, synthetic, out) = (a.train, a.test, a.synthetic, a.out);
    let written = tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
        let evaluation = flowsynth_eval::run::evaluate(&train, &test, &synthetic, &opts)?;
        print_eval_summary(&evaluation.report);
        Ok(flowsynth_eval::run::write(&evaluation, &out)?)
    })
    .await
    .context("evaluation thread failed")??;
    if let Some(page) = written.iter().find(|w| w.ends_with("report.html")) {
        println!("wrote {} files; open {page}", written.len());
    }
    Ok(())
}

/// The headline numbers on stdout, so a terminal user need not open the page: the verdict
/// first, so nobody ships rows that hurt without having read it.
fn print_eval_summary(r: &flowsynth_eval::report::Report) {
    let f = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.3}"));
    if let Some(v) = &r.verdict {
        println!("verdict: {}", v.lines.last().map_or("", String::as_str));
        for line in &v.lines[..v.lines.len().saturating_sub(1)] {
            println!("  {line}");
        }
    }
    println!(
        "shape {}  trend {}  detection {}  validity {:.3}  alpha-precision {}  beta-recall {}  authenticity {}",
        f(r.shape),
        f(r.trend),
        f(r.detection.as_ref().map(|d| d.score)),
        r.validity.share_valid_rows,
        f(r.alpha_precision),
        f(r.beta_recall),
        f(r.authenticity),
    );
    if let Some(cm) = &r.class_matched {
        println!(
            "class-matched reference: shape {}  trend {}",
            f(cm.shape),
            f(cm.trend)
        );
    }
    for c in &r.per_class {
        println!(
            "class {:<24} shape {} (real holdout {})  trend {} ({})  agreement {} ({})  copies {} ({})",
            c.class,
            f(c.shape),
            f(c.holdout_shape),
            f(c.trend),
            f(c.holdout_trend),
            f(c.agreement),
            f(c.holdout_agreement),
            f(c.copy_rate),
            f(c.holdout_copy_rate),
        );
    }
    if let Some(d) = &r.downstream {
        for (what, pick) in [
            (
                "macro-F1",
                (|s: &flowsynth_eval::report::SettingResult| Some(&s.macro_f1))
                    as fn(
                        &flowsynth_eval::report::SettingResult,
                    ) -> Option<&flowsynth_eval::report::Stat>,
            ),
            ("rare-class F1", |s| s.rare_f1.as_ref()),
        ] {
            for det in &d.detectors {
                let cells: Vec<String> = det
                    .settings
                    .iter()
                    .filter_map(|s| {
                        pick(s).map(|v| format!("{} {:.3}±{:.3}", s.setting, v.mean, v.std))
                    })
                    .collect();
                if !cells.is_empty() {
                    println!("{what:<13} {:<18} {}", det.detector, cells.join("  "));
                }
            }
        }
    }
}

async fn run_convert(a: ConvertArgs) -> Result<()> {
    let preset: Preset = a.preset.parse()?;
    let opts = ConvertOptions {
        preset,
        label: a.label,
        drop: a
            .drop
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        non_finite: match a.non_finite.as_str() {
            "zero" => NonFinitePolicy::Zero,
            "error" => NonFinitePolicy::Error,
            _ => NonFinitePolicy::Drop,
        },
        dedup: a.dedup,
        rows_per_part: a.rows_per_part,
        row_group_rows: a.row_group_rows,
        overwrite: a.overwrite,
        progress: true,
        threads: a.threads.unwrap_or(0),
        memory_budget: a.memory_mib.saturating_mul(1 << 20),
    };
    let out = Location::parse(&a.out)?;
    let inputs = a.inputs.clone();
    let manifest = tokio::task::spawn_blocking(move || convert::convert(&inputs, &out, &opts))
        .await
        .context("conversion thread failed")??;
    println!(
        "wrote {} rows in {} part(s) to {} ({} feature columns, {} classes, {} columns dropped, {} rows dropped)",
        manifest.total_rows,
        manifest.parts.len(),
        absolute(&a.out),
        manifest.features().count(),
        manifest.class_counts.len(),
        manifest.dropped_columns.len(),
        manifest.rows_dropped.non_finite
            + manifest.rows_dropped.duplicates
            + manifest.rows_dropped.empty_label,
    );
    Ok(())
}
