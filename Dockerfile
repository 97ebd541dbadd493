# cartd as one binary in a small image.
#
#   docker build -t cartd .
#   docker run -p 8081:8081 -v carts:/srv/cartd -e ARCHIVE_INTERFACE_URL=http://archive:8080/ cartd
#
# The build stage runs `deno task compile`, which fetches Deno's runtime for the target from
# Deno's release host: the machine that builds the image must reach it. With buildx, the binary
# is cross-compiled for the image's platform (linux/amd64 or linux/arm64).
# The volume folder is baked into the binary's permissions: pass --build-arg CARTD_VOLUME=DIR
# to use another one (compose.yaml uses the default, /srv/cartd).

ARG DENO_VERSION=2.9.6

FROM --platform=$BUILDPLATFORM denoland/deno:${DENO_VERSION} AS build
ARG TARGETARCH
ARG CARTD_VOLUME=/srv/cartd
WORKDIR /src
COPY deno.json deno.lock ./
RUN deno install --frozen
COPY . .
RUN arch="${TARGETARCH:-$(dpkg --print-architecture)}" \
 && case "$arch" in \
      amd64|x86_64) target=x86_64-unknown-linux-gnu ;; \
      arm64|aarch64) target=aarch64-unknown-linux-gnu ;; \
      *) echo "cartd: no Deno runtime for $arch" >&2; exit 1 ;; \
    esac \
 && deno task compile --target "$target" --volume "$CARTD_VOLUME" --output /out/cartd \
 && mkdir -p "/out/volume"

# The health check's HTTP client: busybox's wget, a static binary.
FROM busybox:1.36-musl AS wget

# Distroless with glibc (what the Deno runtime links against), running as "nonroot" (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
ARG CARTD_VOLUME=/srv/cartd
COPY --from=build /out/cartd /usr/local/bin/cartd
COPY --from=wget /bin/wget /usr/local/bin/wget
COPY --from=build --chown=65532:65532 /out/volume ${CARTD_VOLUME}
ENV VOLUME_PATH=${CARTD_VOLUME}
# glibc malloc settings that let downloads reuse warm memory (tools/compile.ts, MALLOC_TUNABLES).
ENV GLIBC_TUNABLES=glibc.malloc.mmap_threshold=2097152:glibc.malloc.trim_threshold=16777216:glibc.malloc.arena_max=1
USER 65532:65532
VOLUME ${CARTD_VOLUME}
EXPOSE 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8081/"]
ENTRYPOINT ["/usr/local/bin/cartd"]
CMD ["--address", "0.0.0.0", "--port", "8081"]
