# Sourced by the benchmarks whose same-run reference is PyTorch (bench/allreduce_vs_gloo.sh,
# bench/train_vs_pytorch.sh): makes `python3` import torch 2.11.0, the wheel scripts/setup-libtorch.sh
# put in .deps/torch (the libtorch flowsynth links), and exports PYTHONPATH / LD_LIBRARY_PATH.
# Importing torch in Python loads libtorch_cuda.so, which links cuDNN, cuBLAS, NCCL, ... even on a
# CPU: those libraries (and torch's pure-Python dependencies) are installed beside it, once
# (about 2.3 GB). Needs $root.
[ -d "$root/.deps/torch/torch" ] || { echo "bench: libtorch missing; run make build first" >&2; exit 1; }
torch_py="$root/.deps/bench-torch"
torch_pylibs() { ls -d "$torch_py"/nvidia/*/lib 2>/dev/null | paste -sd: -; }
torch_ok() {
  LD_LIBRARY_PATH="$(torch_pylibs)" PYTHONPATH="$root/.deps/torch:$torch_py" \
    python3 -c "import numpy, torch.distributed as d; assert d.is_gloo_available()" 2>/dev/null
}
if ! torch_ok; then
  echo "bench: installing torch's runtime libraries into $torch_py (about 2.3 GB, once)" >&2
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --target "$torch_py" --upgrade \
    "cuda-toolkit[cublas,cufft,cufile,curand,cusparse]==13.0.2" nvidia-cudnn-cu13==9.19.0.56 \
    nvidia-cusparselt-cu13==0.8.0 nvidia-nccl-cu13==2.28.9 nvidia-nvshmem-cu13==3.4.5 \
    typing_extensions sympy networkx jinja2 filelock fsspec numpy
  torch_ok || { echo "bench: torch with gloo still does not import" >&2; exit 1; }
fi
export LD_LIBRARY_PATH="$(torch_pylibs)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$root/.deps/torch:$torch_py"
