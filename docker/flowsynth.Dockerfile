# The flowsynth runtime image (CPU): the stripped `flowsynth` binary and the libtorch libraries it
# links, taken from the same PyPI torch wheel the set-up installs (scripts/image.sh prepares the
# build context). Runs as a non-root user and needs no writable path but /tmp, so it works with a
# read-only root filesystem. Smoke test: `docker run --rm flowsynth:<version>` prints the version.
#
# BASE is a Debian bookworm root filesystem: by default the one scripts/image.sh builds with
# debootstrap and `docker import`s (these machines reach no registry); with a registry, pass
# `--build-arg BASE=debian:bookworm-slim`.
ARG BASE=flowsynth-base:bookworm
FROM ${BASE}

ARG VERSION=0.1.0
ARG CA_CERTIFICATES_VERSION=20230311+deb12u1
LABEL org.opencontainers.image.title="flowsynth" \
      org.opencontainers.image.description="Synthetic network-flow generation for intrusion-detection training (CPU)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE}"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# TLS roots for object stores over https (the debootstrapped base has them; a slim one may not),
# and the unprivileged user every flowsynth container runs as.
RUN if [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends "ca-certificates=${CA_CERTIFICATES_VERSION}" \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --system --gid 10001 flowsynth \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin flowsynth

COPY lib/ /opt/flowsynth/lib/
COPY flowsynth /usr/local/bin/flowsynth
ENV LD_LIBRARY_PATH=/opt/flowsynth/lib \
    TMPDIR=/tmp

USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["/usr/local/bin/flowsynth"]
CMD ["--version"]
