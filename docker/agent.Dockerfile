# The agent image: `murmur` (master, agent, demo servers, run). Static (musl), non-root,
# nothing but the binary and CA certificates.
#   docker build -f docker/agent.Dockerfile -t murmuration/agent:0.1.0 .
FROM rust:1-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p murmuration-agent --bin murmur \
 && cp target/x86_64-unknown-linux-musl/release/murmur /murmur

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /murmur /usr/local/bin/murmur
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/murmur"]
