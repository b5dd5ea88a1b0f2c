#!/bin/sh
# Container entrypoint: run a faceserve sub-command (default `serve`), with the weights baked
# into the image. Extra arguments pass through, e.g. `docker run faceserve embed /x.jpg`.
set -eu
if [ "$#" -eq 0 ]; then
  set -- serve
fi
exec faceserve "$@"
