# The operator image: `murmur-operator`. Static (musl), non-root.
#   docker build -f docker/operator.Dockerfile -t murmuration/operator:0.1.0 .
FROM rust:1-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p murmuration-operator --bin murmur-operator \
 && cp target/x86_64-unknown-linux-musl/release/murmur-operator /murmur-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /murmur-operator /usr/local/bin/murmur-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/murmur-operator"]
