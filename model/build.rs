//! Embeds the libtorch library folder as an rpath so `target/*/flowsynth` runs without the user
//! exporting LD_LIBRARY_PATH. LIBTORCH comes from .cargo/config.toml (the set-up script's install)
//! or from the environment.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{libtorch}/lib");
    }
}
