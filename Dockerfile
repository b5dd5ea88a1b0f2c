# syntax=docker/dockerfile:1
# faceserve image: multi-stage, slim Python base, non-root, converted weights baked in.
#   docker build -t faceserve .                                  (torch from the default index)
#   docker build --build-arg TORCH_INDEX_URL=<cpu wheel index> -t faceserve:cpu .
# The install commands below are the README's (`pip install .`), checked by tests/test_docker.py.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY models ./models
COPY service ./service
RUN python -m venv /opt/venv \
 && if [ -n "$TORCH_INDEX_URL" ]; then \
      /opt/venv/bin/pip install --index-url "$TORCH_INDEX_URL" torch==2.14.1 torchvision==0.29.1; \
    fi \
 && /opt/venv/bin/pip install .
# Convert the dlib models now so a container starts without converting.
RUN /opt/venv/bin/faceserve convert --cache-dir /opt/faceserve/weights

FROM python:${PYTHON_VERSION}-slim AS runtime
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
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('FACESERVE_PORT','8000'), timeout=4)"
ENTRYPOINT ["faceserve-entrypoint"]
CMD ["serve"]
