# nginx for docker/smoke.sh, where Docker Hub (nginx:1.27-alpine of docker-compose.yml) is out of
# reach: Debian's nginx on the same local base, with wget for the compose health check.
#   docker build -f docker/proxy.Dockerfile --build-arg BASE_IMAGE=faceserve-base:bookworm \
#     --network host -t faceserve-proxy:bookworm docker
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx-light wget \
 && rm -rf /var/lib/apt/lists/*
EXPOSE 8080
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
