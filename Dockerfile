# The one image of every Romana process (romanad, romana-listener, romana-agent and the
# CNI installer); see deploy/ and docs/kubernetes.md. Build: docker build -t romana .
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 nftables \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN pip install --no-cache-dir /src && rm -rf /src
# romanad and the listener run as this user (the manifests say so); the agent, which
# programs its node's kernel, runs privileged.
USER 65532:65532
