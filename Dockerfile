# The SCoRe services image: one image, four services (`score serve coordinator|student|teacher|trainer`).
#
#   docker build -t score-distill .                                   # CPU torch
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t score-distill:cu128 .
#
# Every name from outside is a build argument whose default is the public one: the base image (PYTHON_IMAGE) and
# the package indexes of both installs (TORCH_INDEX_URL/TORCH_TRUSTED_HOST for torch, PIP_INDEX_URL/
# PIP_TRUSTED_HOST for the rest). A host without registry access builds from a local base image and a local
# index (scripts/prepare-offline-build.sh; docs/deployment.md). The index settings are used in the builder stage
# only: the runtime stage declares none of them, so nothing of them stays in the image.
#
# Both stages use the same Python image, so the venv's interpreter links (python3.11 of the base image) resolve
# in the runtime stage, and the sandbox finds the base interpreter it starts model code with.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# torch comes from its own index: the CPU wheel by default; a CUDA index (cu126, cu128, ...) builds a GPU image.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_TRUSTED_HOST=
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_TRUSTED_HOST=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH
# python3: the official image and a Debian-built base (python3.11 + python3.11-venv) both have it.
RUN python3 -m venv /opt/venv
RUN pip install --index-url "${TORCH_INDEX_URL}" ${TORCH_TRUSTED_HOST:+--trusted-host "${TORCH_TRUSTED_HOST}"} \
        torch==2.13.0
# The project and what it runs on, at the lock's exact versions: the lock is a constraint on the project's own
# dependencies (pyproject.toml), so test and benchmark tools in the lock stay out of the image. torch==2.13.0 is
# already met by the wheel above (a local version such as 2.13.0+cpu satisfies ==2.13.0), so pip keeps it.
# The project is installed in editable mode at /app (the same path in the runtime stage): `score` finds configs/
# beside the code.
WORKDIR /app
COPY requirements.lock /tmp/requirements.lock
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY configs ./configs
RUN pip install --index-url "${PIP_INDEX_URL}" ${PIP_TRUSTED_HOST:+--trusted-host "${PIP_TRUSTED_HOST}"} \
        -c /tmp/requirements.lock -e . \
    && python -m compileall -q shared services
# Every installed distribution must be pinned in the lock at that version: a dependency that escaped the lock
# fails the build instead of floating to whatever the index serves today.
COPY scripts/check_lock.py /tmp/check_lock.py
RUN python /tmp/check_lock.py /tmp/requirements.lock


FROM ${PYTHON_IMAGE} AS runtime
# A fixed uid/gid, so files on the shared SCORE_HOME volume keep one owner across rebuilds and services.
ARG SCORE_UID=10001
ARG SCORE_GID=10001
# 1: build the built-in tiny models into SCORE_HOME now (about a minute), so the first start is fast.
ARG PREBUILD_MODELS=1
# bubblewrap: the boundary around model-written code (docs/sandbox.md); setpriv comes with util-linux.
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid "${SCORE_GID}" score \
    && useradd --system --uid "${SCORE_UID}" --gid score --create-home --home-dir /home/score --shell /usr/sbin/nologin score \
    && mkdir -p /data \
    && chown score:score /data
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
ENV PATH=/opt/venv/bin:$PATH \
    SCORE_HOME=/data \
    HOME=/home/score \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
USER score
# A named volume mounted at /data starts as a copy of what the image holds there, so the models built here are
# what every service finds on first start. When the volume already holds an older build, the services rebuild
# under shared/models/builtin.py's file lock, so concurrent first starts cannot corrupt the cache.
RUN if [ "${PREBUILD_MODELS}" = "1" ]; then \
        OMP_NUM_THREADS=1 python -c 'from shared.models.builtin import ROLES, ensure_builtin_model; [print("built-in", r, ensure_builtin_model(r)) for r in ROLES]'; \
    fi
VOLUME ["/data"]
EXPOSE 8000-8003
# The service and its port come from the command line of PID 1 (docker-init keeps the child's arguments in its
# own), so one check serves all four services; compose files may override it with a fixed URL.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD python -c 'import urllib.request; from shared.settings import DEFAULT_PORTS; a = open("/proc/1/cmdline").read().split("\0"); s = next((x for x in a if x in DEFAULT_PORTS), "coordinator"); p = a[a.index("--port") + 1] if "--port" in a else DEFAULT_PORTS[s]; urllib.request.urlopen(f"http://127.0.0.1:{p}/health", timeout=4)'
ENTRYPOINT ["score"]
CMD ["--help"]
