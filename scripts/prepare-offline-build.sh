#!/usr/bin/env bash
# Prepare what `docker-compose build` needs on a host that reaches no container registry and whose containers
# cannot reach the package indexes the Dockerfile names by default:
#
#   1. base images made from Debian packages, tagged with local names:
#        score-offline/python:3.11-bookworm   debootstrap minbase + python3.11, python3.11-venv (Python 3.11.2)
#        score-offline/redis:bookworm         debootstrap minbase + redis-server, protected mode off as upstream's
#      (one minbase root filesystem, kept in .build/offline/rootfs-base; packages added with apt-get in a chroot)
#   2. a wheelhouse of every line of requirements.lock, downloaded by this host's pip (which may find wheels that
#      only lie on this host, such as the CPU torch wheel), with a PEP 503 index over it:
#        .build/offline/wheels/*.whl  and  .build/offline/simple/<project>/index.html
#   3. .build/offline/compose.env: the variables that point the compose build at both (PYTHON_IMAGE, REDIS_IMAGE,
#      the index URLs with OFFLINE_INDEX_PORT, SCORE_BUILD_NETWORK=host). The index must be served while
#      building, e.g.  python3 -m http.server --bind 127.0.0.1 --directory .build/offline 8765
#      (scripts/compose-smoke.sh does that itself).
#
# Each step is skipped when its result is already there (SCORE_OFFLINE_REBUILD=1 redoes them). Needs root for
# debootstrap, a running Docker engine, and Debian's package mirror. Usage: bash scripts/prepare-offline-build.sh
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${SCORE_OFFLINE_DIR:-.build/offline}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE="${DEBIAN_SUITE:-bookworm}"
PYTHON_TAG="${OFFLINE_PYTHON_IMAGE:-score-offline/python:3.11-bookworm}"
REDIS_TAG="${OFFLINE_REDIS_IMAGE:-score-offline/redis:bookworm}"
PORT="${OFFLINE_INDEX_PORT:-8765}"
PIP=(${HOST_PIP:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3.11 || command -v python3) -m pip})
mkdir -p "$OUT"

have_image() { [ "${SCORE_OFFLINE_REBUILD:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

# One minbase Debian root filesystem, kept under $OUT (its .debs cached, so a rerun downloads nothing new).
base_rootfs() {
    if [ -x "$OUT/rootfs-base/bin/sh" ]; then return; fi
    mkdir -p "$OUT/debs"
    rm -rf "$OUT/rootfs-base.tmp"
    echo "debootstrap --variant=minbase $SUITE"
    debootstrap --variant=minbase --cache-dir="$(realpath "$OUT/debs")" "$SUITE" "$OUT/rootfs-base.tmp" "$MIRROR" \
        >"$OUT/debootstrap.log" 2>&1 || { tail -20 "$OUT/debootstrap.log" >&2; return 1; }
    mv "$OUT/rootfs-base.tmp" "$OUT/rootfs-base"
}

# A copy of the base with the given packages installed by apt-get in a chroot, imported as an image.
# $1 tag, $2 packages (space-separated), then `docker import --change` instructions.
debian_image() {
    local tag="$1" packages="$2" root
    shift 2
    base_rootfs
    root="$(mktemp -d "${TMPDIR:-/tmp}/score-rootfs.XXXXXX")"
    cp -a "$OUT/rootfs-base/." "$root/"
    echo "apt-get install $packages -> $tag"
    # No service may start inside the chroot; the host's resolver serves apt-get.
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    { chroot "$root" apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -qq --no-install-recommends $packages; } \
        >"$OUT/apt-get.log" 2>&1 || { tail -20 "$OUT/apt-get.log" >&2; rm -rf "$root"; return 1; }
    # No package lists or downloaded .debs in the image; resolv.conf and hostname are the engine's to write.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb "$root"/var/log/* "$root"/tmp/* \
        "$root/usr/sbin/policy-rc.d"
    : >"$root/etc/resolv.conf"
    if [ -n "${EXTRA_ROOTFS_STEP:-}" ]; then "$EXTRA_ROOTFS_STEP" "$root"; fi
    local changes=()
    for change in "$@"; do changes+=(--change "$change"); done
    tar -C "$root" -c . | docker import "${changes[@]}" - "$tag" >/dev/null
    rm -rf "$root"
    docker image inspect --format "$tag {{.Size}} bytes" "$tag"
}

redis_entrypoint() {
    # Upstream's redis image starts redis-server with protected mode off (other containers connect without a
    # password on the compose network); this entrypoint does the same for `redis-server ...` commands.
    mkdir -p "$1/data"
    cat >"$1/usr/local/bin/docker-entrypoint.sh" <<'SH'
#!/bin/sh
if [ "$1" = "redis-server" ]; then shift; exec redis-server --protected-mode no "$@"; fi
exec "$@"
SH
    chmod 755 "$1/usr/local/bin/docker-entrypoint.sh"
}

start=$SECONDS
if have_image "$PYTHON_TAG"; then
    echo "$PYTHON_TAG is there"
else
    debian_image "$PYTHON_TAG" "python3.11 python3.11-venv ca-certificates passwd" \
        'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' 'ENV LANG=C.UTF-8' 'CMD ["python3"]'
fi
if have_image "$REDIS_TAG"; then
    echo "$REDIS_TAG is there"
else
    EXTRA_ROOTFS_STEP=redis_entrypoint debian_image "$REDIS_TAG" "redis-server" \
        'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' 'WORKDIR /data' 'EXPOSE 6379' \
        'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' 'CMD ["redis-server"]'
fi
echo "base images: $((SECONDS - start)) s"

# The wheelhouse: every lock line, markers dropped (async-timeout is for Python < 3.11.3, which the Debian base
# has and this host may not), binary wheels only, no dependency resolution (the lock is complete).
start=$SECONDS
lock_hash="$(sha256sum requirements.lock | cut -c1-16)"
if [ "${SCORE_OFFLINE_REBUILD:-0}" != 1 ] && [ "$(cat "$OUT/wheels/.lock-hash" 2>/dev/null)" = "$lock_hash" ]; then
    echo "wheelhouse is there for this lock"
else
    rm -rf "$OUT/wheels" "$OUT/simple"
    mkdir -p "$OUT/wheels"
    sed -e 's/#.*//' -e 's/;.*//' -e '/^[[:space:]]*$/d' requirements.lock >"$OUT/requirements.plain.txt"
    "${PIP[@]}" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.11 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform linux_x86_64 --implementation cp \
        -d "$OUT/wheels" -r "$OUT/requirements.plain.txt"
    # PEP 503: /simple/<normalized name>/ links every file of that project, with its sha256.
    "${PIP[0]}" - "$OUT" <<'PY'
import hashlib, html, pathlib, re, sys
out = pathlib.Path(sys.argv[1])
projects: dict[str, list[pathlib.Path]] = {}
for wheel in sorted((out / "wheels").glob("*.whl")):
    name = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
    projects.setdefault(name, []).append(wheel)
root = out / "simple"
root.mkdir(exist_ok=True)
links = []
for name, files in sorted(projects.items()):
    (root / name).mkdir(exist_ok=True)
    rows = [f'<a href="../../wheels/{html.escape(f.name)}#sha256={hashlib.sha256(f.read_bytes()).hexdigest()}">'
            f"{html.escape(f.name)}</a><br>" for f in files]
    (root / name / "index.html").write_text("<!DOCTYPE html><html><body>\n" + "\n".join(rows) + "\n</body></html>\n")
    links.append(f'<a href="{name}/">{name}</a><br>')
(root / "index.html").write_text("<!DOCTYPE html><html><body>\n" + "\n".join(links) + "\n</body></html>\n")
print(f"index: {len(projects)} projects in {root}")
PY
    echo "$lock_hash" >"$OUT/wheels/.lock-hash"
fi
echo "wheelhouse: $((SECONDS - start)) s, $(du -sh "$OUT/wheels" | cut -f1)"

cat >"$OUT/compose.env" <<ENV
PYTHON_IMAGE=$PYTHON_TAG
REDIS_IMAGE=$REDIS_TAG
TORCH_INDEX_URL=http://127.0.0.1:$PORT/simple
TORCH_TRUSTED_HOST=127.0.0.1:$PORT
PIP_INDEX_URL=http://127.0.0.1:$PORT/simple
PIP_TRUSTED_HOST=127.0.0.1:$PORT
SCORE_BUILD_NETWORK=host
ENV
echo "wrote $OUT/compose.env (serve $OUT on 127.0.0.1:$PORT while building)"
