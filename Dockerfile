# faceserve image: multi-stage, slim Debian Python base, non-root, converted weights baked in.
#   docker build -t faceserve:cpu .                                  (CPU-only torch wheels)
#   docker build --build-arg TORCH_VARIANT=cu130 -t faceserve:cu130 . (CUDA 13.0 torch wheels)
#   --build-arg TORCH_INDEX_URL=<mirror>                             (another wheel index)
#   --build-arg PIP_INDEX_URL=<index>                                (for the other packages)
#   --build-arg BASE_IMAGE=<image>                                   (another Debian-like base
#                                                                     with python3 and venv)
# The install commands are the README's ("Deployment"), checked by tests/deploy/. Built and run
# on the development machine by docker/smoke.sh (from a debootstrapped Debian base, as Docker
# Hub was out of reach there): see the README.
# Few layers on purpose: one COPY of the sources, one RUN that installs and converts, one COPY of
# /opt into the runtime, last (a vfs storage driver copies every layer whole).

ARG PYTHON_VERSION=3.11
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim

FROM ${BASE_IMAGE} AS build
# cpu: CPU-only wheels (about 1 GB smaller); cu130 (or another CUDA tag of the PyTorch index):
# GPU wheels, which bring their CUDA libraries; the host needs only the NVIDIA driver and the
# NVIDIA container toolkit.
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
# Unset by default (PyPI); pip reads it from the environment: another index for the rest.
ARG PIP_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# .dockerignore lets in only what the install needs (sources, client package, entrypoint).
COPY . /src
WORKDIR /src
# Convert the dlib models now so a container starts without converting. convert writes the
# weights mode 0600 (atomic temporary files): make them readable by the runtime's user.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --index-url "$TORCH_INDEX_URL" torch==2.14.1 torchvision==0.29.1 \
 && /opt/venv/bin/pip install ./clients/python \
 && /opt/venv/bin/pip install . \
 && /opt/venv/bin/faceserve convert --cache-dir /opt/faceserve/weights \
 && chmod -R a+rX /opt/faceserve

FROM ${BASE_IMAGE} AS runtime
ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="faceserve" \
      org.opencontainers.image.description="Self-hosted face recognition service" \
      io.faceserve.torch-variant="${TORCH_VARIANT}"
# Fixed ids: docker-compose.yml names them in the replicas' tmpfs options (uid=, gid=).
# /run/faceserve is the replicas' tmpfs mount point: Docker gives a tmpfs the mode of the
# directory it covers, so the image's owner-only directory makes the tmpfs owner-only too, on
# the first start and on every restart (without it, a restart found a root 755 mount point).
RUN groupadd --system --gid 10001 faceserve \
 && useradd --system --uid 10001 --gid faceserve --home /var/lib/faceserve faceserve \
 && install -d -o faceserve -g faceserve -m 0700 /var/lib/faceserve /run/faceserve
COPY docker/entrypoint.sh /usr/local/bin/faceserve-entrypoint
ENV PATH=/opt/venv/bin:$PATH \
    FACESERVE_CACHE_DIR=/opt/faceserve/weights \
    FACESERVE_DATA_DIR=/var/lib/faceserve \
    FACESERVE_HOST=0.0.0.0 \
    FACESERVE_PORT=8000 \
    PYTHONUNBUFFERED=1
USER faceserve
WORKDIR /var/lib/faceserve
VOLUME ["/var/lib/faceserve"]
EXPOSE 8000
# /readyz: 200 once the models and the index are loaded (a replica also reports its lag there).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('FACESERVE_PORT','8000'), timeout=4)"
ENTRYPOINT ["faceserve-entrypoint"]
CMD ["serve"]
# Last, after every metadata step (the legacy builder runs each in a container, which vfs
# would fill with a copy of the whole image): /opt/venv (the virtual environment) and
# /opt/faceserve/weights, in one layer, owned by root (read-only for the user faceserve).
COPY --from=build /opt /opt
