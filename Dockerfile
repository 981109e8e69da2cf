# Salesforce Sync: the service image. Configure with an env file (see .env.example) and
# mount the mappings file at /app/mappings.toml (SFSYNC_SYNC__MAPPINGS_FILE).

# --- build: turn the project into a wheel (no build tools reach the runtime image) ----------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY settings ./settings
COPY reconciler ./reconciler
COPY listener ./listener
COPY service ./service
COPY emulator ./emulator
RUN pip wheel --wheel-dir /wheels .

# --- runtime: only the project and its runtime dependencies, as a non-root user ------------
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# uid/gid 10001: a mounted private key must be readable by it (see the README's deployment guide).
RUN groupadd --system --gid 10001 sfsync \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /app sfsync
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels
WORKDIR /app
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
# No curl in the slim image: ask /healthz with the Python standard library.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('SFSYNC_ADMIN__PORT', '8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]
CMD ["python", "-m", "listener"]
