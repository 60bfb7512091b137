# syntax=docker/dockerfile:1
# vitalab image: one image for every vitalab role (`vitalab db migrate|ingest|api|simulate|up`).
# Build: docker build -t vitalab:local .      Run: docker run --rm vitalab:local --help
# Used by docker-compose.yml (build: .). Configuration comes from VITALAB_* environment variables.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# Unprivileged runtime user (fixed uid/gid so volume ownership is predictable).
RUN groupadd --system --gid 10001 vitalab \
    && useradd --system --uid 10001 --gid vitalab --create-home --home-dir /home/vitalab \
        --shell /usr/sbin/nologin vitalab \
    && install -d -o vitalab -g vitalab -m 0750 /var/lib/vitalab

# Install the project (the wheel build needs pyproject.toml, README.md and the package directories;
# .dockerignore keeps tests, caches and VCS data out of the build context).
COPY . /tmp/vitalab-src
RUN pip install --no-cache-dir /tmp/vitalab-src \
    && rm -rf /tmp/vitalab-src

USER vitalab
WORKDIR /home/vitalab
ENV VITALAB_DATA_DIR=/var/lib/vitalab

# 8000: HTTP API (set VITALAB_API_HOST=0.0.0.0 in a container); 9100: ingester Prometheus metrics.
EXPOSE 8000 9100

ENTRYPOINT ["vitalab"]
CMD ["--help"]
