//! NCCL collectives on CUDA device memory, loaded at run time.
//!
//! # Why it looks like this
//!
//! - **Foreign pointers.** The tensors belong to libtorch (tch): the collective receives a raw
//!   device address ([`Buffer::Device`]) and hands it to NCCL as is. It never allocates, copies or
//!   frees device memory, so it wraps no pointer in an owning type (cudarc's `CudaSlice` would
//!   free it on drop); the C API is called directly.
//! - **Streams.** tch exposes no CUDA streams; its kernels run on the legacy default stream (the
//!   null stream) of the current device. NCCL calls are enqueued on that same stream, so they
//!   start after the kernels that produced the gradients and before any kernel queued later, and
//!   the call waits for the stream before returning: when `all_reduce_sum` returns, the buffer
//!   holds the sum. The wait polls `cudaStreamQuery` so that it can watch an abort flag and a
//!   timeout ([`Nccl::with_abort`], [`Nccl::with_timeout`]) and call `ncclCommAbort` instead of
//!   hanging on a dead peer.
//! - **Loading.** The bindings' types (`ncclUniqueId`, `ncclComm_t`, the data type and reduction
//!   enums) come from the `cudarc` crate's `nccl::sys`, but the functions are resolved here with
//!   `libloading` from a library file this module finds itself, because cudarc's loader only
//!   tries fixed names (`libnccl.so`, `libnccl.so.<CUDA major>`, `libnccl.so.12`, ...; no
//!   `libnccl.so.2`, no environment override) through the dynamic loader's search path, which is
//!   fixed when the process starts, and panics when none loads. The `nvidia-nccl-cu13` wheel
//!   ships only `libnccl.so.2`. See [`Nccl::available`] for the search order.
//!
//! Nothing here needs CUDA at build time; on a host without NCCL, [`Nccl::available`] is false
//! and [`Nccl::new`] returns [`Error::NcclUnavailable`].

use std::ffi::{CStr, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cudarc::nccl::sys::{cudaStream_t, ncclComm_t, ncclDataType_t, ncclRedOp_t, ncclUniqueId};

use crate::{Buffer, Collective, DType, Error, Membership, Result};

/// Names of the environment variables that point at the libraries explicitly (a file, or a
/// directory holding it).
pub const NCCL_LIB_ENV: &str = "FLOWSYNTH_NCCL_LIB";
pub const CUDART_LIB_ENV: &str = "FLOWSYNTH_CUDART_LIB";

/// The NCCL unique id of a communicator (128 bytes), created by rank 0 with
/// [`Nccl::unique_id`] and handed to every rank by the rendezvous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NcclUniqueId(pub Vec<u8>);

/// `ncclResult_t` values are read as plain integers: a value this build does not know (a newer
/// NCCL) must not become an invalid Rust enum.
type NcclStatus = u32;
const NCCL_SUCCESS: NcclStatus = 0;
const NCCL_IN_PROGRESS: NcclStatus = 7;
type CudaStatus = c_int;
const CUDA_SUCCESS: CudaStatus = 0;
const CUDA_ERROR_NOT_READY: CudaStatus = 600;

/// The NCCL and CUDA runtime entry points this module uses.
struct Api {
    nccl_path: String,
    get_unique_id: unsafe extern "C" fn(*mut ncclUniqueId) -> NcclStatus,
    comm_init_rank: unsafe extern "C" fn(*mut ncclComm_t, c_int, ncclUniqueId, c_int) -> NcclStatus,
    all_reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        ncclDataType_t,
        ncclRedOp_t,
        ncclComm_t,
        cudaStream_t,
    ) -> NcclStatus,
    broadcast: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        ncclDataType_t,
        c_int,
        ncclComm_t,
        cudaStream_t,
    ) -> NcclStatus,
    comm_destroy: unsafe extern "C" fn(ncclComm_t) -> NcclStatus,
    comm_abort: unsafe extern "C" fn(ncclComm_t) -> NcclStatus,
    comm_get_async_error: unsafe extern "C" fn(ncclComm_t, *mut NcclStatus) -> NcclStatus,
    get_error_string: unsafe extern "C" fn(NcclStatus) -> *const c_char,
    get_version: unsafe extern "C" fn(*mut c_int) -> NcclStatus,
    set_device: unsafe extern "C" fn(c_int) -> CudaStatus,
    stream_query: unsafe extern "C" fn(cudaStream_t) -> CudaStatus,
    get_error_name: unsafe extern "C" fn(CudaStatus) -> *const c_char,
    // Keep the libraries loaded as long as the process runs (the function pointers above point
    // into them).
    _nccl: libloading::Library,
    _cudart: libloading::Library,
}

fn api() -> std::result::Result<&'static Api, String> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    API.get_or_init(|| {
        // Loading foreign code must never take the process down: a panic becomes "unavailable".
        std::panic::catch_unwind(load_api).unwrap_or_else(|_| Err("loading NCCL panicked".into()))
    })
    .as_ref()
    .map_err(Clone::clone)
}

fn load_api() -> std::result::Result<Api, String> {
    let (nccl, nccl_path) = open_library(
        "NCCL",
        NCCL_LIB_ENV,
        &["libnccl.so.2", "libnccl.so"],
        &["nvidia/nccl/lib"],
    )?;
    let (cudart, _) = open_library(
        "the CUDA runtime",
        CUDART_LIB_ENV,
        &["libcudart.so.13", "libcudart.so.12", "libcudart.so"],
        &["nvidia/cu13/lib", "nvidia/cuda_runtime/lib"],
    )?;
    /// Copies a function pointer out of a library.
    ///
    /// # Safety
    /// `T` must be the symbol's true C signature.
    unsafe fn sym<T: Copy>(
        lib: &libloading::Library,
        what: &str,
        name: &str,
    ) -> std::result::Result<T, String> {
        // SAFETY: forwarded to the caller.
        unsafe { lib.get::<T>(name.as_bytes()) }
            .map(|s| *s)
            .map_err(|e| format!("{what} has no symbol {name}: {e}"))
    }
    // SAFETY: the signatures are those of nccl.h (2.18 and later) and cuda_runtime_api.h, with
    // enums returned as integers.
    unsafe {
        Ok(Api {
            get_unique_id: sym(&nccl, &nccl_path, "ncclGetUniqueId")?,
            comm_init_rank: sym(&nccl, &nccl_path, "ncclCommInitRank")?,
            all_reduce: sym(&nccl, &nccl_path, "ncclAllReduce")?,
            broadcast: sym(&nccl, &nccl_path, "ncclBroadcast")?,
            comm_destroy: sym(&nccl, &nccl_path, "ncclCommDestroy")?,
            comm_abort: sym(&nccl, &nccl_path, "ncclCommAbort")?,
            comm_get_async_error: sym(&nccl, &nccl_path, "ncclCommGetAsyncError")?,
            get_error_string: sym(&nccl, &nccl_path, "ncclGetErrorString")?,
            get_version: sym(&nccl, &nccl_path, "ncclGetVersion")?,
            set_device: sym(&cudart, "libcudart", "cudaSetDevice")?,
            stream_query: sym(&cudart, "libcudart", "cudaStreamQuery")?,
            get_error_name: sym(&cudart, "libcudart", "cudaGetErrorName")?,
            nccl_path,
            _nccl: nccl,
            _cudart: cudart,
        })
    }
}

/// Finds and opens a library: `env` (a file or a directory) if set, else `names` through the
/// dynamic loader's search (which also finds a library already loaded by libtorch under its
/// SONAME), else `subdirs` of the Python package folders this process can know about.
fn open_library(
    what: &str,
    env: &str,
    names: &[&str],
    subdirs: &[&str],
) -> std::result::Result<(libloading::Library, String), String> {
    let mut tried = Vec::new();
    let open = |path: &Path, tried: &mut Vec<String>| {
        // SAFETY: loading NCCL / libcudart runs their initialisers, which have no preconditions.
        match unsafe { libloading::Library::new(path) } {
            Ok(lib) => Some((lib, path.display().to_string())),
            Err(e) => {
                // libloading's message is only "dlopen failed"; the reason is its source.
                let why =
                    std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
                tried.push(format!("{}: {why}", path.display()));
                None
            }
        }
    };
    if let Some(value) = std::env::var_os(env).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(value);
        let candidates: Vec<PathBuf> = if p.is_dir() {
            names.iter().map(|n| p.join(n)).collect()
        } else {
            vec![p]
        };
        for c in &candidates {
            if let Some(found) = open(c, &mut tried) {
                return Ok(found);
            }
        }
        return Err(format!(
            "{what} could not be loaded from {env}: {}",
            tried.join("; ")
        ));
    }
    for name in names {
        if let Some(found) = open(Path::new(name), &mut tried) {
            return Ok(found);
        }
    }
    for dir in package_dirs() {
        for sub in subdirs {
            for name in names {
                let p = dir.join(sub).join(name);
                if p.exists()
                    && let Some(found) = open(&p, &mut tried)
                {
                    return Ok(found);
                }
            }
        }
    }
    Err(format!(
        "{what} not found (tried {}); set {env}=/path/to/{} (pip wheels put it in \
         site-packages/{})",
        tried.join("; "),
        names[0],
        subdirs[0]
    ))
}

/// Folders that may hold pip's `nvidia/...` packages: `$LIBTORCH/..` (a torch wheel's
/// site-packages), `$PYTHONPATH`, `$VIRTUAL_ENV` and `$CONDA_PREFIX` site-packages, and
/// `.deps/torch` beside any ancestor of the executable (this repository's layout).
fn package_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(t) = std::env::var_os("LIBTORCH")
        && let Some(parent) = PathBuf::from(t).parent()
    {
        dirs.push(parent.to_path_buf());
    }
    if let Some(pp) = std::env::var_os("PYTHONPATH") {
        dirs.extend(std::env::split_paths(&pp));
    }
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(prefix) = std::env::var_os(var) {
            let lib = PathBuf::from(prefix).join("lib");
            if let Ok(entries) = std::fs::read_dir(&lib) {
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().starts_with("python") {
                        dirs.push(e.path().join("site-packages"));
                    }
                }
            }
        }
    }
    if let Ok(exe) = std::env::current_exe() {
        for ancestor in exe.ancestors().skip(1) {
            dirs.push(ancestor.join(".deps/torch"));
        }
    }
    dirs
}

fn c_str(p: *const c_char) -> String {
    if p.is_null() {
        return "unknown error".into();
    }
    // SAFETY: NCCL and CUDA return static NUL-terminated strings.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

impl Api {
    fn nccl_message(&self, status: NcclStatus) -> String {
        // SAFETY: ncclGetErrorString accepts any value.
        c_str(unsafe { (self.get_error_string)(status) })
    }

    fn cuda_message(&self, status: CudaStatus) -> String {
        // SAFETY: cudaGetErrorName accepts any value.
        c_str(unsafe { (self.get_error_name)(status) })
    }
}

fn unavailable(reason: String) -> Error {
    Error::NcclUnavailable { reason }
}

/// An NCCL communicator of one rank, bound to one CUDA device.
pub struct Nccl {
    api: &'static Api,
    comm: ncclComm_t,
    me: Membership,
    device: usize,
    abort: Option<Arc<AtomicBool>>,
    timeout: Duration,
    /// The first failure; once set, every operation returns it.
    failed: Option<Error>,
}

// SAFETY: an NCCL communicator may be used from any thread, one call at a time, which `&mut self`
// guarantees; the CUDA calls name the device explicitly.
unsafe impl Send for Nccl {}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nccl")
            .field("rank", &self.me.rank)
            .field("world_size", &self.me.world_size)
            .field("device", &self.device)
            .field("library", &self.api.nccl_path)
            .finish()
    }
}

impl Nccl {
    /// Whether libnccl (and the CUDA runtime it is driven with) can be loaded on this host.
    /// False on CPU-only machines; never panics.
    ///
    /// Search order for NCCL: `$FLOWSYNTH_NCCL_LIB` (a file such as
    /// `.../site-packages/nvidia/nccl/lib/libnccl.so.2`, or its directory; if set, nothing else is
    /// tried), then `libnccl.so.2` and `libnccl.so` through the dynamic loader (so
    /// `LD_LIBRARY_PATH`, the executable's rpath, the ld cache, and a copy libtorch_cuda already
    /// loaded), then `nvidia/nccl/lib/` under `$LIBTORCH/..`, `$PYTHONPATH`, `$VIRTUAL_ENV` and
    /// `$CONDA_PREFIX` site-packages and `.deps/torch` above the executable. The CUDA runtime
    /// likewise: `$FLOWSYNTH_CUDART_LIB`, `libcudart.so.13` (libtorch has normally loaded it
    /// already), then `nvidia/cu13/lib/` in the same folders.
    pub fn available() -> bool {
        api().is_ok()
    }

    /// Why [`Nccl::available`] is false (`None` when it is true).
    pub fn unavailable_reason() -> Option<String> {
        api().err()
    }

    /// NCCL's version as `major * 10000 + minor * 100 + patch` (for 2.x), if loaded.
    pub fn version() -> Result<i32> {
        let api = api().map_err(unavailable)?;
        let mut v: c_int = 0;
        // SAFETY: `v` is a valid out-pointer.
        let status = unsafe { (api.get_version)(&mut v) };
        if status != NCCL_SUCCESS {
            return Err(unavailable(format!(
                "ncclGetVersion failed: {}",
                api.nccl_message(status)
            )));
        }
        Ok(v)
    }

    /// Creates the id of a new communicator. Call on rank 0 only, in the process that will then
    /// call [`Nccl::new`] as rank 0 (the id names a bootstrap socket of this process).
    pub fn unique_id() -> Result<NcclUniqueId> {
        let api = api().map_err(unavailable)?;
        let mut id = ncclUniqueId { internal: [0; 128] };
        // SAFETY: `id` is a valid out-pointer.
        let status = unsafe { (api.get_unique_id)(&mut id) };
        if status != NCCL_SUCCESS {
            return Err(Error::Nccl {
                rank: 0,
                generation: 0,
                call: "ncclGetUniqueId",
                code: status,
                message: api.nccl_message(status),
            });
        }
        Ok(NcclUniqueId(id.internal.iter().map(|&c| c as u8).collect()))
    }

    /// `device` = CUDA ordinal. Must be called on every rank with the same id; blocks until all
    /// `world_size` ranks have joined.
    pub fn new(membership: Membership, id: &NcclUniqueId, device: usize) -> Result<Nccl> {
        membership.validate()?;
        let api = api().map_err(unavailable)?;
        if id.0.len() != 128 {
            return Err(Error::InvalidMembership {
                reason: format!("an NCCL unique id has 128 bytes, this one {}", id.0.len()),
            });
        }
        let mut raw = ncclUniqueId { internal: [0; 128] };
        for (dst, &src) in raw.internal.iter_mut().zip(&id.0) {
            *dst = src as c_char;
        }
        let (world, rank, ordinal) = match (
            c_int::try_from(membership.world_size),
            c_int::try_from(membership.rank),
            c_int::try_from(device),
        ) {
            (Ok(w), Ok(r), Ok(d)) => (w, r, d),
            _ => {
                return Err(Error::InvalidMembership {
                    reason: "rank, world size or device does not fit a C int".into(),
                });
            }
        };
        // SAFETY: plain call.
        let status = unsafe { (api.set_device)(ordinal) };
        if status != CUDA_SUCCESS {
            return Err(Error::Cuda {
                rank: membership.rank,
                call: "cudaSetDevice",
                code: status,
                message: format!("device {device}: {}", api.cuda_message(status)),
            });
        }
        let mut comm: ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` is a valid out-pointer; `raw` is a unique id by value.
        let status = unsafe { (api.comm_init_rank)(&mut comm, world, raw, rank) };
        if status != NCCL_SUCCESS {
            return Err(Error::Nccl {
                rank: membership.rank,
                generation: membership.generation,
                call: "ncclCommInitRank",
                code: status,
                message: api.nccl_message(status),
            });
        }
        tracing::debug!(
            "NCCL rank {}/{} on cuda:{device} ready ({})",
            membership.rank,
            membership.world_size,
            api.nccl_path
        );
        Ok(Nccl {
            api,
            comm,
            me: membership,
            device,
            abort: None,
            timeout: Duration::from_secs(600),
            failed: None,
        })
    }

    /// Operations fail with [`Error::Aborted`] (and abort the communicator) once `abort` is set.
    pub fn with_abort(mut self, abort: Arc<AtomicBool>) -> Self {
        self.abort = Some(abort);
        self
    }

    /// Longest wait for one operation to complete (default 600 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn nccl_error(&self, call: &'static str, status: NcclStatus) -> Error {
        Error::Nccl {
            rank: self.me.rank,
            generation: self.me.generation,
            call,
            code: status,
            message: self.api.nccl_message(status),
        }
    }

    fn cuda_error(&self, call: &'static str, status: CudaStatus) -> Error {
        Error::Cuda {
            rank: self.me.rank,
            call,
            code: status,
            message: self.api.cuda_message(status),
        }
    }

    /// [`Error::Aborted`] once the abort flag is set.
    fn check_abort(&self, op: &'static str) -> Result<()> {
        if self
            .abort
            .as_ref()
            .is_some_and(|a| a.load(Ordering::Relaxed))
        {
            return Err(Error::Aborted {
                rank: self.me.rank,
                generation: self.me.generation,
                op,
            });
        }
        Ok(())
    }

    /// Waits for the legacy default stream, watching NCCL's asynchronous errors, the abort flag
    /// and the timeout.
    fn wait_stream(&self, op: &'static str) -> Result<()> {
        let start = Instant::now();
        let mut pause = Duration::from_micros(20);
        loop {
            // SAFETY: querying the null stream of the current device.
            let status = unsafe { (self.api.stream_query)(std::ptr::null_mut()) };
            match status {
                CUDA_SUCCESS => return Ok(()),
                CUDA_ERROR_NOT_READY => {}
                other => return Err(self.cuda_error("cudaStreamQuery", other)),
            }
            let mut async_status: NcclStatus = NCCL_SUCCESS;
            // SAFETY: valid communicator and out-pointer.
            let status = unsafe { (self.api.comm_get_async_error)(self.comm, &mut async_status) };
            if status != NCCL_SUCCESS {
                return Err(self.nccl_error("ncclCommGetAsyncError", status));
            }
            if async_status != NCCL_SUCCESS && async_status != NCCL_IN_PROGRESS {
                return Err(self.nccl_error(op, async_status));
            }
            self.check_abort(op)?;
            if start.elapsed() >= self.timeout {
                return Err(Error::Timeout {
                    rank: self.me.rank,
                    generation: self.me.generation,
                    op,
                    peer_rank: self.me.rank,
                    peer: format!("NCCL on cuda:{}", self.device),
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }

    /// Runs one enqueue + wait with the sticky-error rule.
    fn run(
        &mut self,
        op: &'static str,
        buf: Buffer<'_>,
        enqueue: impl FnOnce(&Api, *mut c_void, usize, ncclDataType_t, ncclComm_t) -> NcclStatus,
    ) -> Result<()> {
        let Buffer::Device { ptr, len, dtype } = buf else {
            return Err(Error::UnsupportedBuffer {
                backend: "nccl",
                buffer: "host",
                reason:
                    "NCCL needs device memory: pass Buffer::Device with the tensor's CUDA address, \
                         or use the TCP ring for CPU tensors"
                        .into(),
            });
        };
        if let Some(cause) = &self.failed {
            return Err(Error::Poisoned {
                rank: self.me.rank,
                generation: self.me.generation,
                cause: Box::new(cause.clone()),
            });
        }
        if len == 0 {
            return Ok(());
        }
        let result = self.enqueue_and_wait(op, ptr, len, dtype, enqueue);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
            // Unblock the peers and free NCCL's resources; the communicator is not used again.
            // SAFETY: valid communicator, aborted once (`comm` is nulled).
            unsafe { (self.api.comm_abort)(self.comm) };
            self.comm = std::ptr::null_mut();
        }
        result
    }

    fn enqueue_and_wait(
        &mut self,
        op: &'static str,
        ptr: u64,
        len: usize,
        dtype: DType,
        enqueue: impl FnOnce(&Api, *mut c_void, usize, ncclDataType_t, ncclComm_t) -> NcclStatus,
    ) -> Result<()> {
        self.check_abort(op)?;
        // The calling thread may not have this device current.
        // SAFETY: plain call.
        let status = unsafe { (self.api.set_device)(self.device as c_int) };
        if status != CUDA_SUCCESS {
            return Err(self.cuda_error("cudaSetDevice", status));
        }
        let nccl_type = match dtype {
            DType::F32 => ncclDataType_t::ncclFloat32,
            DType::F64 => ncclDataType_t::ncclFloat64,
        };
        let status = enqueue(self.api, ptr as *mut c_void, len, nccl_type, self.comm);
        if status != NCCL_SUCCESS {
            return Err(self.nccl_error(op, status));
        }
        self.wait_stream(op)
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.me.rank
    }

    fn world_size(&self) -> usize {
        self.me.world_size
    }

    fn backend(&self) -> &'static str {
        "nccl"
    }

    fn all_reduce_sum(&mut self, buf: Buffer<'_>) -> Result<()> {
        self.run("ncclAllReduce", buf, |api, ptr, len, ty, comm| {
            // SAFETY: `ptr` is the caller's device buffer of `len` elements of `ty` (in place);
            // the null stream is the legacy default stream.
            unsafe {
                (api.all_reduce)(
                    ptr,
                    ptr,
                    len,
                    ty,
                    ncclRedOp_t::ncclSum,
                    comm,
                    std::ptr::null_mut(),
                )
            }
        })
    }

    fn broadcast(&mut self, buf: Buffer<'_>, root: usize) -> Result<()> {
        if root >= self.me.world_size {
            return Err(Error::InvalidRoot {
                root,
                world_size: self.me.world_size,
            });
        }
        let root = root as c_int;
        self.run("ncclBroadcast", buf, |api, ptr, len, ty, comm| {
            // SAFETY: as for all-reduce.
            unsafe { (api.broadcast)(ptr, ptr, len, ty, root, comm, std::ptr::null_mut()) }
        })
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        if !self.comm.is_null() {
            // SAFETY: valid communicator, destroyed once; no operation is in flight (every
            // operation waits for its stream).
            unsafe { (self.api.comm_destroy)(self.comm) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_lists_what_was_tried_and_the_variable_to_set() {
        let err = open_library(
            "a test library",
            "FLOWSYNTH_TEST_UNSET_LIB_VARIABLE",
            &["libflowsynth-does-not-exist.so.7"],
            &["nvidia/nothing/lib"],
        )
        .expect_err("nothing to load");
        assert!(err.contains("libflowsynth-does-not-exist.so.7"), "{err}");
        assert!(err.contains("FLOWSYNTH_TEST_UNSET_LIB_VARIABLE="), "{err}");
    }

    #[test]
    fn an_explicit_location_that_fails_is_reported_without_falling_back() {
        // HOME is a directory without the library: the explicit setting wins and is reported.
        let err = open_library(
            "a test library",
            "HOME",
            &["libflowsynth-does-not-exist.so.7"],
            &[],
        )
        .expect_err("nothing to load");
        assert!(err.contains("could not be loaded from HOME"), "{err}");
    }
}
