# whatsapp-webhook sidecar: non-root, read-only root filesystem friendly.
#   docker build -t whatsapp-sidecar .
#   mkdir -p etc/certs       # sidecar.yaml and certs/, mounted as /etc/sidecar
#   sed -e 's#\.\./certs/#certs/#' -e 's#\.\./var/spool\.db#/var/lib/sidecar/spool.db#' \
#       config/sidecar.example.yaml > etc/sidecar.yaml      # then edit it
#   cp server.pem server.key meta-outbound-api-ca-2025-12.pem etc/certs/
#   docker run --read-only --tmpfs /tmp:size=1m,mode=1777 \
#     -v $PWD/etc:/etc/sidecar:ro -v sidecar-spool:/var/lib/sidecar \
#     -e META_APP_SECRET -e META_VERIFY_TOKEN -e UPSTREAM_SIGNING_SECRET \
#     -p 8443:8443 whatsapp-sidecar
# --read-only needs a small /tmp: loading a certificate/key pair into OpenSSL goes
# through a 0600 temporary file that is removed at once (Python's ssl reads only files).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin sidecar \
 && mkdir -p /var/lib/sidecar /etc/sidecar \
 && chown sidecar /var/lib/sidecar
USER 10001
# Spool (delivery.spool_path) lives on this volume; everything else can be read-only.
VOLUME ["/var/lib/sidecar"]
EXPOSE 8443 9090
ENTRYPOINT ["sidecar"]
CMD ["serve", "-c", "/etc/sidecar/sidecar.yaml"]
