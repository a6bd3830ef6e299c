# Countersign's production image: one image for web (gunicorn), worker, beat and migrate.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VAR_DIR=/var/lib/countersign \
    STATIC_ROOT=/app/staticfiles

WORKDIR /app

RUN groupadd --system countersign \
    && useradd --system --gid countersign --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin countersign

# Dependencies first: this layer is rebuilt only when requirements.txt changes.
# psycopg[binary] brings its own libpq, so no compiler or system packages are needed.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY . .

# Settings refuse to load without SECRET_KEY when DEBUG is off. This dummy exists only
# for this one RUN (it is not an ENV, so it is not in the image's environment): collecting
# static files touches no secret. The real key comes from .env at run time.
RUN SECRET_KEY=build-only-collectstatic-key-never-used-at-run-time-0123456789 \
        python manage.py collectstatic --no-input \
    && mkdir -p "$VAR_DIR" \
    && chown -R countersign:countersign "$VAR_DIR"

USER countersign

EXPOSE 8000

CMD ["gunicorn", "config.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--access-logfile", "-"]
