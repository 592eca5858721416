# syntax=docker/dockerfile:1
#
# drawbridge in a container: one static binary, run as non-root on a minimal
# base. Its default command is the pod sidecar (`drawbridge register`); the
# other commands (route, status, version) work too. The agent itself runs on
# the edge VMs next to HAProxy, not in this image.
#
#   docker build --build-arg VERSION=$(git describe --tags --always) -t drawbridge .
#   (or: make image)

# Build on the builder's own platform and cross-compile for the target one,
# so multi-arch builds (docker buildx --platform linux/amd64,linux/arm64)
# do not run the Go compiler under emulation.
FROM --platform=$BUILDPLATFORM golang:1.26-bookworm AS build
WORKDIR /src
# Dependencies first: this layer is reused until go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG TARGETOS=linux
ARG TARGETARCH
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
    -o /out/drawbridge ./cmd/drawbridge

# distroless/static: CA certificates, /etc/passwd with the nonroot user, no
# shell, no package manager.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/drawbridge /drawbridge
USER 65532:65532
ENTRYPOINT ["/drawbridge"]
CMD ["register"]
