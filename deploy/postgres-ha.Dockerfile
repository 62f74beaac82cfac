# PostgreSQL 15 with pg_auto_failover (Debian's postgresql-15-auto-failover), for
# docker-compose.ha.yml: one image for the monitor and the data nodes (PAF_ROLE=monitor|node),
# run by pg-auto-failover.sh. Built from debian:bookworm, so it needs no registry but Debian's.
FROM debian:bookworm
RUN mkdir -p /etc/postgresql-common/createcluster.d \
    && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/no-main.conf \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 postgresql-15-auto-failover \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/pgdata HOME=/var/lib/postgresql
RUN mkdir -p /var/run/postgresql && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY pg-auto-failover.sh /usr/local/bin/pg-auto-failover.sh
USER postgres
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/pg-auto-failover.sh"]
