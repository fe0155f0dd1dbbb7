# cutover in a container: built exactly as CI and the release build do
# (`cargo build --release --locked`), run as a non-root user from a slim image.
#
#   docker build -t cutover .
#   docker run -d --name cutover --init -p 8080:8080 -p 127.0.0.1:9464:9464 \
#     -v /srv/cutover/etc:/etc/cutover:ro -v cutover-state:/var/lib/cutover cutover
#   docker exec cutover cutover ctl status          # the admin socket lives inside the container
#   docker kill -s HUP cutover                      # reload the config
#
# In a container, upgrade by replacing the container (rolling, behind a load
# balancer), not with SIGUSR2: cutover is the container's main process, and
# the container ends when it exits.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
# The container's default config is the production example, listening on
# all interfaces at unprivileged ports and draining within `docker stop`'s 10 s.
RUN cargo build --release --locked \
 && install -D -m 0755 target/release/cutover /out/usr/local/bin/cutover \
 && sed -e 's|^listen = \["0.0.0.0:80"\]|listen = ["0.0.0.0:8080"]|' \
        -e 's|^listen = "127.0.0.1:9464"|listen = "0.0.0.0:9464"|' \
        -e 's|^drain_timeout = "30s"|drain_timeout = "8s"|' \
        config/cutover.toml > /out/cutover.toml \
 && /out/usr/local/bin/cutover check -c /out/cutover.toml

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin cutover \
 && install -d -m 0755 /etc/cutover \
 && install -d -m 0750 -o cutover -g cutover /var/lib/cutover /run/cutover
COPY --from=build /out/usr/local/bin/cutover /usr/local/bin/cutover
COPY --from=build /out/cutover.toml /etc/cutover/cutover.toml
USER cutover
# Config (read-only is fine) and the state file (live weights, rollouts).
VOLUME ["/etc/cutover", "/var/lib/cutover"]
# Proxy and Prometheus metrics; the admin API is a Unix socket inside.
EXPOSE 8080 9464
# Healthy while the process and its control plane answer on the admin socket.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/cutover", "ctl", "-c", "/etc/cutover/cutover.toml", "status"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/cutover"]
CMD ["run", "-c", "/etc/cutover/cutover.toml"]
