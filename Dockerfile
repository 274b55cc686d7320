# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
#
# One image for both sides of the example; WSENGINE_MODE (or --mode) picks the side.
#   docker build -t wsengine-example .
#   docker run --rm -p 8765:8765 -e WSENGINE_MODE=server -e WSENGINE_HOST=0.0.0.0 wsengine-example
# example/compose.yaml runs the server, the client and Jaeger together.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# .dockerignore keeps the context to the package, its metadata and the example.
COPY . .
RUN pip install ".[example]" \
    && useradd --create-home --uid 10001 app

USER app
EXPOSE 8765
# python -m runs from WORKDIR, so `example` (not an installed package) is importable.
ENTRYPOINT ["python", "-m", "example"]
