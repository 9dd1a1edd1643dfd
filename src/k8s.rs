//! `flowsynth k8s render`: Kubernetes manifests for the long-lived stack and for one training or
//! sampling job.
//!
//! The manifests are the kustomize tree in `k8s/`, embedded at build time (build.rs): this module
//! builds it the way `kubectl kustomize` does (resources, components, JSON 6902 patches,
//! namespace; a test checks the two agree on every overlay) and then sets what a job needs (its
//! name, worker count, images, the submitting client's arguments, the job file). There is no
//! second copy of any manifest: a change in `k8s/` is a change in `render`'s output.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_yaml::Value;

/// Every YAML file of `k8s/`, by path relative to it.
static FILES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/k8s_files.rs"));

/// The job name the templates in `k8s/jobs` carry; render replaces it.
const TEMPLATE_JOB: &str = "example";
/// The label that ties a job's objects together.
const JOB_LABEL: &str = "flowsynth.dev/job";
/// Kinds outside namespaces: the namespace transformer leaves them alone, as kustomize's does.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
];

fn file(path: &str) -> Option<&'static str> {
    FILES.iter().find(|(p, _)| *p == path).map(|(_, t)| *t)
}

/// The fields of a kustomization (or component) that the tree uses; any other field is refused,
/// so the tree cannot grow a feature that `render` would silently ignore.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Kustomization {
    api_version: String,
    kind: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    components: Vec<String>,
    #[serde(default)]
    patches: Vec<PatchRef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchRef {
    path: String,
    target: PatchTarget,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PatchTarget {
    kind: Option<String>,
    name: Option<String>,
    label_selector: Option<String>,
}

impl PatchTarget {
    fn matches(&self, doc: &Value) -> bool {
        let field = |path: &[&str]| get(doc, path).and_then(Value::as_str);
        if self
            .kind
            .as_deref()
            .is_some_and(|k| field(&["kind"]) != Some(k))
        {
            return false;
        }
        if self
            .name
            .as_deref()
            .is_some_and(|n| field(&["metadata", "name"]) != Some(n))
        {
            return false;
        }
        self.label_selector.as_deref().is_none_or(|sel| {
            sel.split(',').all(|term| {
                term.split_once('=').is_some_and(|(k, v)| {
                    field(&["metadata", "labels", k.trim()]) == Some(v.trim())
                })
            })
        })
    }
}

/// One JSON 6902 operation: the only patch form the tree uses, because it means the same here
/// and in kustomize (strategic merge would need every list's merge key).
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Op {
    Add { path: String, value: Value },
    Replace { path: String, value: Value },
    Remove { path: String },
}

impl Op {
    fn apply(&self, doc: &mut Value) -> Result<()> {
        let (path, value) = match self {
            Op::Add { path, value } | Op::Replace { path, value } => (path, Some(value)),
            Op::Remove { path } => (path, None),
        };
        let segments: Vec<String> = path
            .strip_prefix('/')
            .with_context(|| format!("path `{path}` does not start with /"))?
            .split('/')
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect();
        let Some((last, parents)) = segments.split_last() else {
            bail!("empty path");
        };
        let mut at = doc;
        for seg in parents {
            at = child_mut(at, seg).with_context(|| format!("`{path}`: no `{seg}`"))?;
        }
        let missing = || anyhow::anyhow!("`{path}`: no `{last}`");
        match (self, at) {
            (Op::Add { .. }, Value::Mapping(m)) => {
                m.insert(
                    Value::String(last.clone()),
                    value.cloned().unwrap_or_default(),
                );
            }
            (Op::Add { .. }, Value::Sequence(s)) => {
                let at = if last == "-" {
                    s.len()
                } else {
                    last.parse()
                        .ok()
                        .filter(|i| *i <= s.len())
                        .ok_or_else(missing)?
                };
                s.insert(at, value.cloned().unwrap_or_default());
            }
            (Op::Replace { .. }, v) => {
                *child_mut(v, last).ok_or_else(missing)? = value.cloned().unwrap_or_default();
            }
            (Op::Remove { .. }, Value::Mapping(m)) => {
                m.remove(last.as_str()).ok_or_else(missing)?;
            }
            (Op::Remove { .. }, Value::Sequence(s)) => {
                let i: usize = last
                    .parse()
                    .ok()
                    .filter(|i| *i < s.len())
                    .ok_or_else(missing)?;
                s.remove(i);
            }
            _ => bail!("`{path}`: the parent is neither a map nor a list"),
        }
        Ok(())
    }
}

fn child_mut<'a>(v: &'a mut Value, seg: &str) -> Option<&'a mut Value> {
    match v {
        Value::Mapping(m) => m.get_mut(seg),
        Value::Sequence(s) => s.get_mut(seg.parse::<usize>().ok()?),
        _ => None,
    }
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, seg| match v {
        Value::Mapping(m) => m.get(*seg),
        Value::Sequence(s) => s.get(seg.parse::<usize>().ok()?),
        _ => None,
    })
}

fn get_mut<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, seg| child_mut(v, seg))
}

/// `dir/rel` with `..` resolved, relative to `k8s/`.
fn join(dir: &str, rel: &str) -> String {
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for p in rel.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// The documents of one YAML file (empty documents skipped).
fn parse_docs(path: &str, text: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = Value::deserialize(doc).with_context(|| format!("k8s/{path}: invalid YAML"))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

fn kustomization(dir: &str, kind: &str) -> Result<Kustomization> {
    let path = join(dir, "kustomization.yaml");
    let text = file(&path).with_context(|| format!("k8s/{path}: not found"))?;
    let k: Kustomization = serde_yaml::from_str(text)
        .with_context(|| format!("k8s/{path}: unsupported kustomization"))?;
    if k.kind != kind || !k.api_version.starts_with("kustomize.config.k8s.io/") {
        bail!(
            "k8s/{path}: is a {} ({}), expected a kustomize {kind}",
            k.kind,
            k.api_version
        );
    }
    Ok(k)
}

/// Builds the kustomization in `dir` (relative to `k8s/`), as `kubectl kustomize k8s/<dir>`.
pub fn build(dir: &str) -> Result<Vec<Value>> {
    let k = kustomization(dir, "Kustomization")?;
    let mut docs = Vec::new();
    for r in &k.resources {
        let path = join(dir, r);
        match file(&path) {
            Some(text) => docs.extend(parse_docs(&path, text)?),
            None => docs.extend(build(&path)?),
        }
    }
    for c in &k.components {
        apply_component(&join(dir, c), &mut docs)?;
    }
    apply_patches(dir, &k.patches, &mut docs)?;
    if let Some(ns) = &k.namespace {
        set_namespace(&mut docs, ns);
    }
    Ok(docs)
}

/// Applies the component in `dir` (its resources and patches) to `docs`.
fn apply_component(dir: &str, docs: &mut Vec<Value>) -> Result<()> {
    let k = kustomization(dir, "Component")?;
    for r in &k.resources {
        let path = join(dir, r);
        let text = file(&path).with_context(|| format!("k8s/{path}: not found"))?;
        docs.extend(parse_docs(&path, text)?);
    }
    apply_patches(dir, &k.patches, docs)
}

fn apply_patches(dir: &str, patches: &[PatchRef], docs: &mut [Value]) -> Result<()> {
    for p in patches {
        let path = join(dir, &p.path);
        let text = file(&path).with_context(|| format!("k8s/{path}: not found"))?;
        let ops: Vec<Op> = serde_yaml::from_str(text)
            .with_context(|| format!("k8s/{path}: not a list of JSON 6902 operations"))?;
        for doc in docs.iter_mut().filter(|d| p.target.matches(d)) {
            let what = object_name(doc);
            for op in &ops {
                op.apply(doc)
                    .with_context(|| format!("k8s/{path}: cannot patch {what}"))?;
            }
        }
    }
    Ok(())
}

fn object_name(doc: &Value) -> String {
    let s = |p: &[&str]| get(doc, p).and_then(Value::as_str).unwrap_or("?");
    format!("{}/{}", s(&["kind"]), s(&["metadata", "name"]))
}

fn set_namespace(docs: &mut [Value], ns: &str) {
    for doc in docs {
        let kind = get(doc, &["kind"])
            .and_then(Value::as_str)
            .unwrap_or_default();
        if CLUSTER_SCOPED.contains(&kind) {
            continue;
        }
        if let Some(Value::Mapping(meta)) = get_mut(doc, &["metadata"]) {
            meta.insert("namespace".into(), ns.into());
        }
    }
}

/// Where and with what the manifests run.
pub struct Target {
    /// Namespace of every object (and the Namespace object itself with the stack).
    pub namespace: String,
    /// Image of the coordinator and the clients, and of CPU workers.
    pub image: String,
    /// Image of GPU workers (default: `image` with `-cuda` added to its repository name).
    pub worker_image: Option<String>,
    /// GPU workers (k8s/components/gpu) instead of CPU workers (k8s/components/cpu).
    pub gpu: bool,
}

impl Target {
    fn component(&self) -> &'static str {
        if self.gpu {
            "components/gpu"
        } else {
            "components/cpu"
        }
    }

    fn cuda_image(&self) -> Result<String> {
        if let Some(image) = &self.worker_image {
            return Ok(image.clone());
        }
        let (repo, tag) = split_tag(&self.image)?;
        Ok(format!("{repo}-cuda{tag}"))
    }
}

/// `repo` and `:tag` (or `@digest`) of an image reference; refuses untagged and `latest`
/// references, which make a cluster run whatever was pushed last.
fn split_tag(image: &str) -> Result<(&str, &str)> {
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    let at = image
        .find('@')
        .or_else(|| image[name_start..].rfind(':').map(|i| i + name_start));
    match at {
        Some(i) if &image[i..] != ":latest" && image.len() > i + 1 => Ok(image.split_at(i)),
        _ => bail!(
            "image `{image}`: give a version tag or a digest (not `latest`), e.g. flowsynth:{}",
            env!("CARGO_PKG_VERSION")
        ),
    }
}

/// The image the templates name, which `render` replaces.
pub fn default_image() -> String {
    format!("flowsynth:{}", env!("CARGO_PKG_VERSION"))
}

/// One job to render.
pub struct JobManifest {
    /// `train` or `sample`: which of `k8s/jobs/*`.
    pub kind: &'static str,
    /// Name of the job's objects: `flowsynth-<name>-workers`, `flowsynth-<name>-submit`.
    pub name: String,
    pub workers: u32,
    /// Arguments of `flowsynth submit <kind>` other than `--workers` and `--wait`.
    pub submit_args: Vec<String>,
    /// Training: the job file, mounted for the client's `--config`.
    pub job_toml: Option<String>,
    /// Also print the stack (namespace, coordinator, ...), for a cluster that has none yet.
    pub with_stack: bool,
}

/// Where the client of a training job reads its job file (k8s/jobs/train/submit.yaml mounts it).
pub const JOB_FILE: &str = "/etc/flowsynth/job/job.toml";

/// The default job name: the kind and the time, so two renders do not collide.
pub fn default_name(kind: &str) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{kind}-{secs}")
}

/// Checks a job name: it becomes part of object and pod host names (at most 63 characters:
/// `flowsynth-<name>-workers-<index>`), so a DNS label of at most 36 characters.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 36
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        bail!(
            "--name `{name}`: use 1 to 36 lowercase letters, digits and dashes, starting and \
             ending with a letter or digit (it becomes part of Kubernetes object names)"
        );
    }
    Ok(())
}

/// Refuses locations a pod cannot reach: local paths of the machine that renders.
pub fn check_url(flag: &str, url: &str) -> Result<()> {
    let scheme = url.split_once("://").map(|(s, _)| s);
    match scheme {
        Some("s3" | "gs" | "az" | "abfs" | "http" | "https") => Ok(()),
        _ => bail!(
            "{flag} `{url}`: give an object-store URL the pods can reach (s3://, gs://, az://); \
             a local path means nothing inside a pod"
        ),
    }
}

/// The stack: namespace, service account, configuration, coordinator, network policies.
pub fn render_stack(t: &Target) -> Result<Vec<Value>> {
    let mut docs = build("base")?;
    apply_component(t.component(), &mut docs)?;
    finish(t, &mut docs)?;
    Ok(docs)
}

/// One job: its workers (an Indexed Job), the client that submits and follows it, its job file;
/// with `with_stack`, the stack first.
pub fn render_job(t: &Target, job: &JobManifest) -> Result<Vec<Value>> {
    check_name(&job.name)?;
    if job.workers == 0 {
        bail!("--workers 0: a job needs at least one worker");
    }
    let mut docs = if job.with_stack {
        build("base")?
    } else {
        Vec::new()
    };
    docs.extend(build(&format!("jobs/{}", job.kind))?);
    apply_component(t.component(), &mut docs)?;
    let (mut workers, mut client) = (false, false);
    for doc in &mut docs {
        match set_job(doc, job)? {
            Some(Part::Workers) => workers = true,
            Some(Part::Client) => client = true,
            None => {}
        }
    }
    if !(workers && client) {
        bail!(
            "k8s/jobs/{}: the template lacks its worker or submit Job",
            job.kind
        );
    }
    finish(t, &mut docs)?;
    Ok(docs)
}

/// The parts of a job template that `render` must find.
enum Part {
    Workers,
    Client,
}

/// Gives one object of the job template the job's name and settings; says which part it was.
fn set_job(doc: &mut Value, job: &JobManifest) -> Result<Option<Part>> {
    if get(doc, &["metadata", "labels", JOB_LABEL]).and_then(Value::as_str) != Some(TEMPLATE_JOB) {
        return Ok(None);
    }
    let (template, named) = (
        format!("flowsynth-{TEMPLATE_JOB}-"),
        format!("flowsynth-{}-", job.name),
    );
    for path in [
        &["metadata", "labels", JOB_LABEL][..],
        &["spec", "template", "metadata", "labels", JOB_LABEL],
    ] {
        if let Some(v) = get_mut(doc, path) {
            *v = job.name.clone().into();
        }
    }
    rename(get_mut(doc, &["metadata", "name"]), &template, &named);
    if let Some(Value::Sequence(volumes)) = get_mut(doc, &["spec", "template", "spec", "volumes"]) {
        for v in volumes {
            rename(get_mut(v, &["configMap", "name"]), &template, &named);
        }
    }
    let kind = get(doc, &["kind"])
        .and_then(Value::as_str)
        .unwrap_or_default();
    let component = get(doc, &["metadata", "labels", "app.kubernetes.io/component"])
        .and_then(Value::as_str)
        .unwrap_or_default();
    match (kind, component) {
        ("Job", "worker") => {
            if let Some(Value::Mapping(spec)) = get_mut(doc, &["spec"]) {
                let n = Value::Number(u64::from(job.workers).into());
                spec.insert("completions".into(), n.clone());
                spec.insert("parallelism".into(), n);
            }
            Ok(Some(Part::Workers))
        }
        ("Job", "client") => {
            let c = get_mut(
                doc,
                &["spec", "template", "spec", "containers", "0", "args"],
            )
            .context("k8s/jobs: the submit Job has no container args")?;
            let mut args = vec!["submit".to_string(), job.kind.to_string()];
            args.extend(job.submit_args.iter().cloned());
            args.push(format!("--workers={}", job.workers));
            args.push("--wait".into());
            *c = Value::Sequence(args.into_iter().map(Value::from).collect());
            Ok(Some(Part::Client))
        }
        ("ConfigMap", _) => {
            if let (Some(toml), Some(Value::Mapping(data))) =
                (&job.job_toml, get_mut(doc, &["data"]))
            {
                data.insert("job.toml".into(), toml.clone().into());
            }
            Ok(None)
        }
        _ => Ok(None),
    }
}

fn rename(v: Option<&mut Value>, from: &str, to: &str) {
    if let Some(v) = v
        && let Some(rest) = v.as_str().and_then(|s| s.strip_prefix(from))
    {
        *v = format!("{to}{rest}").into();
    }
}

/// Images and namespace, the last step of every render.
fn finish(t: &Target, docs: &mut [Value]) -> Result<()> {
    split_tag(&t.image)?;
    if !t.gpu && t.worker_image.is_some() {
        bail!(
            "--worker-image is the image of GPU workers: give it with --gpu (CPU workers use --image)"
        );
    }
    let cuda = if t.gpu {
        t.cuda_image()?
    } else {
        t.image.clone()
    };
    split_tag(&cuda)?;
    for doc in docs.iter_mut() {
        let Some(Value::Mapping(pod)) = pod_spec_mut(doc) else {
            continue;
        };
        for list in ["initContainers", "containers"] {
            let Some(Value::Sequence(containers)) = pod.get_mut(list) else {
                continue;
            };
            for c in containers {
                let Some(image) = get_mut(c, &["image"]) else {
                    continue;
                };
                let repo = image
                    .as_str()
                    .and_then(|i| split_tag(i).ok())
                    .map(|(r, _)| r);
                match repo {
                    Some("flowsynth") => *image = t.image.clone().into(),
                    Some("flowsynth-cuda") => *image = cuda.clone().into(),
                    _ => {}
                }
            }
        }
    }
    set_namespace(docs, &t.namespace);
    for doc in docs.iter_mut() {
        if get(doc, &["kind"]).and_then(Value::as_str) == Some("Namespace")
            && let Some(name) = get_mut(doc, &["metadata", "name"])
        {
            *name = t.namespace.clone().into();
        }
    }
    Ok(())
}

/// The pod spec of a workload object (Deployment, Job, ...), if it has one.
fn pod_spec_mut(doc: &mut Value) -> Option<&mut Value> {
    get_mut(doc, &["spec", "template", "spec"])
}

/// Multi-document YAML, one `---` before each document.
pub fn to_yaml(docs: &[Value]) -> Result<String> {
    let mut out = String::new();
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(doc).context("cannot write YAML")?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
