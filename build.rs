//! Two build steps of the `flowsynth` binary:
//! - embeds the libtorch library folder as an rpath so `target/*/flowsynth` runs without the user
//!   exporting LD_LIBRARY_PATH (LIBTORCH comes from .cargo/config.toml, the set-up script's
//!   install, or from the environment);
//! - embeds every YAML file under `k8s/` (`$OUT_DIR/k8s_files.rs`), so `flowsynth k8s render`
//!   renders from the very kustomize tree that `kubectl kustomize` builds, not from a copy.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{libtorch}/lib");
    }
    if let Err(e) = embed_k8s() {
        panic!("cannot embed k8s/: {e}");
    }
}

fn embed_k8s() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect(&root, &root, &mut files)?;
    files.sort();
    let mut code = String::from("&[\n");
    for rel in &files {
        let abs = root.join(rel);
        println!("cargo:rerun-if-changed={}", abs.display());
        code.push_str(&format!(
            "    ({rel:?}, include_str!({:?})),\n",
            abs.display().to_string()
        ));
    }
    code.push(']');
    let out = std::env::var("OUT_DIR").map_err(std::io::Error::other)?;
    std::fs::write(Path::new(&out).join("k8s_files.rs"), code)
}

/// YAML files below `dir`, as paths relative to `root` with `/` separators.
fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            collect(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml")
            && let Ok(rel) = path.strip_prefix(root)
        {
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(parts.join("/"));
        }
    }
    Ok(())
}
