# syntax=docker/dockerfile:1
# faceserve image: multi-stage, slim Python base, non-root, converted weights baked in.
#   docker build -t faceserve:cpu .                                  (CPU-only torch wheels)
#   docker build --build-arg TORCH_VARIANT=cu130 -t faceserve:cu130 . (CUDA 13.0 torch wheels)
#   --build-arg TORCH_INDEX_URL=<mirror>                             (another wheel index)
# The install commands are the README's ("Deployment"), checked by tests/deploy/.
# Not built on the machine this was written on (no Docker engine there): see the README.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
# cpu: CPU-only wheels (about 1 GB smaller); cu130 (or another CUDA tag of the PyTorch index):
# GPU wheels, which bring their CUDA libraries; the host needs only the NVIDIA driver and the
# NVIDIA container toolkit.
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY models ./models
COPY service ./service
COPY clients/python ./clients/python
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --index-url "$TORCH_INDEX_URL" torch==2.14.1 torchvision==0.29.1 \
 && /opt/venv/bin/pip install ./clients/python \
 && /opt/venv/bin/pip install .
# Convert the dlib models now so a container starts without converting.
RUN /opt/venv/bin/faceserve convert --cache-dir /opt/faceserve/weights

FROM python:${PYTHON_VERSION}-slim AS runtime
ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="faceserve" \
      org.opencontainers.image.description="Self-hosted face recognition service" \
      io.faceserve.torch-variant="${TORCH_VARIANT}"
RUN groupadd --system faceserve && useradd --system --gid faceserve --home /var/lib/faceserve faceserve \
 && mkdir -p /var/lib/faceserve && chown faceserve:faceserve /var/lib/faceserve
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/faceserve/weights /opt/faceserve/weights
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
