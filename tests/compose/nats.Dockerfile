# Test stand-in for the official `nats` image (which cannot be pulled here), built from the local
# Debian base: nats-server as the entrypoint, wget for the compose health check.
FROM debian:bookworm
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nats-server wget \
    && rm -rf /var/lib/apt/lists/*
EXPOSE 4222 8222
ENTRYPOINT ["nats-server"]
