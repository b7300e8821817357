# The Gatehouse service image: the `gatehouse` binary and the wasm filter, laid out like a
# source checkout (/app/target/...), so the same gatehouse.yaml works here and locally.
FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN rustup target add wasm32-wasip1
COPY . .
RUN cargo build --release --locked -p gatehouse-service \
 && cargo build --release --locked -p gatehouse-filter --target wasm32-wasip1

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates openssl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app gatehouse
WORKDIR /app
COPY --from=build /src/target/release/gatehouse /usr/local/bin/gatehouse
COPY --from=build /src/target/wasm32-wasip1/release/gatehouse_filter.wasm /app/target/wasm32-wasip1/release/gatehouse_filter.wasm
COPY gatehouse.yaml /app/gatehouse.yaml
COPY scripts/gen-tls.sh /app/scripts/gen-tls.sh
RUN mkdir -p /app/.gatehouse && chown -R gatehouse /app/.gatehouse
USER gatehouse
ENTRYPOINT ["gatehouse"]
CMD ["serve", "--config", "/app/gatehouse.yaml"]
