# smarthost container image.
#
#   docker build -t smarthost .
#   docker run -d --name smarthost -p 25:25 -p 587:587 \
#     -v /srv/smarthost/smarthost.yaml:/etc/smarthost/smarthost.yaml:ro \
#     -v smarthost-data:/var/lib/smarthost --stop-timeout 45 smarthost
#
# or `docker compose up -d` with compose.yaml next to this file.
#
# Configuration: mount it at /etc/smarthost/smarthost.yaml, or point SMARTHOST_CONFIG (or `start --config`)
# somewhere else. Inside a container the config must
#   - listen on 0.0.0.0 (127.0.0.1 inside the container is not reachable from outside it),
#   - keep spool.dir, state.dir and any outbox under /var/lib/smarthost, the volume,
#   - set listeners[].networks to client addresses *as the container sees them*: published ports keep
#     an IPv4 client's own address, but connections from the Docker host itself, and IPv6 clients of a
#     container without IPv6, arrive through docker-proxy from the bridge gateway (e.g. 172.17.0.1);
#     allowing the gateway lets the host, and those clients, relay without AUTH.
#
# Ports 25 and 587 as a non-root user: the image runs as `node` (uid 1000) with no capabilities. Docker
# (since 20.10) sets the per-container sysctl net.ipv4.ip_unprivileged_port_start=0, so any user may bind
# any port *inside the container's own network namespace*; compose.yaml sets it explicitly for engines
# that do not (Podman, Kubernetes: securityContext.sysctls). Where that sysctl cannot be set, listen on
# 2525/2587 in the config and publish `-p 25:2525 -p 587:2587` instead. Not `setcap` on the node binary:
# that would hand the capability to every Node program in the image, and is ignored under
# no-new-privileges anyway.
#
# Stopping: SIGTERM ends idle SMTP sessions at once (421 4.3.2); a message still arriving and deliveries in
# flight get up to delivery.shutdownTimeout (default 30s). Docker's default grace period is 10s, so give
# `--stop-timeout 45` (compose: stop_grace_period).
# Nothing accepted is lost either way: the spool is fsync'ed before a message is acknowledged.

# --- Build stage: all dependencies (TypeScript), compile src/ into dist/src.
FROM node:22-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
RUN npm run build

# --- Runtime stage: production dependencies and the compiled code only.
# Node 22 is an LTS line (supported until 2027-04); move the major here when it nears its end of life.
FROM node:22-bookworm-slim AS runtime
ENV NODE_ENV=production \
    SMARTHOST_CONFIG=/etc/smarthost/smarthost.yaml
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: no dependency needs an install script, and none gets to run one.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist/src ./dist/src
COPY config ./config
COPY README.md LICENSE ./
# The code stays owned by root (the service cannot modify itself); only the data directory is node's.
RUN mkdir -p /etc/smarthost /var/lib/smarthost && chown node:node /var/lib/smarthost && chmod 0700 /var/lib/smarthost
VOLUME /var/lib/smarthost
WORKDIR /var/lib/smarthost
USER node
# SMTP relay, submission, and the admin listener (metrics and /healthz) when the config enables it.
EXPOSE 25 587 9325
# The admin listener's /healthz, on its default 127.0.0.1:9325 inside the container (admin.enabled: false
# or another admin.port makes the container "unhealthy", which Docker only displays). fetch() is built
# into Node: no curl in the image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:9325/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["node", "/app/dist/src/cli.js"]
CMD ["start"]
