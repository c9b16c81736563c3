# agents-server in a container: built with the Rust image, run on a slim
# base as a non-root user. State lives in the /data volume; the admin
# listener (health, readiness, metrics) on 9787 is for the orchestrator.
#   docker build -t agents-server .
#   docker run -p 8787:8787 -p 127.0.0.1:9787:9787 -v agents-data:/data agents-server
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY protocol protocol
COPY server server
COPY server-cli server-cli
COPY client-wasm client-wasm
COPY bench bench
RUN cargo build --release --locked -p agents-server-cli

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /data agents \
    && mkdir -p /data && chown agents /data
COPY --from=build /src/target/release/agents-server /usr/local/bin/agents-server
USER agents
VOLUME /data
EXPOSE 8787 9787
HEALTHCHECK --interval=10s --timeout=5s --retries=3 \
    CMD ["agents-server", "--probe", "http://127.0.0.1:9787/healthz"]
ENTRYPOINT ["agents-server"]
CMD ["--host", "0.0.0.0", "--port", "8787", "--data-dir", "/data", "--admin-addr", "0.0.0.0:9787", "--log-format", "json", "--drain-delay", "5"]
