//! Offline checks of every manifest flowsynth ships or renders: the embedded tree is the
//! checkout's, the builds agree with `kubectl kustomize`, everything passes
//! `kubernetes-validate --strict`, every container's arguments parse with the real CLI and
//! every variable they set is one the binary reads, and the security policy holds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use clap::{CommandFactory, Parser};
use flowsynth_common::store::StoreOptions;
use serde_yaml::Value;

use super::*;
use crate::{Cli, Command, K8sCommand, render_k8s};

/// The Kubernetes version the manifests are validated against (and the oldest they target:
/// `backoffLimitPerIndex` and gRPC probes are on by default from 1.29/1.27).
const KUBERNETES_VERSION: &str = "1.30.0";

/// Every kustomization of the tree; a test checks the list against the checkout.
const KUSTOMIZATIONS: &[&str] = &[
    "base",
    "jobs/workers",
    "jobs/train",
    "jobs/sample",
    "overlays/cpu",
    "overlays/gpu",
    "overlays/local",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tool the set-up installs into the tests' Python environment (scripts/setup-moto.sh).
fn python_tool(name: &str) -> PathBuf {
    let path = repo().join(".deps/moto/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `make setup` (scripts/setup-moto.sh installs it)",
        path.display()
    );
    path
}

fn render(args: &[&str]) -> Result<Vec<Value>> {
    let argv = ["flowsynth", "k8s", "render"].iter().chain(args);
    let cli = Cli::try_parse_from(argv).map_err(|e| anyhow::anyhow!("{e}"))?;
    match cli.command {
        Command::K8s(K8sCommand::Render(r)) => render_k8s(r),
        _ => unreachable!("parsed as k8s render"),
    }
}

/// A job file, as a user would pass to `--config`.
fn job_file() -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp file");
    std::io::Write::write_all(&mut f, b"[train]\nepochs = 3\nbatch_size = 256\n").expect("write");
    f
}

/// Every render a user can ask for, by a name for messages.
fn renders() -> Vec<(String, Vec<Value>)> {
    let job = job_file();
    let config = job.path().to_str().expect("utf-8 temp path").to_string();
    let train = |extra: &[&str]| {
        let mut a = vec![
            "train",
            "--config",
            &config,
            "--data",
            "s3://bucket/datasets/nsl-kdd",
            "--checkpoints",
            "s3://bucket/checkpoints/nsl",
            "--name",
            "nsl",
            "--workers",
            "4",
            "--image",
            "registry.example.com/flowsynth:0.1.0",
        ];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let sample = |extra: &[&str]| {
        let mut a = vec![
            "sample",
            "--checkpoint",
            "s3://bucket/checkpoints/nsl",
            "--classes",
            "neptune=2000,satan=500",
            "--out",
            "s3://bucket/samples/nsl",
            "--name",
            "nsl-sample",
            "--workers",
            "3",
            "--strength",
            "0.5",
        ];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let cases: Vec<Vec<String>> = vec![
        vec!["stack".into()],
        vec!["stack".into(), "--gpu".into()],
        train(&[]),
        train(&["--gpu", "--with-stack", "--namespace", "ids"]),
        sample(&[]),
        sample(&["--gpu", "--with-real"]),
    ];
    cases
        .into_iter()
        .map(|args| {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let docs = render(&refs).unwrap_or_else(|e| panic!("render {args:?}: {e:#}"));
            (format!("render {}", args.join(" ")), docs)
        })
        .collect()
}

/// Every build of the tree, by directory.
fn builds() -> Vec<(String, Vec<Value>)> {
    KUSTOMIZATIONS
        .iter()
        .map(|d| {
            let docs = build(d).unwrap_or_else(|e| panic!("build k8s/{d}: {e:#}"));
            (format!("k8s/{d}"), docs)
        })
        .collect()
}

/// The Secret templates operators fill in (not part of any build).
fn secret_templates() -> Vec<Value> {
    let path = "base/secrets.example.yaml";
    parse_docs(path, file(path).expect("embedded")).expect("parses")
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    get(v, path).and_then(Value::as_str)
}

fn seq_at<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    get(v, path)
        .and_then(Value::as_sequence)
        .map_or(&[], Vec::as_slice)
}

fn key(doc: &Value) -> (String, String, String) {
    let s = |p: &[&str]| str_at(doc, p).unwrap_or_default().to_string();
    (
        s(&["kind"]),
        s(&["metadata", "namespace"]),
        s(&["metadata", "name"]),
    )
}

/// Pod specs of a set of documents, with the name of their object.
fn pods(docs: &[Value]) -> impl Iterator<Item = (String, &Value)> {
    docs.iter()
        .filter_map(|d| get(d, &["spec", "template", "spec"]).map(|p| (object_name(d), p)))
}

fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    seq_at(pod, &["initContainers"])
        .iter()
        .chain(seq_at(pod, &["containers"]))
}

fn is_flowsynth_image(image: &str) -> bool {
    split_tag(image).is_ok_and(|(repo, _)| {
        let name = repo.rsplit('/').next().unwrap_or(repo);
        name == "flowsynth" || name == "flowsynth-cuda"
    })
}

#[test]
fn embedded_tree_is_the_checkout() {
    fn walk(dir: &Path, out: &mut BTreeSet<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read k8s/") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.insert(p);
            }
        }
    }
    let root = repo().join("k8s");
    let mut on_disk = BTreeSet::new();
    walk(&root, &mut on_disk);
    let mut kustomizations = BTreeSet::new();
    for path in &on_disk {
        let rel = path.strip_prefix(&root).expect("below k8s/");
        let rel = rel.to_str().expect("utf-8 path");
        let text = std::fs::read_to_string(path).expect("read");
        assert_eq!(
            file(rel),
            Some(text.as_str()),
            "k8s/{rel} differs from the embedded copy"
        );
        if let Some(dir) = rel.strip_suffix("/kustomization.yaml")
            && text.contains("kind: Kustomization")
        {
            kustomizations.insert(dir.to_string());
        }
    }
    assert_eq!(FILES.len(), on_disk.len(), "embedded files and k8s/ differ");
    let listed: BTreeSet<String> = KUSTOMIZATIONS.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        kustomizations, listed,
        "every kustomization is built by these tests"
    );
}

#[test]
fn builds_agree_with_kubectl_kustomize() {
    if Process::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        eprintln!(
            "SKIPPED builds_agree_with_kubectl_kustomize: kubectl is not installed (Debian: \
             apt-get install kubectl); the other manifest tests still ran"
        );
        return;
    }
    for (name, ours) in builds() {
        let out = Process::new("kubectl")
            .arg("kustomize")
            .arg(repo().join(&name))
            .output()
            .expect("run kubectl");
        assert!(
            out.status.success(),
            "kubectl kustomize {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let theirs = parse_docs(&name, &text).expect("kubectl output parses");
        let index = |docs: &[Value]| -> BTreeMap<_, Value> {
            docs.iter().map(|d| (key(d), d.clone())).collect()
        };
        let (ours, theirs) = (index(&ours), index(&theirs));
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "{name}: objects differ"
        );
        for (k, v) in &ours {
            assert_eq!(
                Some(v),
                theirs.get(k),
                "{name}: {k:?} differs from kubectl's build"
            );
        }
    }
}

#[test]
fn every_manifest_passes_kubernetes_validate_strict() {
    let validator = python_tool("kubernetes-validate");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut files = Vec::new();
    let mut all = builds();
    all.extend(renders());
    all.push(("secret templates".into(), secret_templates()));
    for (i, (name, docs)) in all.iter().enumerate() {
        let path = dir.path().join(format!("{i:02}.yaml"));
        std::fs::write(&path, to_yaml(docs).expect("yaml")).expect("write");
        files.push((name.clone(), path));
    }
    for (name, path) in &files {
        let out = Process::new(&validator)
            .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
            .arg(path)
            .output()
            .expect("run kubernetes-validate");
        assert!(
            out.status.success(),
            "{name} fails kubernetes-validate --strict ({KUBERNETES_VERSION}):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The `env` names of the binary's flags, collected once from the clap tree.
static CLAP_ENVS: std::sync::LazyLock<BTreeSet<String>> = std::sync::LazyLock::new(|| {
    fn walk(cmd: &clap::Command, out: &mut BTreeSet<String>) {
        for a in cmd.get_arguments() {
            if let Some(e) = a.get_env() {
                out.insert(e.to_string_lossy().into_owned());
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut envs = BTreeSet::new();
    walk(&Cli::command(), &mut envs);
    envs
});

/// The variables the binary reads: its flags' `env` names, the log filter, the token, the
/// store's keys, and NCCL's own (read by libnccl).
fn read_by_binary(name: &str) -> bool {
    CLAP_ENVS.contains(name)
        || name == crate::LOG_ENV
        || name == flowsynth_common::auth::TOKEN_ENV
        || StoreOptions::applies(name)
        || name.starts_with("NCCL_")
}

/// Parses `flowsynth <args>` with the real CLI as the container would run it: a flag with an
/// `env` name that the container's environment sets counts as given (clap reads it from the
/// process environment, which tests must not change), with the value when it is known.
fn parse_as_container(
    args: &[&str],
    env: &BTreeMap<String, Option<String>>,
) -> Result<(), clap::Error> {
    let mut argv: Vec<String> = std::iter::once("flowsynth")
        .chain(args.iter().copied())
        .map(str::to_string)
        .collect();
    let root = Cli::command();
    let mut cmd = &root;
    for a in args {
        match cmd.find_subcommand(a) {
            Some(sub) => cmd = sub,
            None => break,
        }
    }
    for arg in cmd.get_arguments() {
        let (Some(var), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        let flag = format!("--{long}");
        let given = args
            .iter()
            .any(|a| *a == flag || a.starts_with(&format!("{flag}=")));
        if let Some(value) = env.get(var.to_string_lossy().as_ref())
            && !given
        {
            argv.push(format!("{flag}={}", value.as_deref().unwrap_or("10.0.0.1")));
        }
    }
    Cli::try_parse_from(argv).map(|_| ())
}

#[test]
fn container_arguments_parse_and_every_variable_is_read() {
    // Job manifests take their configuration from the stack, applied before them.
    let mut templates = secret_templates();
    templates.extend(build("base").expect("base builds"));
    let mut all = builds();
    all.extend(renders());
    let mut checked = 0;
    for (name, docs) in &all {
        // Keys of the ConfigMaps and Secrets a pod may take whole (`envFrom`), from the same
        // output, the stack or the Secret templates.
        let keys_of = |kind: &str, wanted: &str| -> Option<Vec<(String, Option<String>)>> {
            docs.iter()
                .chain(&templates)
                .find(|d| {
                    str_at(d, &["kind"]) == Some(kind)
                        && str_at(d, &["metadata", "name"]) == Some(wanted)
                })
                .map(|d| {
                    ["data", "stringData"]
                        .iter()
                        .filter_map(|f| get(d, &[f]).and_then(Value::as_mapping))
                        .flat_map(|m| {
                            m.iter().filter_map(|(k, v)| {
                                Some((k.as_str()?.to_string(), v.as_str().map(str::to_string)))
                            })
                        })
                        .collect()
                })
        };
        for (object, pod) in pods(docs) {
            for c in containers(pod) {
                let image = str_at(c, &["image"]).unwrap_or_default();
                if !is_flowsynth_image(image) {
                    continue;
                }
                assert!(
                    get(c, &["command"]).is_none(),
                    "{name} {object}: keep the image's entrypoint"
                );
                let args: Vec<&str> = seq_at(c, &["args"])
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                // The container's environment: its own variables (value unknown when taken from
                // the pod's fields) and every key of the ConfigMaps and Secrets it takes whole.
                let mut env: BTreeMap<String, Option<String>> = seq_at(c, &["env"])
                    .iter()
                    .filter_map(|e| {
                        Some((
                            str_at(e, &["name"])?.to_string(),
                            str_at(e, &["value"]).map(str::to_string),
                        ))
                    })
                    .collect();
                for from in seq_at(c, &["envFrom"]) {
                    for (field, kind) in [("configMapRef", "ConfigMap"), ("secretRef", "Secret")] {
                        if let Some(wanted) = str_at(from, &[field, "name"]) {
                            let keys = keys_of(kind, wanted).unwrap_or_else(|| {
                                panic!("{name} {object}: envFrom {kind} {wanted} is neither in the build nor a template")
                            });
                            env.extend(keys);
                        }
                    }
                }
                if let Err(e) = parse_as_container(&args, &env) {
                    panic!(
                        "{name} {object}: `flowsynth {}` does not parse:\n{e}",
                        args.join(" ")
                    );
                }
                checked += 1;
                let vars: Vec<String> = env.into_keys().collect();
                for v in vars {
                    assert!(
                        read_by_binary(&v),
                        "{name} {object}: sets {v}, which flowsynth never reads"
                    );
                }
            }
        }
    }
    assert!(checked >= 20, "only {checked} flowsynth containers checked");
}

#[test]
fn policy_holds_for_every_pod() {
    let mut all = builds();
    all.extend(renders());
    for (name, docs) in &all {
        for (object, pod) in pods(docs) {
            let ctx = |c: &Value, field: &str| -> Option<Value> {
                get(c, &["securityContext", field])
                    .or_else(|| get(pod, &["securityContext", field]))
                    .cloned()
            };
            assert_eq!(
                str_at(pod, &["securityContext", "seccompProfile", "type"]),
                Some("RuntimeDefault"),
                "{name} {object}: seccomp RuntimeDefault"
            );
            assert_eq!(
                get(pod, &["automountServiceAccountToken"]).and_then(Value::as_bool),
                Some(false),
                "{name} {object}: no API token in pods"
            );
            for c in containers(pod) {
                let cname = str_at(c, &["name"]).unwrap_or("?");
                let at = format!("{name} {object} container {cname}");
                assert_eq!(
                    ctx(c, "runAsNonRoot").and_then(|v| v.as_bool()),
                    Some(true),
                    "{at}: runAsNonRoot"
                );
                let uid = ctx(c, "runAsUser").and_then(|v| v.as_u64());
                assert!(
                    uid.is_some_and(|u| u != 0),
                    "{at}: runs as a non-zero runAsUser"
                );
                assert_eq!(
                    get(c, &["securityContext", "allowPrivilegeEscalation"])
                        .and_then(Value::as_bool),
                    Some(false),
                    "{at}: allowPrivilegeEscalation false"
                );
                let drops: Vec<&str> = seq_at(c, &["securityContext", "capabilities", "drop"])
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                assert_eq!(drops, ["ALL"], "{at}: drops ALL capabilities");
                assert_eq!(
                    get(c, &["securityContext", "readOnlyRootFilesystem"]).and_then(Value::as_bool),
                    Some(true),
                    "{at}: read-only root filesystem"
                );
                for r in ["cpu", "memory"] {
                    assert!(
                        get(c, &["resources", "limits", r]).is_some(),
                        "{at}: {r} limit"
                    );
                    assert!(
                        get(c, &["resources", "requests", r]).is_some(),
                        "{at}: {r} request"
                    );
                }
                let image = str_at(c, &["image"]).unwrap_or_default();
                assert!(
                    split_tag(image).is_ok(),
                    "{at}: image `{image}` has a version tag, not latest"
                );
            }
        }
    }
}

/// GPU workers: a GPU each, NCCL's /dev/shm as memory, the pod interface for NCCL, the CUDA
/// image; CPU workers: none of that.
#[test]
fn gpu_workers_have_shared_memory_and_a_gpu() {
    let mut all = builds();
    all.extend(renders());
    let mut gpu_seen = 0;
    for (name, docs) in &all {
        for doc in docs {
            if str_at(doc, &["kind"]) == Some("NetworkPolicy")
                && str_at(doc, &["metadata", "name"]) == Some("flowsynth-workers")
            {
                let ports = get(doc, &["spec", "ingress", "0", "ports"]).is_some();
                assert_eq!(
                    ports,
                    !name.contains("gpu"),
                    "{name}: NCCL needs every port between GPU workers, the TCP ring only its own"
                );
            }
            if str_at(doc, &["kind"]) != Some("Job")
                || str_at(doc, &["metadata", "labels", "app.kubernetes.io/component"])
                    != Some("worker")
            {
                continue;
            }
            let pod = get(doc, &["spec", "template", "spec"]).expect("pod spec");
            let c = &seq_at(pod, &["containers"])[0];
            let args: Vec<&str> = seq_at(c, &["args"])
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let gpu = get(c, &["resources", "limits", "nvidia.com/gpu"]).is_some();
            let is_gpu_build = name.contains("gpu");
            assert_eq!(
                gpu, is_gpu_build,
                "{name}: nvidia.com/gpu limit only on GPU workers"
            );
            assert!(
                args.contains(&"--max-jobs=1"),
                "{name}: workers exit after their job"
            );
            let shm_volume = seq_at(pod, &["volumes"]).iter().find_map(|v| {
                (str_at(v, &["emptyDir", "medium"]) == Some("Memory")).then(|| str_at(v, &["name"]))
            });
            let shm_mounted = shm_volume.flatten().is_some_and(|vol| {
                seq_at(c, &["volumeMounts"]).iter().any(|m| {
                    str_at(m, &["name"]) == Some(vol)
                        && str_at(m, &["mountPath"]) == Some("/dev/shm")
                })
            });
            let nccl_if = seq_at(c, &["env"])
                .iter()
                .any(|e| str_at(e, &["name"]) == Some("NCCL_SOCKET_IFNAME"));
            if is_gpu_build {
                gpu_seen += 1;
                assert!(shm_mounted, "{name}: /dev/shm is a memory emptyDir");
                assert!(nccl_if, "{name}: NCCL_SOCKET_IFNAME set");
                assert!(
                    args.contains(&"--device=cuda"),
                    "{name}: workers use the GPU"
                );
                let image = str_at(c, &["image"]).unwrap_or_default();
                assert!(
                    image.contains("flowsynth-cuda:"),
                    "{name}: CUDA image, not {image}"
                );
            } else {
                assert!(
                    !shm_mounted && !nccl_if,
                    "{name}: no GPU settings on CPU workers"
                );
            }
        }
    }
    assert_eq!(gpu_seen, 3, "the GPU overlay and two GPU job renders");
}

#[test]
fn render_sets_the_job_and_nothing_else() {
    let job = job_file();
    let config = job.path().to_str().expect("utf-8");
    let docs = render(&[
        "train",
        "--config",
        config,
        "--epochs",
        "7",
        "--data",
        "s3://b/d",
        "--checkpoints",
        "s3://b/c",
        "--name",
        "nsl",
        "--workers",
        "4",
        "--image",
        "reg.example/flowsynth:1.2.3",
    ])
    .expect("renders");
    let names: BTreeSet<String> = docs.iter().map(object_name).collect();
    let expected: BTreeSet<String> = [
        "Job/flowsynth-nsl-workers",
        "Job/flowsynth-nsl-submit",
        "ConfigMap/flowsynth-nsl-job",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(names, expected);
    for doc in &docs {
        assert_eq!(str_at(doc, &["metadata", "namespace"]), Some("flowsynth"));
        assert_eq!(str_at(doc, &["metadata", "labels", JOB_LABEL]), Some("nsl"));
        match str_at(doc, &["metadata", "name"]) {
            Some("flowsynth-nsl-workers") => {
                assert_eq!(
                    get(doc, &["spec", "completions"]).and_then(Value::as_u64),
                    Some(4)
                );
                assert_eq!(
                    get(doc, &["spec", "parallelism"]).and_then(Value::as_u64),
                    Some(4)
                );
                assert_eq!(
                    str_at(
                        doc,
                        &["spec", "template", "spec", "containers", "0", "image"]
                    ),
                    Some("reg.example/flowsynth:1.2.3")
                );
            }
            Some("flowsynth-nsl-submit") => {
                let pod = get(doc, &["spec", "template", "spec"]).expect("pod");
                let args: Vec<&str> = seq_at(pod, &["containers", "0", "args"])
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                assert_eq!(
                    args,
                    [
                        "submit",
                        "train",
                        "--config=/etc/flowsynth/job/job.toml",
                        "--data=s3://b/d",
                        "--checkpoints=s3://b/c",
                        "--workers=4",
                        "--wait"
                    ]
                );
                assert_eq!(
                    str_at(pod, &["volumes", "0", "configMap", "name"]),
                    Some("flowsynth-nsl-job")
                );
            }
            Some("flowsynth-nsl-job") => {
                let toml = str_at(doc, &["data", "job.toml"]).expect("job file");
                let cfg = flowsynth_common::config::JobConfig::from_toml(toml, "rendered")
                    .expect("parses");
                assert_eq!(
                    (cfg.train.epochs, cfg.train.batch_size),
                    (7, 256),
                    "flags over the file"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn render_refuses_what_a_cluster_cannot_run() {
    let job = job_file();
    let config = job.path().to_str().expect("utf-8");
    let base = [
        "train",
        "--config",
        config,
        "--data",
        "s3://b/d",
        "--checkpoints",
        "s3://b/c",
    ];
    let with = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        render(&a).map(|_| ()).map_err(|e| format!("{e:#}"))
    };
    assert!(with(&[]).is_ok());
    let cases: &[(&[&str], &str)] = &[
        (&["--image", "flowsynth"], "version tag"),
        (&["--image", "flowsynth:latest"], "not `latest`"),
        (&["--name", "Bad_Name"], "--name `Bad_Name`"),
        (&["--name", &"x".repeat(37)], "1 to 36"),
        (&["--workers", "0"], "--workers 0"),
        (&["--gpu", "--worker-image", "cuda:latest"], "not `latest`"),
        (&["--worker-image", "reg/flowsynth-cuda:1"], "with --gpu"),
    ];
    for (extra, needle) in cases {
        let err = with(extra).expect_err("refused");
        assert!(
            err.contains(needle),
            "{extra:?}: `{err}` should mention {needle}"
        );
    }
    let local = render(&[
        "train",
        "--config",
        config,
        "--data",
        "/data/nsl",
        "--checkpoints",
        "s3://b/c",
    ]);
    let err = format!("{:#}", local.expect_err("local path refused"));
    assert!(
        err.contains("--data `/data/nsl`") && err.contains("object-store URL"),
        "{err}"
    );
    let sample = render(&[
        "sample",
        "--checkpoint",
        "s3://b/c",
        "--classes",
        "a",
        "--out",
        "s3://b/o",
    ]);
    let err = format!("{:#}", sample.expect_err("bad classes refused"));
    assert!(err.contains("--classes"), "{err}");
    // The derived CUDA image keeps the registry and the tag.
    let t = Target {
        namespace: "n".into(),
        image: "reg.example:5000/team/flowsynth:0.1.0".into(),
        worker_image: None,
        gpu: true,
    };
    assert_eq!(
        t.cuda_image().expect("derived"),
        "reg.example:5000/team/flowsynth-cuda:0.1.0"
    );
}

#[test]
fn json_patch_operations() {
    let mut doc: Value = serde_yaml::from_str("a: {b: [1, 2]}\nc~d: {e/f: 1}\n").expect("yaml");
    let ops: Vec<Op> = serde_yaml::from_str(
        "- {op: add, path: /a/b/-, value: 3}\n\
         - {op: add, path: /a/b/0, value: 0}\n\
         - {op: replace, path: /c~0d/e~1f, value: 2}\n\
         - {op: add, path: /a/g, value: {h: 1}}\n\
         - {op: remove, path: /a/b/1}\n",
    )
    .expect("ops");
    for op in &ops {
        op.apply(&mut doc).expect("applies");
    }
    let want: Value =
        serde_yaml::from_str("a: {b: [0, 2, 3], g: {h: 1}}\nc~d: {e/f: 2}\n").expect("yaml");
    assert_eq!(doc, want);
    for bad in [
        "{op: replace, path: /nope, value: 1}",
        "{op: remove, path: /a/b/9}",
        "{op: add, path: a, value: 1}",
    ] {
        let op: Op = serde_yaml::from_str(bad).expect("op");
        assert!(op.apply(&mut doc).is_err(), "{bad} must fail");
    }
}

/// The compose cluster (docker/compose.yaml) runs the same way: real CLI arguments, variables
/// the binary reads, non-root read-only containers, pinned images.
#[test]
fn compose_cluster_commands_parse_and_containers_are_locked_down() {
    let path = repo().join("docker/compose.yaml");
    let text = std::fs::read_to_string(&path).expect("read docker/compose.yaml");
    let mut compose: Value = serde_yaml::from_str(&text).expect("compose file parses");
    compose.apply_merge().expect("merge keys resolve");
    let services = get(&compose, &["services"])
        .and_then(Value::as_mapping)
        .expect("services");
    let mut flowsynth = 0;
    for (name, s) in services {
        let name = name.as_str().unwrap_or("?");
        let image = str_at(s, &["image"]).unwrap_or_default();
        let image = image.replace("${FLOWSYNTH_IMAGE:-", "").replace('}', "");
        assert!(
            split_tag(&image).is_ok(),
            "{name}: image `{image}` is pinned"
        );
        assert_eq!(
            get(s, &["read_only"]).and_then(Value::as_bool),
            Some(true),
            "{name}: read-only root"
        );
        let user = str_at(s, &["user"]).unwrap_or("0");
        assert!(
            !user.starts_with('0') && !user.starts_with("root"),
            "{name}: runs as {user}"
        );
        let drops: Vec<&str> = seq_at(s, &["cap_drop"])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(drops, ["ALL"], "{name}: drops ALL capabilities");
        if !is_flowsynth_image(&image) {
            continue;
        }
        flowsynth += 1;
        let args: Vec<&str> = seq_at(s, &["command"])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let env_map = get(s, &["environment"])
            .and_then(Value::as_mapping)
            .expect("environment");
        // `${VAR:-default}` is compose's substitution: the value is the default unless set.
        let resolve = |v: &str| -> String {
            match v.strip_prefix("${").and_then(|r| r.split_once(":-")) {
                Some((_, default)) => default.trim_end_matches('}').to_string(),
                None => v.to_string(),
            }
        };
        let env: BTreeMap<String, Option<String>> = env_map
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str().map(resolve))))
            .collect();
        if let Err(e) = parse_as_container(&args, &env) {
            // `client` runs `--help` by default: clap reports it as an "error" that is help.
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp,
                "{name}: `flowsynth {}`:\n{e}",
                args.join(" ")
            );
        }
        for var in env.keys() {
            assert!(
                read_by_binary(var),
                "{name}: sets {var}, which flowsynth never reads"
            );
        }
    }
    assert_eq!(flowsynth, 3, "coordinator, worker and client run flowsynth");
    if Process::new("docker-compose")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED `docker-compose config`: docker-compose is not installed");
        return;
    }
    let out = Process::new("docker-compose")
        .args(["-f"])
        .arg(&path)
        .args(["config", "--quiet"])
        .output()
        .expect("run docker-compose");
    assert!(
        out.status.success(),
        "docker-compose config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Dockerfiles pass hadolint (from PyPI, installed by the set-up), and by their own parse:
/// the final stage runs as a numeric non-root user, every version is pinned, the base is an
/// argument with a tagged default.
#[test]
fn dockerfiles_pass_hadolint_and_pin_everything() {
    let dir = repo().join("docker");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read docker/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "Dockerfile"))
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        3,
        "flowsynth, flowsynth-cuda and moto: {files:?}"
    );
    let out = Process::new(python_tool("hadolint"))
        .args(&files)
        .output()
        .expect("run hadolint");
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for path in &files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string();
        let text = std::fs::read_to_string(path).expect("read");
        // Instructions with their continuation lines joined, comments dropped.
        let joined = text.replace("\\\n", " ");
        let instructions: Vec<(&str, &str)> = joined
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once(char::is_whitespace))
            .collect();
        let last_from = instructions
            .iter()
            .rposition(|(i, _)| i.eq_ignore_ascii_case("FROM"))
            .expect("FROM");
        let user = instructions[last_from..]
            .iter()
            .rev()
            .find(|(i, _)| i.eq_ignore_ascii_case("USER"))
            .map(|(_, u)| u.trim())
            .unwrap_or_else(|| panic!("{name}: the final stage sets no USER"));
        let uid: u32 = user
            .split(':')
            .next()
            .and_then(|u| u.parse().ok())
            .unwrap_or(0);
        assert!(
            uid >= 1000,
            "{name}: USER {user} is a numeric non-root user"
        );
        for (i, rest) in &instructions {
            if i.eq_ignore_ascii_case("FROM") {
                let image = rest.split_whitespace().next().unwrap_or_default();
                assert!(
                    image == "${BASE}",
                    "{name}: FROM {image}: the base comes from --build-arg BASE"
                );
            }
            if i.eq_ignore_ascii_case("ARG") {
                let (arg, default) = rest
                    .trim()
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{name}: ARG {rest} has a default"));
                assert!(
                    !default.is_empty() && !default.contains("latest"),
                    "{name}: ARG {arg}={default}"
                );
                if arg == "BASE" {
                    assert!(
                        split_tag(default).is_ok(),
                        "{name}: BASE default {default} is tagged"
                    );
                }
            }
            if i.eq_ignore_ascii_case("RUN") {
                for cmd in rest.split("&&") {
                    let words: Vec<&str> = cmd.split_whitespace().collect();
                    let pkgs: Vec<&str> = if let Some(at) =
                        words.windows(2).position(|w| w == ["apt-get", "install"])
                    {
                        words[at + 2..]
                            .iter()
                            .copied()
                            .filter(|w| !w.starts_with('-'))
                            .collect()
                    } else if let Some(at) = words.iter().position(|w| w.ends_with("pip")) {
                        if words.get(at + 1) != Some(&"install") {
                            continue;
                        }
                        words[at + 2..]
                            .iter()
                            .copied()
                            .filter(|w| !w.starts_with('-') && !w.starts_with('/'))
                            .collect()
                    } else {
                        continue;
                    };
                    assert!(!pkgs.is_empty(), "{name}: `{cmd}` installs something");
                    for p in pkgs {
                        assert!(
                            p.contains('='),
                            "{name}: `{p}` is not pinned to a version in `{}`",
                            cmd.trim()
                        );
                    }
                }
            }
        }
    }
}
