# moto's S3-compatible server, the object store of the docker compose cluster (docker/compose.yaml)
# and of tests that stop or cut off the store. Built like the flowsynth image: FROM the local
# debootstrapped base, python3 from Debian, moto from wheels that scripts/image.sh fetched from
# PyPI on the host into the build context (the build itself needs no access to PyPI), run as a
# non-root user.
ARG BASE=flowsynth-base:bookworm
FROM ${BASE}

ARG MOTO_VERSION=5.2.5
ARG PYTHON_VERSION=3.11.2-1+b1
LABEL org.opencontainers.image.title="flowsynth-moto" \
      org.opencontainers.image.description="moto S3 server for flowsynth's local cluster and tests" \
      org.opencontainers.image.version="${MOTO_VERSION}" \
      org.opencontainers.image.base.name="${BASE}"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY wheels/ /tmp/wheels/
RUN apt-get update \
    && apt-get install -y --no-install-recommends "python3=${PYTHON_VERSION}" "python3-venv=${PYTHON_VERSION}" \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/moto \
    && /opt/moto/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels "moto[server]==${MOTO_VERSION}" \
    && rm -rf /tmp/wheels \
    && groupadd --system --gid 10001 moto \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin moto

USER 10001:10001
WORKDIR /tmp
EXPOSE 5000
ENTRYPOINT ["/opt/moto/bin/moto_server", "--host", "0.0.0.0", "--port", "5000"]
