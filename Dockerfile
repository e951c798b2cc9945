# Flowsite image: one image for the web server and the workers.
#   embedded (single container):  docker run -p 8000:8000 -v flowsite:/data flowsite
#   service mode: see docker-compose.yml (PostgreSQL, Redis, web, worker)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLOWSITE_DATA_DIR=/data

WORKDIR /app
RUN useradd --create-home --uid 1000 flowsite \
    && mkdir -p /data \
    && chown flowsite:flowsite /data

COPY requirements.txt .
RUN pip install -r requirements.txt

COPY --chown=flowsite:flowsite . .
USER flowsite
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=3s --start-period=20s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"

# Embedded mode by default; with DATABASE_URL and REDIS_URL set, `up` serves the API, the
# admin and the live events (/ws/, /socket.io/) only, and workers run as
# `celery -A flowsite worker` containers (every queue of FLOWSITE_QUEUES; `-Q` for some).
CMD ["python", "manage.py", "up", "--host", "0.0.0.0", "--port", "8000"]
