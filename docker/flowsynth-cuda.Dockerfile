# The flowsynth runtime image for NVIDIA GPUs: the same binary as the CPU image, with libtorch's
# CUDA libraries and NCCL from the PyTorch CUDA wheels of the same release (torch 2.11.0 is built
# against CUDA 13; its wheel pins nvidia-nccl-cu13). Large (several GB): scripts/image.sh builds it
# only with CUDA=1. Its context is the CPU image's (the binary) plus `wheels/`, which
# scripts/image.sh fetches from PyPI on the host (the build itself needs no access to PyPI).
ARG BASE=flowsynth-base:bookworm

FROM ${BASE} AS wheels
ARG TORCH_VERSION=2.11.0
ARG NCCL_VERSION=2.28.9
ARG PYTHON_VERSION=3.11.2-1+b1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY wheels/ /tmp/wheels/
RUN apt-get update \
    && apt-get install -y --no-install-recommends "python3=${PYTHON_VERSION}" "python3-venv=${PYTHON_VERSION}" \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /wheels \
    && /wheels/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels \
        "torch==${TORCH_VERSION}" "nvidia-nccl-cu13==${NCCL_VERSION}"

FROM ${BASE}
ARG VERSION=0.1.0
ARG CA_CERTIFICATES_VERSION=20230311+deb12u1
LABEL org.opencontainers.image.title="flowsynth-cuda" \
      org.opencontainers.image.description="Synthetic network-flow generation for intrusion-detection training (CUDA 13, NCCL)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE}"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN if [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends "ca-certificates=${CA_CERTIFICATES_VERSION}" \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --system --gid 10001 flowsynth \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin flowsynth
# The wheels' layout is kept: libtorch_cuda.so finds cuBLAS, cuDNN, ... through its rpath
# ($ORIGIN/../../nvidia/...).
COPY --from=wheels /wheels/lib/python3.11/site-packages/torch/lib/ /opt/flowsynth/site-packages/torch/lib/
COPY --from=wheels /wheels/lib/python3.11/site-packages/nvidia/ /opt/flowsynth/site-packages/nvidia/
COPY flowsynth /usr/local/bin/flowsynth
# The binary links libtorch_cpu only (the linker drops libtorch_cuda as unused): preloading
# libtorch_cuda registers the CUDA backend; NCCL is loaded by path (collective crate).
ENV LD_LIBRARY_PATH=/opt/flowsynth/site-packages/torch/lib \
    LD_PRELOAD=/opt/flowsynth/site-packages/torch/lib/libtorch_cuda.so \
    FLOWSYNTH_NCCL_LIB=/opt/flowsynth/site-packages/nvidia/nccl/lib/libnccl.so.2 \
    TMPDIR=/tmp

USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["/usr/local/bin/flowsynth"]
CMD ["--version"]
